"""RDEIC on the tiny SD backbone: stages, gradients, guidance, real bitstreams, smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from modules.base import load_codec
from modules.entropy import BitstreamError
from modules.nets import controlled_noise_prediction
from modules.rdeic import RDEICModule
from modules.utils import ConfigError
from tests.conftest import compose_config, run_script

TINY = {
    "backbone": {"name": "tiny_sd"},
    "channels": 32,
    "groups": [4, 4, 8, 16],
    "num_codes": 64,
    "hint_channels": 16,
    "initial_steps": 2,
    "stage1_steps": 2,
    "stage2_steps": 2,
    "stage2_crop": 64,
    "lpips_pretrained_backbone": False,
}


def tiny_rdeic(**kwargs) -> RDEICModule:
    torch.manual_seed(0)
    return RDEICModule(**{**TINY, **kwargs})


def at_step(monkeypatch, step: int) -> None:
    """Pretend the trainer is at `step` (the stage and λ follow the global step)."""
    monkeypatch.setattr(RDEICModule, "global_step", property(lambda self: step))


@pytest.fixture(scope="module")
def codec() -> RDEICModule:
    codec = tiny_rdeic().eval()
    with torch.no_grad():  # a control module whose zero convolutions are no longer zero
        for param in codec.control.parameters():
            param.add_(0.02 * torch.randn_like(param))
    codec.update(force=True)
    return codec


def _grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_stage1_gradients_reach_codec_and_control_not_backbone(monkeypatch):
    at_step(monkeypatch, 0)
    model = tiny_rdeic().train()
    x = torch.rand(2, 3, 128, 128)
    out = model(x)
    terms = model.rd_loss(out, x)
    assert terms["stage"] == 1 and "latent_mse" in terms and out["x_hat"] is None
    terms["loss"].backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)
    assert {n.split(".")[0] for n, _ in trainable} == {"compressor", "control"}
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    # λ of stage 1a is initial_lmbda, then the target λ
    assert model.lmbda == 2.0
    at_step(monkeypatch, 2)
    assert tiny_rdeic(lmbda=0.1).lmbda == 0.1


def test_stage2_gradient_reaches_codec_through_sampler_and_vae(monkeypatch):
    at_step(monkeypatch, 4)
    model = tiny_rdeic(fixed_steps=2).train()
    model.setup("fit")  # builds the (untrained) LPIPS-Alex loss, frozen
    x = torch.rand(2, 3, 128, 128)
    out = model(x)
    assert out["x_hat"].shape == (2, 3, 64, 64)  # stage-2 crops
    terms = model.rd_loss(out, x)
    assert terms["stage"] == 2 and {"mse", "lpips"} <= terms.keys()
    terms["mse"].backward()  # the image term alone: its only path is sampler + VAE decoder
    g_a = [p.grad for p in model.compressor.g_a.parameters()]
    assert all(g is not None for g in g_a) and any(g.abs().sum() > 0 for g in g_a)
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(model.control))
    assert all(g is None for g in _grads(model.backbone)) and all(
        g is None for g in _grads(model.lpips)
    )


def test_checkpoint_state_holds_no_backbone_or_lpips():
    model = tiny_rdeic()
    model.setup("fit")
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    prefixes = {k.split(".")[0] for k in checkpoint["state_dict"]}
    assert prefixes == {"compressor", "control"}
    assert checkpoint["codec_class"] == "modules.rdeic.RDEICModule"
    fresh = tiny_rdeic()
    fresh.load_state_dict(checkpoint["state_dict"])  # strict except the frozen networks
    with pytest.raises(RuntimeError, match="missing keys"):
        fresh.load_state_dict(
            {k: v for k, v in checkpoint["state_dict"].items() if "g_a" not in k}
        )


def test_round_trip_equals_eval_reconstruction_for_any_size(codec):
    x = torch.rand(1, 3, 100, 150)  # not a multiple of 64: padded and cropped back
    data = codec.compress(x)
    decoded = codec.decompress(data)
    reconstruction, _ = codec.reconstruct(x)
    assert decoded.shape == x.shape and torch.equal(decoded, reconstruction)
    # real rate (y, 6-bit VQ indices, header) close to the estimate (y likelihoods + VQ bits)
    real_bits, estimated_bits = 8 * len(data), float(codec.estimate_bpp(x)) * 100 * 150
    vq_bits = 6 * 2 * 3  # log2(64) bits for each of the (128/64)·(192/64) indices
    assert estimated_bits > vq_bits
    assert estimated_bits <= real_bits <= 1.1 * estimated_bits + 8 * 40


def test_decoding_options_travel_in_the_stream(codec):
    x = torch.rand(1, 3, 128, 128)
    codec.set_decoding(steps=5, guidance=1.3, seed=7)
    try:
        data = codec.compress(x)
        expected = codec.reconstruct(x)[0]
    finally:
        codec.set_decoding(steps=2, guidance=1.0, seed=0)
    assert torch.equal(codec.decompress(data), expected)  # the decoder used 5, 1.3, 7
    assert not torch.equal(codec.decompress(codec.compress(x)), expected)
    with pytest.raises(ConfigError, match="steps"):
        codec.set_decoding(steps=0)
    with pytest.raises(ConfigError, match="steps"):
        codec.set_decoding(steps=301)


def test_guidance_one_is_the_plain_controlled_path_with_one_unet_call(codec):
    calls = []
    hook = codec.backbone.unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        z_t = torch.randn(1, 4, 16, 16)
        t = torch.tensor([299])
        hint = torch.randn(1, codec.hparams.hint_channels, 16, 16)
        with torch.no_grad():
            guided = codec._noise_prediction(z_t, t, hint, guidance=1.0)
            assert len(calls) == 1
            context = codec.backbone.prompt_embedding
            plain = controlled_noise_prediction(
                codec.backbone.unet, codec.control, z_t, t, context, hint
            )
            assert torch.equal(guided, plain)
            calls.clear()
            codec.set_decoding(guidance=0.6)
            codec.decompress(codec.compress(torch.rand(1, 3, 128, 128)))
            assert len(calls) == 2 * 2  # two UNet passes per step, two steps
    finally:
        hook.remove()
        codec.set_decoding(guidance=1.0)


def test_stream_of_another_backbone_is_refused(codec):
    data = codec.compress(torch.rand(1, 3, 128, 128))
    other = tiny_rdeic(backbone={"name": "tiny_sd", "seed": 1}).eval()
    other.load_state_dict(codec.state_dict())
    other.update(force=True)
    with pytest.raises(BitstreamError, match="model"):
        other.decompress(data)


def test_missing_sd_weights_name_the_folder(tmp_path):
    result = run_script(
        "train.py",
        "experiment=rdeic_l2",
        "trainer=cpu",
        "data=sample",
        f"paths.weights_dir={tmp_path}/w",
        f"paths.log_dir={tmp_path}/logs",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert f"{tmp_path}/w/stable-diffusion-2-1-base" in error[0] and "backbone.path" in error[0]


def test_rate_points_and_recipe_defaults():
    points = {}
    for lmbda in ("2", "1", "0.5", "0.25", "0.1"):
        cfg = compose_config("train", [f"experiment=rdeic_l{lmbda}"])
        points[float(lmbda)] = cfg.model.fixed_steps
        assert cfg.trainer.max_steps == 300000 and cfg.data.batch_size == 4
        assert cfg.model.lr == 1e-4 and cfg.model.lr * cfg.model.lr_gamma == pytest.approx(2e-5)
    assert points == {2.0: 2, 1.0: 5, 0.5: 5, 0.25: 5, 0.1: 5}
    cfg = compose_config("train", ["experiment=rdeic_l1", "model.stage2_steps=0"])
    assert cfg.trainer.max_steps == 200000  # stage 1 alone


@pytest.fixture(scope="module")
def rdeic_smoke(tmp_path_factory) -> Path:
    from train import train

    run_dir = tmp_path_factory.mktemp("rdeic") / "run"
    cfg = compose_config("train", ["experiment=rdeic_l2", "debug=smoke"], run_dir)
    train(cfg)
    return run_dir


def test_smoke_run_goes_through_both_stages_and_evaluation(rdeic_smoke):
    checkpoint = torch.load(
        rdeic_smoke / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["global_step"] == 6
    assert not any(k.startswith("backbone.") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["backbone"]["name"] == "tiny_sd"
    events = EventAccumulator(str(rdeic_smoke / "tensorboard"))
    events.Reload()
    stages = [e.value for e in events.Scalars("train/stage")]
    assert stages[0] == 1 and stages[-1] == 2
    assert {"rd/bpp", "rd/psnr", "train/latent_mse", "train/lpips"} <= set(
        events.Tags()["scalars"]
    )
    results = json.loads((rdeic_smoke / "eval" / "sample" / "results.json").read_text())
    assert results["results"]["bpp"][0] > results["results"]["bpp_est"][0] * 0.5
    # the checkpoint alone rebuilds the codec against its backbone and decodes bit-exactly
    codec = load_codec(rdeic_smoke / "checkpoints" / "last.ckpt")
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(codec.decompress(codec.compress(x)), codec.reconstruct(x)[0])

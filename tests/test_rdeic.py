"""RDEIC on the tiny SD backbone: stages, gradients, guidance, real bitstreams, smoke run."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from modules.base import load_codec
from modules.entropy import Bitstream, BitstreamError
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


def test_lmbda_is_the_initial_one_in_stage_1a_then_the_target(monkeypatch):
    model = tiny_rdeic(lmbda=0.1, initial_lmbda=2.0)
    for step, expected in [(0, 2.0), (1, 2.0), (2, 0.1), (5, 0.1)]:  # initial_steps = 2
        at_step(monkeypatch, step)
        assert model.lmbda == expected, step


def _loss_inputs(stage: int) -> dict:
    """Hand-set terms: latent MSE 0.49, guide 0.09, bpp 0.25 (256 symbols of 4 bits over 64²
    pixels), VQ loss 0.3; stage 2 adds images whose MSE in [−1, 1] is 0.04."""
    z0 = torch.zeros(1, 4, 8, 8)
    out = {
        "x": torch.full((1, 3, 64, 64), 0.5),
        "z0": z0,
        "z_c": z0 + 0.3,
        "likelihoods": {"y": torch.full((1, 4, 8, 8), 2.0**-4)},
        "vq_loss": torch.tensor(0.3),
    }
    if stage == 1:
        return {**out, "z0_hat": z0 + 0.7, "x_hat": None}
    return {**out, "x_hat": torch.full((1, 3, 64, 64), 0.6)}


class _ConstantLPIPS(torch.nn.Module):
    """LPIPS stand-in: 0.7 per image; records the images it was given."""

    def forward(self, x_hat, target):
        self.seen = (x_hat, target)
        return torch.full((x_hat.shape[0], 1, 1, 1), 0.7)


@pytest.mark.parametrize(("step", "lmbda"), [(0, 2.0), (2, 0.25)])
def test_stage1_loss_from_hand_set_terms(monkeypatch, step, lmbda):
    """L₁ = λ·‖x̂0 − z0‖² + bpp + L_VQ + λ·‖z_c − z0‖² with λ = 2 in stage 1a, then 0.25."""
    at_step(monkeypatch, step)
    model = tiny_rdeic(lmbda=0.25)
    out = _loss_inputs(stage=1)
    terms = model.rd_loss(out, out["x"])
    assert terms["stage"] == 1
    assert float(terms["bpp"]) == pytest.approx(0.25)
    expected = lmbda * 0.49 + 0.25 + 0.3 + lmbda * 0.09
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)


def test_stage2_loss_from_hand_set_terms(monkeypatch):
    """L₂ = λ·MSE + 0.5·λ·LPIPS + λ·‖z_c − z0‖² + bpp + L_VQ on images in [−1, 1]."""
    at_step(monkeypatch, 4)
    model = tiny_rdeic(lmbda=0.25)
    lpips = model.freeze("lpips", _ConstantLPIPS())
    out = _loss_inputs(stage=2)
    terms = model.rd_loss(out, out["x"])
    assert terms["stage"] == 2
    assert float(terms["mse"]) == pytest.approx(0.04, rel=1e-5)
    expected = 0.25 * 0.04 + 0.5 * 0.25 * 0.7 + 0.25 * 0.09 + 0.25 + 0.3
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-6)
    x_hat, target = lpips.seen  # LPIPS sees the images in [−1, 1]
    assert torch.allclose(x_hat, torch.full_like(x_hat, 0.2)) and torch.equal(target, 0 * target)


def test_stage1_relay_step_is_checkpointed_with_the_same_loss_and_gradients(monkeypatch):
    at_step(monkeypatch, 0)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    results = {}
    for checkpointed in (False, True):
        model = tiny_rdeic(gradient_checkpointing=checkpointed).train()
        calls = []
        model.backbone.unet.conv_in.register_forward_hook(lambda *_, c=calls: c.append(1))
        torch.manual_seed(1)  # the same t, noise and quantisation noise in both runs
        loss = model.rd_loss(model(x), x)["loss"]
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results[checkpointed] = (loss.detach(), grads, len(calls))
    (plain_loss, plain_grads, plain_calls), (loss, grads, calls) = results[False], results[True]
    assert (plain_calls, calls) == (1, 2)  # checkpointing reruns the UNet pass in backward
    assert torch.equal(loss, plain_loss)
    for name, grad in grads.items():
        assert torch.allclose(grad, plain_grads[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize(("step", "steps"), [(0, 5), (4, 2)])
def test_validation_decodes_with_5_steps_in_stage_1(monkeypatch, codec, step, steps):
    """The official validation samples 5 steps in stage 1 and the fixed steps in stage 2."""
    at_step(monkeypatch, step)
    calls, logged = [], {}
    hook = codec.backbone.unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(codec, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(codec, "log", lambda *_, **__: None)
    try:
        with torch.no_grad():
            codec.validation_step(torch.rand(1, 3, 128, 128), 0)
    finally:
        hook.remove()
    assert len(calls) == 1 + steps and float(logged["val/decode_steps"]) == steps


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
        codec.set_decoding(steps=2, guidance=1.0, seed=None)
    assert struct.unpack("<HfI", Bitstream.from_bytes(data).side) == pytest.approx((5, 1.3, 7))
    assert torch.equal(codec.decompress(data), expected)  # the decoder used 5, 1.3, 7
    assert not torch.equal(codec.decompress(codec.compress(x)), expected)
    with pytest.raises(ConfigError, match="steps"):
        codec.set_decoding(steps=0)
    with pytest.raises(ConfigError, match="steps"):
        codec.set_decoding(steps=301)


def test_guidance_mixes_the_plain_sd_and_controlled_predictions(codec):
    """ε = ε_sd + s·(ε_θ − ε_sd), ε_sd from diffusers' own UNet forward; s = 1: one UNet call."""
    calls = []
    hook = codec.backbone.unet.conv_in.register_forward_hook(lambda *_: calls.append(1))
    try:
        z_t = torch.randn(1, 4, 16, 16)
        t = torch.tensor([299])
        hint = torch.randn(1, codec.hparams.hint_channels, 16, 16)
        context = codec.backbone.prompt_embedding
        with torch.no_grad():
            eps_sd = codec.backbone.unet(z_t, t, encoder_hidden_states=context).sample
            eps_theta = controlled_noise_prediction(
                codec.backbone.unet, codec.control, z_t, t, context, hint
            )
            assert (eps_theta - eps_sd).abs().max() > 1e-3  # the control changes ε
            for scale in (0.0, 0.6, 1.0, 1.3):
                calls.clear()
                guided = codec._noise_prediction(z_t, t, hint, guidance=scale)
                assert len(calls) == (1 if scale == 1 else 2)
                expected = eps_sd + scale * (eps_theta - eps_sd)
                assert torch.allclose(guided, expected, rtol=1e-5, atol=1e-6), scale
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
    # 2 steps for λ ≥ 1, 5 below: the official results.xlsx's "RDEIC" rows are the 2-step
    # models at λ = 2, 1 and the 5-step models at λ = 0.5, 0.25, 0.1
    assert points == {2.0: 2, 1.0: 2, 0.5: 5, 0.25: 5, 0.1: 5}
    assert cfg.model.stage1_val_steps == 5 and cfg.model.decode_seed is None
    assert cfg.trainer.precision == "32-true" and cfg.model.bf16  # fp32, frozen SD in bf16
    cfg = compose_config("train", ["experiment=rdeic_l1", "model.stage2_steps=0"])
    assert cfg.trainer.max_steps == 200000  # stage 1 alone


@pytest.fixture(scope="module")
def rdeic_smoke(tmp_path_factory) -> Path:
    from train import train

    run_dir = tmp_path_factory.mktemp("rdeic") / "run"
    # two evaluation images (192² crops, padded to 256²) and one RD evaluation: the full
    # sample set (up to 1411²) through the SD-shaped decoder took minutes on 2 cores
    overrides = [
        "experiment=rdeic_l2",
        "debug=smoke",
        "data.test.limit=2",
        "data.test.center_crop=192",
        "callbacks.rd_evaluation.every_n_steps=6",
        "callbacks.rd_evaluation.images={source: sample, limit: 1, center_crop: 192}",
    ]
    cfg = compose_config("train", overrides, run_dir)
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
    with open(rdeic_smoke / "eval" / "sample" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    for row in rows:  # real bits: the estimate plus entropy-coder and container overhead
        pixels = int(row["height"]) * int(row["width"])
        real, estimate = 8 * int(row["bytes"]), float(row["bpp_est"]) * pixels
        assert 0.98 * estimate <= real <= 1.1 * estimate + 8 * 64, row
    # the checkpoint alone rebuilds the codec against its backbone and decodes bit-exactly
    codec = load_codec(rdeic_smoke / "checkpoints" / "last.ckpt")
    x = torch.rand(1, 3, 64, 96)
    assert torch.equal(codec.decompress(codec.compress(x)), codec.reconstruct(x)[0])

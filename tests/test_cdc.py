"""CDC: exact and seeded decoding, both parameterisations' smoke runs, gradients, LPIPS, EMA."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import pytest
import torch

from modules.base import load_codec
from modules.cdc import CDCModule
from modules.entropy import Bitstream, BitstreamError
from tests.conftest import compose_config, run_script


def tiny_cdc(prediction: str = "x", rho: float = 0.0, **kwargs) -> CDCModule:
    torch.manual_seed(0)
    options = {
        "dim": 8,
        "dim_mults": (1, 2, 2, 2, 2, 2),
        "compressor_dim": 8,
        "decode_steps": 3,
        "lpips_pretrained_backbone": False,
    }
    return CDCModule(prediction=prediction, rho=rho, **{**options, **kwargs})


@pytest.fixture(scope="module", params=["x", "epsilon"])
def codec(request) -> CDCModule:
    model = tiny_cdc(request.param).eval()
    model.update(force=True)
    return model


@pytest.mark.parametrize("gamma", [0.0, 0.8])
def test_round_trip_equals_eval_reconstruction(codec, gamma):
    codec.set_decoding(steps=3, gamma=gamma, seed=7)
    x = torch.rand(1, 3, 70, 100, generator=torch.Generator().manual_seed(0))
    data = codec.compress(x)
    reconstruction, bpp = codec.reconstruct(x)
    assert torch.equal(codec.decompress(data), reconstruction)
    assert float(codec.estimate_bpp(x)) == pytest.approx(float(bpp), rel=1e-6)


def test_stochastic_decoding_is_seeded_by_the_stream(codec):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    codec.set_decoding(steps=3, gamma=0.8, seed=1)
    first = codec.compress(x)
    codec.set_decoding(steps=3, gamma=0.8, seed=2)
    second = codec.compress(x)
    codec.set_decoding(steps=3, gamma=0.0, seed=0)  # the decoder's own settings do not matter
    assert torch.equal(codec.decompress(first), codec.decompress(first))
    assert not torch.equal(codec.decompress(first), codec.decompress(second))
    header = Bitstream.from_bytes(first)
    assert len(header.side) == 8  # steps u16, γ fp16, seed u32: counted in the real bpp


def test_separate_instance_decodes_identically(codec):
    other = tiny_cdc(codec.hparams.prediction)
    other.load_state_dict(codec.state_dict())
    other.eval().update(force=True)
    codec.set_decoding(steps=3, gamma=0.8, seed=3)
    data = codec.compress(torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(other.decompress(data), codec.decompress(data))


def test_bad_side_information_is_a_bitstream_error(codec):
    header = Bitstream.from_bytes(codec.compress(torch.rand(1, 3, 64, 64)))
    short_side = Bitstream("cdc", header.fingerprint, 64, 64, header.strings, b"\x00")
    with pytest.raises(BitstreamError, match="side information must be 8 bytes"):
        codec.decompress(short_side.to_bytes())
    with pytest.raises(BitstreamError, match="decoding settings"):
        codec.decompress_padded([b"", b""], bytes(8), (64, 64))  # 0 steps


@pytest.mark.parametrize("prediction", ["x", "epsilon"])
def test_gradients_reach_every_trainable_parameter_and_not_lpips(prediction):
    model = tiny_cdc(prediction, rho=0.9).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    terms = model.rd_loss(out, x)
    assert "lpips" in terms
    (terms["loss"] + model.aux_loss()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(not p.requires_grad and p.grad is None for p in model.lpips.parameters())
    assert not model.lpips.training
    optimizer = model.configure_optimizers()["optimizer"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.lpips.parameters()}


def test_warmup_stage_then_target():
    model = tiny_cdc(rho=0.9, beta=0.01, warmup_steps=5)
    assert model.stage_weights() == (1e-6, 0.0)
    model.trainer = type("T", (), {"global_step": 5})()  # stand-in: only global_step is read
    assert model.stage_weights() == (0.01, 0.9)


def test_x_parameterisation_loss_is_snr_weighted_and_clipped():
    model = tiny_cdc("x")
    x = torch.zeros(2, 3, 8, 8)
    out = {
        "x0_hat": torch.ones(2, 3, 8, 8) * 0.5 - 1,
        "n": torch.tensor([0, model.num_train_steps - 1]),
        "likelihoods": {"y": torch.ones(1)},
    }
    distortion = model.rd_loss(out, x)["distortion"]
    high, low = 5.0, float(model.snr[-1])  # SNR at n=0 is huge -> clipped to 5
    assert distortion.item() == pytest.approx((high * 0.25 + low * 0.25) / 2, rel=1e-5)


def _smoke(tmp_path_factory, experiment: str) -> tuple[Path, dict]:
    """A smoke run of `experiment`, evaluated on a 192² crop (padded to 256²) of one sample
    photo, with one RD evaluation on another: full-size photos through the U-Net cost minutes."""
    from train import train

    run_dir = tmp_path_factory.mktemp(experiment) / "run"
    overrides = [
        f"experiment={experiment}",
        "debug=smoke",
        "data.test.limit=1",
        "data.test.center_crop=192",
        "callbacks.rd_evaluation.every_n_steps=6",
        "callbacks.rd_evaluation.images={source: sample, limit: 1, center_crop: 192}",
    ]
    return run_dir, train(compose_config("train", overrides, run_dir))


@pytest.fixture(scope="module")
def x_smoke(tmp_path_factory) -> tuple[Path, dict]:
    return _smoke(tmp_path_factory, "cdc_x_rho0.9_b0.0032")


@pytest.mark.parametrize("experiment", ["cdc_x_rho0.9_b0.0032", "cdc_eps_rho0.9_b0.0032"])
def test_smoke_run_of_each_variant(experiment, request, tmp_path_factory):
    if experiment.startswith("cdc_x"):
        run_dir, metrics = request.getfixturevalue("x_smoke")
    else:
        run_dir, metrics = _smoke(tmp_path_factory, experiment)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert not any(k.startswith("lpips.") for k in checkpoint["state_dict"])  # never saved
    # the x-variant's state_dict holds the EMA weights; the official ε variant has no EMA
    assert ("ema_online" in checkpoint) == experiment.startswith("cdc_x")
    codec = load_codec(run_dir / "checkpoints" / "last.ckpt")  # decoding needs no LPIPS
    assert "lpips" not in dict(codec.named_children())
    assert metrics["test/bpp"] > 0 and "test/psnr-rgb" in metrics
    assert metrics["val/decode_steps"] == 3  # the smoke run's decoding steps


def test_eval_decoding_options_reach_the_stream(x_smoke, tmp_path):
    run_dir, _ = x_smoke
    result = run_script(
        "eval.py",
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "data=sample",
        "data.test.limit=1",
        "data.test.center_crop=192",
        "decoding={steps: 5, gamma: 0.5, seed: 3}",
        "save_outputs=true",
        "metrics=basic",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = (tmp_path / "eval" / "cdc_x_rho0.9_b0.0032").rglob("outputs/astronaut.bin")
    assert path.parent.parent.name == "cdc_x_rho0.9_b0.0032-last-gamma=0.5,seed=3,steps=5"
    stream = path.read_bytes()
    assert struct.unpack("<HeI", Bitstream.from_bytes(stream).side) == (5, 0.5, 3)


def test_stochastic_decoding_draws_a_seed_per_image_from_its_payload(codec):
    """decode_seed null: each stream carries a seed hashed from its ŷ (the official decoder
    draws fresh noise per image); the decoder reads it, and a fixed seed still overrides."""
    images = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in (3, 4)]
    codec.set_decoding(steps=3, gamma=0.8, seed=None)
    try:
        streams = [codec.compress(x) for x in images]
        seeds = [struct.unpack("<HeI", Bitstream.from_bytes(d).side)[2] for d in streams]
        assert seeds[0] != seeds[1]
        assert codec.compress(images[0]) == streams[0]  # the same payload, the same seed
        assert torch.equal(codec.decompress(streams[0]), codec.reconstruct(images[0])[0])
        codec.set_decoding(seed=11)
        assert struct.unpack("<HeI", Bitstream.from_bytes(codec.compress(images[1])).side)[2] == 11
    finally:
        codec.set_decoding(steps=3, gamma=0.0, seed=None)


def test_init_from_a_warmup_checkpoint_without_lpips(tmp_path):
    from modules.utils import init_weights

    warmup = tiny_cdc(rho=0.0)
    with torch.no_grad():
        next(warmup.unet.parameters()).add_(1.0)
    torch.save({"state_dict": warmup.state_dict()}, tmp_path / "warmup.ckpt")
    target = tiny_cdc(rho=0.9)
    target.setup("fit")  # the LPIPS loss network exists, but checkpoints never hold it
    init_weights(target, str(tmp_path / "warmup.ckpt"))
    assert torch.equal(next(target.unet.parameters()), next(warmup.unet.parameters()))
    with pytest.raises(FileNotFoundError, match="init_from"):
        init_weights(target, str(tmp_path / "missing.ckpt"))


def test_missing_lpips_weights_name_the_file_and_the_fix(tmp_path, monkeypatch):
    from modules.metrics.lpips import WeightsNotFoundError, build_lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth.*fetch_weights\.py"):
        build_lpips("vgg", tmp_path / "weights")


def test_lpips_backbone_loads_from_a_local_file(tmp_path, monkeypatch):
    from torchvision.models import vgg16

    from modules.metrics.lpips import build_lpips

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(5)
    reference = vgg16()
    (tmp_path / "weights").mkdir()
    torch.save(reference.state_dict(), tmp_path / "weights" / "vgg16-397923af.pth")
    model = build_lpips("vgg", tmp_path / "weights")
    assert not model.untrained_backbone
    assert torch.equal(model.net.slice1[0].weight, reference.features[0].weight)
    assert torch.equal(getattr(model.net.slice5, "28").weight, reference.features[28].weight)


def test_bad_decoding_options_are_config_errors(codec):
    from modules.elic import ELICModule
    from modules.utils import ConfigError

    with pytest.raises(ConfigError, match="not \\['stepz'\\]"):
        codec.set_decoding(stepz=5)
    with pytest.raises(ConfigError, match="decoding steps"):
        codec.set_decoding(steps=0)
    codec.set_decoding(gamma=0.3)  # partial: steps and seed stay
    assert codec.decoding["steps"] == 3 and codec.decoding["gamma"] == pytest.approx(0.3, 1e-3)
    with pytest.raises(ConfigError, match="ELICModule has decoding options \\[\\]"):
        ELICModule(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16]).set_decoding(steps=5)


@functools.cache
def recipe(*overrides: str):
    """A composed training config (cached: composing takes a second)."""
    return compose_config("train", list(overrides))


def test_recipes_of_the_two_parameterisations():
    x = recipe("experiment=cdc_x_rho0_b0.0016")
    eps = recipe("experiment=cdc_eps_rho0.9_b0.0016")
    for cfg in (x, eps):  # the official runs are fp32
        assert cfg.trainer.precision == "32-true" and cfg.model.decode_seed is None
        assert cfg.trainer.max_steps == 1_500_000  # 500K warm-up + 1M target steps
    assert (x.model.prediction, eps.model.prediction) == ("x", "epsilon")
    assert x.model.decode_steps == 17 and eps.model.decode_steps == 500  # paper, App. H
    assert (x.model.lr, x.model.lr_gamma, x.model.lr_floor) == (5e-5, 0.8, 2e-5)
    assert (eps.model.lr, eps.model.lr_gamma, eps.model.lr_floor) == (4e-5, 0.9, 2e-5)
    assert x.callbacks.ema.decay == 0.999 and eps.callbacks.ema is None  # ε: no EMA
    assert recipe("experiment=cdc_eps_warmup").model.decode_steps == 500
    second_route = recipe("experiment=cdc_x_rho0_b0.0016", "model.warmup_steps=0")
    assert second_route.trainer.max_steps == 1_000_000


def _lr_schedule(cfg) -> callable:
    """lr at each optimizer step of a tiny CDC with the recipe's optimiser values."""
    keys = ("lr", "lr_gamma", "lr_floor", "lr_milestones", "warmup_steps")
    model = tiny_cdc(cfg.model.prediction, **{key: cfg.model[key] for key in keys})
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr()[0] == model.hparams.lr * scheduler.lr_lambdas[0](0)
    return lambda step: model.hparams.lr * scheduler.lr_lambdas[0](step)


# the paper: 5e-5, ×0.8 every 100K steps, clipped at 2e-5; the official ε config: 4e-5, ×0.9, 2e-5
GOLDEN_LR = {
    "x": {0: 5e-5, 99_999: 5e-5, 100_000: 4e-5, 250_000: 3.2e-5, 499_999: 2.048e-5, 500_000: 2e-5},
    "eps": {0: 4e-5, 100_000: 3.6e-5, 699_999: 4e-5 * 0.9**6, 700_000: 2e-5, 999_999: 2e-5},
}


@pytest.mark.parametrize("variant", ["x", "eps"])
def test_both_documented_routes_give_the_same_lr_over_the_target_steps(variant):
    """One run (warm-up, then target) and init_from=<warm-up> model.warmup_steps=0: the
    milestones count from the start of the target stage in both. Before, the one-run recipe
    spent every milestone inside the warm-up and ran the 1M target steps at 2.05e-5."""
    experiment = f"experiment=cdc_{variant}_rho0_b0.0016"
    one_run = _lr_schedule(recipe(experiment))
    second = _lr_schedule(recipe(experiment, "model.warmup_steps=0"))
    warmup_alone = _lr_schedule(recipe(f"experiment=cdc_{variant}_warmup"))
    warmup = 500_000
    steps = [*range(0, 1_000_000, 4999), *GOLDEN_LR[variant]]
    for step in steps:
        assert one_run(warmup + step) == second(step), step
    for step, lr in GOLDEN_LR[variant].items():
        assert second(step) == pytest.approx(lr, rel=1e-12), step
    for step in range(0, warmup, 4999):  # the warm-up stage follows the same rule from step 0
        assert one_run(step) == warmup_alone(step), step


def test_eps_sampler_and_elic_variant_are_validated():
    from modules.elic import ELICModule

    with pytest.raises(ValueError, match="eps_sampler must be one of"):
        tiny_cdc("epsilon", eps_sampler="clamped")
    with pytest.raises(ValueError, match="variant must be one of"):
        ELICModule(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16], variant="he2022")

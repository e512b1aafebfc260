"""CDC: exact and seeded decoding, both parameterisations' smoke runs, gradients, LPIPS, EMA."""

from __future__ import annotations

import struct

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
    with pytest.raises(BitstreamError, match="side information"):
        codec.decompress_padded([b"", b""], b"\x00", (64, 64))
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


@pytest.mark.parametrize("experiment", ["cdc_x_rho0.9_b0.0032", "cdc_eps_rho0.9_b0.0032"])
def test_smoke_run_of_each_variant(experiment, tmp_path):
    from train import train

    run_dir = tmp_path / "run"
    cfg = compose_config(
        "train", [f"experiment={experiment}", "debug=smoke", "+data.test.limit=2"], run_dir
    )
    metrics = train(cfg)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert not any(k.startswith("lpips.") for k in checkpoint["state_dict"])  # never saved
    assert "ema_online" in checkpoint  # the state_dict holds the EMA weights
    codec = load_codec(run_dir / "checkpoints" / "last.ckpt")  # decoding needs no LPIPS
    assert "lpips" not in dict(codec.named_children())
    assert metrics["test/bpp"] > 0 and "test/psnr-rgb" in metrics


def test_eval_decoding_options_reach_the_stream(tmp_path):
    from train import train

    run_dir = tmp_path / "run"
    train(
        compose_config(
            "train", ["experiment=cdc_x_warmup", "debug=smoke", "evaluate=false"], run_dir
        )
    )
    result = run_script(
        "eval.py",
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "data=sample",
        "+data.test.limit=1",
        "decoding={steps: 5, gamma: 0.5}",
        "save_outputs=true",
        "metrics=basic",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = (tmp_path / "eval" / "cdc_x_warmup").rglob("outputs/astronaut.bin")
    assert path.parent.parent.name == "cdc_x_warmup-last-gamma=0.5,steps=5"
    stream = path.read_bytes()
    assert struct.unpack("<HeI", Bitstream.from_bytes(stream).side) == (5, 0.5, 0)


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


def test_eps_sampler_and_elic_variant_are_validated():
    from modules.elic import ELICModule

    with pytest.raises(ValueError, match="eps_sampler must be one of"):
        tiny_cdc("epsilon", eps_sampler="clamped")
    with pytest.raises(ValueError, match="variant must be one of"):
        ELICModule(lmbda=0.01, N=16, M=32, groups=[4, 4, 8, 16], variant="he2022")

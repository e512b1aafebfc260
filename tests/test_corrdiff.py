"""CorrDiff: phases, schedule, γ search, exact real-bitstream decoding, ablations, smoke run."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from modules.base import load_codec
from modules.corrdiff import CorrDiffModule
from modules.diffusion import ddim_sample, eps_from_x0, strided_ddim_indices
from modules.elic import ELICModule
from modules.entropy import Bitstream, BitstreamError
from modules.nets import adm_unet
from modules.utils import ConfigError
from tests.conftest import compose_config, run_script

TINY = {
    "elic": {"N": 16, "M": 32, "groups": [4, 4, 8, 16]},
    "elic_random_init": True,
    "unet": {"channels": 8, "norm_groups": 4, "layers_per_block": 1},
    "phase1_steps": 2,
    "phase2_steps": 2,
    "decode_steps": 3,
    "gamma_search": {"evaluations": 3},
    "perceptual_pretrained": False,
}
ELIC_PARTS = ("g_a", "g_s", "latent_codec")


def tiny_corrdiff(**kwargs) -> CorrDiffModule:
    torch.manual_seed(0)
    return CorrDiffModule(**{**TINY, **kwargs})


def at_step(monkeypatch, step: int) -> None:
    """Pretend the trainer is at `step` (the phase follows the global step)."""
    monkeypatch.setattr(CorrDiffModule, "global_step", property(lambda self: step))


def photo(size: int = 64) -> torch.Tensor:
    """A crop of scikit-image's astronaut photo, 1×3×size×size in [0, 1]."""
    crop = skimage.data.astronaut()[120 : 120 + size, 180 : 180 + size]
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255


def elic_state(model: CorrDiffModule) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if k.split(".")[0] in ELIC_PARTS
    }


@pytest.fixture(scope="module")
def codec() -> CorrDiffModule:
    """A tiny codec whose μ_θ is no longer zero-like (γ matters) and whose D is not μ_θ."""
    # golden-section from 0.5: every γ inside (0, 1), so that each mode decodes differently
    model = tiny_corrdiff(gamma_search={"method": "bounded", "evaluations": 3, "init": 0.5})
    model.eval()
    with torch.no_grad():
        for param in model.unet.parameters():
            param.add_(0.05 * torch.randn_like(param))
    model.update(force=True)
    return model


# ---------------------------------------------------------------------------- schedule, network
def test_linear_schedule_and_the_8_ddim_steps_are_adms():
    model = tiny_corrdiff()
    table = model._alphas_cumprod64
    assert table.dtype == torch.float64 and table.shape == (1000,)
    # ADM's linear schedule from its formula, in plain Python floats
    product, reference = 1.0, []
    for k in range(1000):
        product *= 1 - (1e-4 + k * (0.02 - 1e-4) / 999)
        reference.append(product)
    np.testing.assert_allclose(table.numpy(), reference, rtol=1e-12)
    assert table[0].item() == pytest.approx(0.9999, rel=1e-12)
    assert table[999].item() == pytest.approx(4.0358e-05, rel=1e-4)  # DDPM's ᾱ_T
    # guided-diffusion's space_timesteps(1000, "ddim8"): stride 125
    assert model._indices(8).tolist() == [0, 125, 250, 375, 500, 625, 750, 875]
    assert strided_ddim_indices(1000, 7).tolist() == list(range(0, 1000, 143))
    with pytest.raises(ValueError, match="exactly 999"):
        strided_ddim_indices(1000, 999)
    assert tiny_corrdiff(spacing="linspace")._indices(8).tolist() == [
        0,
        142,
        285,
        428,
        570,
        713,
        856,
        999,
    ]


def test_sampler_visits_the_8_steps_with_one_mu_pass_each(codec):
    seen = []
    hook = codec.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1][0])))
    x_e = torch.rand(1, 3, 16, 16)
    try:
        with torch.no_grad():
            codec._decode(2 * x_e - 1, x_e, 8, 0, None, "diffusion")
    finally:
        hook.remove()
    assert seen == [875, 750, 625, 500, 375, 250, 125, 0]


def test_score_network_is_adm_table_3():
    """Parameter counts of guided-diffusion's UNetModel(in 6, 96 channels, (1,1,2,2,3), 2 blocks,
    resblock_updown, scale-shift norm), counted from its code, with and without the middle
    block's attention; 15 skip connections (conv_in, 2 per level, 4 resampling blocks)."""
    unet = adm_unet(in_channels=6)
    assert sum(p.numel() for p in unet.parameters()) == 34_020_099
    plain = adm_unet(in_channels=6, mid_attention=False)
    assert sum(p.numel() for p in plain.parameters()) == 33_686_595
    skips = 1 + sum(len(b.resnets) + bool(b.downsamplers) for b in unet.down_blocks)
    assert skips == 15 == sum(len(b.resnets) for b in unet.up_blocks)
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    assert unet.config.down_block_types == ("ResnetDownsampleBlock2D",) * 5
    assert unet.mid_block.attentions[0].heads == 4
    assert all(m.p == 0 for m in unet.modules() if isinstance(m, torch.nn.Dropout))


# ---------------------------------------------------------------------------- phases
def test_phase1_trains_mu_alone_and_leaves_elic_bit_identical(monkeypatch):
    at_step(monkeypatch, 1)
    model = tiny_corrdiff(dists_weight=0.0).train()
    x = torch.rand(2, 3, 64, 64)
    model(x)  # CompressAI's masked convolutions mask their weights in the first forward
    before = elic_state(model)
    unet_before = [p.detach().clone() for p in model.unet.parameters()]
    optimizer = model.configure_optimizers()["optimizer"]
    out = model(x)
    terms = model.rd_loss(out, x)
    assert terms["phase"] == 1 and "mse_e" not in terms
    (terms["loss"] + model.aux_loss()).backward()
    assert all(p.grad is not None for p in model.unet.parameters())
    assert all(
        p.grad is None for n, p in model.named_parameters() if n.split(".")[0] in ELIC_PARTS
    )
    optimizer.step()
    after = elic_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. the quantiles
    assert any(
        not torch.equal(a, b) for a, b in zip(unet_before, model.unet.parameters(), strict=True)
    )
    # they stay trainable parameters (optimizer, EMA and checkpoints hold them in both phases)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in model.g_a.parameters()} <= optimized


def test_phase2_trains_everything_and_the_rate_reaches_g_a(monkeypatch):
    at_step(monkeypatch, 2)
    model = tiny_corrdiff(dists_weight=0.0, lpips_weight=0.0).train()
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    terms = model.rd_loss(out, x)
    assert terms["phase"] == 2 and "mse_e" in terms
    (terms["loss"] + model.aux_loss()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    model.zero_grad()
    (model.hparams.rate_weight * model.rd_loss(model(x), x)["bpp"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_a.parameters())
    assert all(p.grad is None for p in model.unet.parameters())  # the rate does not see μ_θ
    model.zero_grad()
    model.rd_loss(model(x), x)["mse"].backward()  # the diffusion loss reaches D through D(ŷ)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g_s.parameters())


def test_loss_weights_of_both_phases(monkeypatch):
    """L₁ = MSE + 0.16·DISTS; L₂ = L₁ + MSE_e + 0.64·LPIPS-Alex_e + λ_r·bpp, images in [−1, 1]."""
    model = tiny_corrdiff(rate_weight=0.2)
    fake = {  # stand-ins with known values for the perceptual networks
        "dists": lambda a, b: (a - b).abs().flatten(1).mean(1),
        "lpips_alex": lambda a, b: (a - b).pow(2).flatten(1).mean(1) * 3,
    }
    monkeypatch.setattr(model, "_perceptual", lambda name: fake[name])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 8, generator=g)
    out = {
        "x0_hat": torch.rand(2, 3, 8, 8, generator=g) * 2 - 1,
        "x_e": torch.rand(2, 3, 8, 8, generator=g),
        "likelihoods": {"y": torch.full((2, 4, 2, 2), 0.5), "z": torch.ones(2, 4, 1, 1)},
    }
    mse = ((out["x0_hat"] - (2 * x - 1)) ** 2).mean()
    dists = ((out["x0_hat"] + 1) / 2 - x).abs().mean()
    mse_e = ((2 * out["x_e"] - 1) - (2 * x - 1)).pow(2).mean()
    bpp = 2 * 4 * 2 * 2 / (2 * 8 * 8)  # one bit per y element
    at_step(monkeypatch, 0)
    assert model.rd_loss(out, x)["loss"].item() == pytest.approx(float(mse + 0.16 * dists))
    at_step(monkeypatch, 2)
    expected = mse + 0.16 * dists + mse_e + 0.64 * 3 * mse_e + 0.2 * bpp
    terms = model.rd_loss(out, x)
    assert terms["bpp"].item() == pytest.approx(bpp)
    assert terms["loss"].item() == pytest.approx(float(expected), rel=1e-6)


def test_a_phase_of_zero_steps_is_skipped_and_max_steps_is_their_sum():
    assert tiny_corrdiff(phase1_steps=0).phase == 2
    cfg = compose_config("train", ["experiment=corrdiff_r0.2"])
    assert cfg.trainer.max_steps == 800000 and cfg.model.elic_lmbda == 0.004
    assert cfg.callbacks.ema.decay == 0.9999 and cfg.model.lr == 5e-5
    assert cfg.data.batch_size == 8 and cfg.data.crop_size == 256
    model = cfg.model  # the paper's constants
    assert (model.dists_weight, model.lpips_weight, model.decode_steps) == (0.16, 0.64, 8)
    assert model.unet.channels == 96 and list(model.unet.channel_mult) == [1, 1, 2, 2, 3]
    assert (model.schedule, model.num_train_steps, model.gamma_search.method) == (
        "linear",
        1000,
        "gradient",
    )
    cfg = compose_config("train", ["experiment=corrdiff_r0.05", "model.phase1_steps=0"])
    assert cfg.trainer.max_steps == 400000 and cfg.model.elic_lmbda == 0.008
    rates = {
        compose_config("train", [f"experiment=corrdiff_r{r}"]).model.rate_weight: r
        for r in ("0.5", "0.2", "0.1", "0.05", "0.02")
    }
    assert sorted(rates) == [0.02, 0.05, 0.1, 0.2, 0.5]


class _Trainer:
    """Stand-in for the attributes `setup` reads."""

    def __init__(self, strategy=None) -> None:
        self.strategy = strategy


def test_elic_initialisation_is_strict_and_checked(tmp_path):
    elic = ELICModule(lmbda=0.008, variant="chandelier", **TINY["elic"])
    checkpoint = {
        "state_dict": elic.state_dict(),
        "hyper_parameters": dict(elic.hparams),
        "codec_class": "modules.elic.ELICModule",
    }
    torch.save(checkpoint, tmp_path / "elic.ckpt")
    model = tiny_corrdiff(elic_random_init=False, elic_ckpt=str(tmp_path / "elic.ckpt"))
    model.trainer = _Trainer()
    built = []
    model._perceptual = built.append  # the loss networks and the encoder's LPIPS-VGG
    model.setup("fit")
    assert built == ["dists", "lpips_alex", "lpips_vgg"]
    for name in ELIC_PARTS:
        ours, theirs = getattr(model, name).state_dict(), getattr(elic, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)

    for key, value in (("N", 8), ("variant", "official")):
        wrong = {**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], key: value}}
        torch.save(wrong, tmp_path / "wrong.ckpt")
        model = tiny_corrdiff(elic_random_init=False, elic_ckpt=str(tmp_path / "wrong.ckpt"))
        model.trainer = _Trainer()
        with pytest.raises(ConfigError, match=rf"has {key}={value}, model\.elic\.{key} is"):
            model.setup("fit")
    missing = tiny_corrdiff(elic_random_init=False, elic_ckpt=str(tmp_path / "none.ckpt"))
    missing.trainer = _Trainer()
    with pytest.raises(FileNotFoundError, match=r"experiment=elic_l0\.008"):
        missing.setup("fit")


def test_ddp_without_unused_parameters_is_refused_in_phase_1():
    from lightning.pytorch.strategies import DDPStrategy

    model = tiny_corrdiff()
    model.trainer = _Trainer(DDPStrategy())
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        model.setup("fit")
    model.trainer = _Trainer(DDPStrategy(find_unused_parameters=True))
    model._check_strategy()
    joint_only = tiny_corrdiff(phase1_steps=0)  # phase 2 gives every parameter a gradient
    joint_only.trainer = _Trainer(DDPStrategy())
    joint_only._check_strategy()


def test_missing_elic_checkpoint_is_one_line_naming_the_experiment(tmp_path):
    result = run_script(
        "train.py",
        "experiment=corrdiff_r0.1",
        "trainer=cpu",
        "data=sample",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "experiment=elic_l0.008" in error[0] and "model.elic_ckpt=" in error[0]
    assert "import_official.py elic" in error[0]


# ---------------------------------------------------------------------------- γ search
def test_encoding_needs_the_lpips_vgg_weights_and_says_so(tmp_path, monkeypatch):
    from modules.metrics import WeightsNotFoundError

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = tiny_corrdiff(perceptual_pretrained=True, weights_dir=str(tmp_path / "weights"))
    model.eval().update(force=True)
    with pytest.raises(WeightsNotFoundError, match=r"vgg16-397923af\.pth.*fetch_weights\.py"):
        model.compress(photo())


def _search_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0 (a photo), a sharp but noisy μ and a blurred D(ŷ), all in [−1, 1]."""
    x0 = 2 * photo() - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    mu = (x0 + 0.5 * noise).clamp(-1, 1)
    blurred = F.avg_pool2d(F.pad(x0, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return x0, mu, blurred


@pytest.mark.parametrize("method", ["gradient", "bounded"])
def test_gamma_search_lowers_lpips_vgg_against_pure_diffusion(codec, method):
    """Untrained-but-fixed LPIPS-VGG (seeded), a sample photo, both searches."""
    x0, mu, x_e = _search_problem()
    search = codec.encoding
    codec.set_encoding(method=method, evaluations=6, init=1.0, lr=2.0)
    try:
        gamma = codec.search_gamma(x0, mu, x_e)
    finally:
        codec.set_encoding(**search)
    with torch.no_grad():
        at_one = codec._lpips_vgg(mu, x0)
        at_gamma = codec._lpips_vgg(gamma * mu + (1 - gamma) * x_e, x0)
    assert 0 <= gamma.item() < 1 and at_gamma.item() < at_one.item()


@pytest.mark.parametrize("method", ["gradient", "bounded"])
def test_gamma_search_finds_the_analytic_minimum_of_a_quadratic(codec, monkeypatch, method):
    """With M = MSE the minimiser is γ* = ⟨μ − D, x0 − D⟩/‖μ − D‖² (clipped to the bounds)."""
    x0, mu, x_e = _search_problem()
    mu, x0 = torch.cat([mu, mu]), torch.cat([x0, 0.7 * mu + 0.3 * x_e])  # two images
    x_e = torch.cat([x_e, x_e])
    monkeypatch.setattr(codec, "_lpips_vgg", lambda a, b: (a - b).pow(2).flatten(1).mean(1))
    diff = (mu - x_e).flatten(1)
    analytic = ((diff * (x0 - x_e).flatten(1)).sum(1) / diff.pow(2).sum(1)).clamp(0, 1)
    scale = diff.pow(2).mean(1)  # curvature/2 of the quadratic: lr = 1/(2·scale) is exact
    monkeypatch.setattr(
        codec,
        "encoding",
        {
            **codec.encoding,
            "method": method,
            "evaluations": 30,
            "init": 1.0,
            "lr": float(0.5 / scale[1]),
        },
    )
    gamma = codec.search_gamma(x0, mu, x_e)
    assert analytic[1].item() == pytest.approx(0.7, abs=1e-5)
    torch.testing.assert_close(gamma, analytic, atol=2e-4, rtol=0)


# ---------------------------------------------------------------------------- decoding
def _coded(codec: CorrDiffModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        coded = codec._encode(x)
    x_e = coded["x_e"].clamp(0, 1)
    return {"x_e": x_e, "condition": codec._condition(coded["y_hat"], x_e)}


def test_gamma_0_decodes_d_and_gamma_1_the_uncorrected_sampler(codec):
    coded = _coded(codec, photo())
    condition, x_e = coded["condition"], coded["x_e"]
    with torch.no_grad():
        zeros = codec._decode(condition, x_e, 3, 5, torch.zeros(1, 3), "corrected")
        assert torch.equal(zeros, x_e)
        assert torch.equal(codec._decode(condition, x_e, 3, 5, None, "end_to_end"), x_e)
        ones = codec._decode(condition, x_e, 3, 5, torch.ones(1, 3), "corrected")
        x_start = torch.randn(x_e.shape, generator=torch.Generator().manual_seed(5))

        def plain(x_t, index):  # DDIM on μ_θ alone
            mu = codec.unet(torch.cat([x_t, condition], 1), index).sample.clamp(-1, 1)
            return mu, eps_from_x0(x_t, mu, codec.alphas_cumprod[index].view(-1, 1, 1, 1))

        reference = ddim_sample(plain, codec._alphas_cumprod64, codec._indices(3), x_start)
        assert torch.equal(ones, (reference + 1) / 2)
        assert torch.equal(codec._decode(condition, x_e, 3, 5, None, "diffusion"), ones)
        half = codec._decode(condition, x_e, 3, 5, torch.full((1, 3), 0.5), "corrected")
        assert not torch.equal(half, ones) and not torch.equal(half, x_e)


def test_round_trip_is_the_encoders_own_reconstruction(codec):
    x = torch.rand(1, 3, 50, 60, generator=torch.Generator().manual_seed(1))
    data = codec.compress(x)
    decoded = codec.decompress(data)
    reconstruction, _ = codec.reconstruct(x)
    assert decoded.shape == x.shape and torch.equal(decoded, reconstruction)
    stream = Bitstream.from_bytes(data)
    steps, seed = struct.unpack_from("<HI", stream.side)
    assert steps == 3 and len(stream.side) == 6 + 2 * 3
    # x_T's seed is drawn per image from its ŷ (not one seed for a whole set) unless fixed
    other = Bitstream.from_bytes(codec.compress(x.flip(-1)))
    assert struct.unpack_from("<HI", other.side)[1] != seed
    gammas = np.frombuffer(stream.side, dtype="<f2", offset=6)
    bounds = codec.encoding["bounds"]
    assert ((bounds[0] <= gammas) & (gammas <= bounds[1])).all()  # one γ per step


def test_modes_change_only_the_decoder(codec):
    x = photo()
    data = codec.compress(x)
    outputs = {}
    try:
        codec.set_decoding(mode="diffusion")
        assert codec.compress(x) == data  # the encoder ignores the mode: one stream for all
        for mode in ("diffusion", "end_to_end", "direct", "corrected"):
            codec.set_decoding(mode=mode)
            outputs[mode] = codec.decompress(data)
            assert torch.equal(outputs[mode], codec.reconstruct(x)[0])
    finally:
        codec.set_decoding(mode="corrected")
    assert len({tuple(out.flatten()[:64].tolist()) for out in outputs.values()}) == 4
    with pytest.raises(ConfigError, match="mode must be one of"):
        codec.set_decoding(mode="oracle")
    with pytest.raises(ConfigError, match="decoding steps"):
        codec.set_decoding(steps=999)


def test_the_gamma_search_is_an_encoding_option(codec):
    """eval.py's `encoding=` sweeps the search; the stream alone decodes, whatever the decoder's
    own search settings are."""
    x = photo()
    search = dict(codec.encoding)
    try:
        codec.set_encoding(evaluations=1)  # γ stays at init = 0.5: one evaluation, no step
        data = codec.compress(x)
        gammas = np.frombuffer(Bitstream.from_bytes(data).side, dtype="<f2", offset=6)
        assert (gammas == 0.5).all()
        codec.set_encoding(**search)
        assert codec.compress(x) != data  # the default search moves γ
        with torch.no_grad():
            assert torch.equal(codec.decompress(data), codec.decompress(data))
        for bad, message in [
            ({"budget": 3}, "encoding options"),
            ({"method": "newton"}, "method must be one of"),
            ({"evaluations": 0}, "evaluations >= 1"),
            ({"evaluations": 2.5}, "evaluations >= 1"),
            ({"init": 2.0}, "init inside"),
            ({"bounds": "wide"}, "are numbers"),
        ]:
            with pytest.raises(ConfigError, match=message):
                codec.set_encoding(**bad)
        assert codec.encoding == search  # a refused option changes nothing
    finally:
        codec.set_encoding(**search)


def _with_side(stream: Bitstream, side: bytes) -> bytes:
    fields = {k: getattr(stream, k) for k in ("method", "fingerprint", "height", "width")}
    return Bitstream(**fields, strings=stream.strings, side=side).to_bytes()


def test_flipped_gamma_or_seed_bytes_are_refused_or_change_the_output(codec):
    codec.set_decoding(seed=11)
    try:
        data = codec.compress(photo())
    finally:
        codec.set_decoding(seed=None)
    stream = Bitstream.from_bytes(data)
    assert struct.unpack_from("<HI", stream.side)[1] == 11
    gammas = np.frombuffer(stream.side, dtype="<f2", offset=6)
    assert gammas[-1] != 0  # else the output is D(ŷ) whatever the seed and the other γ's
    expected = codec.decompress(data)
    outcomes = []
    for position in range(2, len(stream.side)):  # seed bytes, then γ bytes
        side = bytearray(stream.side)
        side[position] ^= 0xFF
        try:
            decoded = codec.decompress(_with_side(stream, bytes(side)))
        except BitstreamError as exc:
            assert "finite" in str(exc)
            outcomes.append("refused")
            continue
        assert not torch.equal(decoded, expected), position
        outcomes.append("changed")
    assert "changed" in outcomes
    for side in (stream.side[:5], stream.side + b"\x00\x00", b"\x00\x00" + stream.side[2:]):
        with pytest.raises(BitstreamError, match=r"side information|steps"):
            codec.decompress(_with_side(stream, side))


# ---------------------------------------------------------------------------- smoke run
@pytest.fixture(scope="module")
def corrdiff_smoke(tmp_path_factory) -> Path:
    from train import train

    run_dir = tmp_path_factory.mktemp("corrdiff") / "run"
    cfg = compose_config(
        "train",
        [
            "experiment=corrdiff_r0.1",
            "debug=smoke",
            # batches of one 64² crop, one validation, RD evaluation and probe image at the end
            "data.batch_size=1",
            "data.crop_size=64",
            "data.val_crop_size=64",
            "trainer.val_check_interval=6",
            "+data.test.limit=2",
            "data.test.center_crop=64",
            "callbacks.image_logger.every_n_steps=6",
            "callbacks.image_logger.num_images=1",
            "callbacks.rd_evaluation.limit=1",
            "callbacks.rd_evaluation.every_n_steps=6",
            "callbacks.rd_evaluation.images={source: sample, center_crop: 64}",
        ],
        run_dir,
    )
    train(cfg)
    return run_dir


def test_smoke_run_trains_both_phases_and_evaluates_real_bitstreams(corrdiff_smoke):
    checkpoint = torch.load(
        corrdiff_smoke / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["global_step"] == 6
    assert checkpoint["hyper_parameters"]["elic_random_init"] is True  # said so, also in the log
    assert not any(k.startswith(("dists.", "lpips")) for k in checkpoint["state_dict"])
    assert "ema_online" in checkpoint
    events = EventAccumulator(str(corrdiff_smoke / "tensorboard"))
    events.Reload()
    phases = [e.value for e in events.Scalars("train/phase")]
    assert phases[:3] == [1, 1, 1] and phases[-1] == 2
    assert {"train/dists", "train/mse_e", "train/lpips_e", "rd/bpp"} <= set(
        events.Tags()["scalars"]
    )
    results = json.loads((corrdiff_smoke / "eval" / "sample" / "results.json").read_text())
    assert results["results"]["bpp"][0] > results["results"]["bpp_est"][0]
    assert math.isfinite(results["results"]["psnr-rgb"][0])


def test_checkpoint_decodes_bit_exactly_in_a_second_process(corrdiff_smoke, tmp_path):
    ckpt = corrdiff_smoke / "checkpoints" / "last.ckpt"
    codec = load_codec(ckpt)
    assert "lpips_vgg" not in dict(codec.named_children())  # built by the first compress
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    (tmp_path / "image.bin").write_bytes(codec.compress(x))
    expected = codec.reconstruct(x)[0]
    script = (
        "import sys, torch; from modules.base import load_codec; "
        "codec = load_codec(sys.argv[1]); "
        "torch.save(codec.decompress(open(sys.argv[2], 'rb').read()), sys.argv[3])"
    )
    result = run_script(
        "-c", script, str(ckpt), str(tmp_path / "image.bin"), str(tmp_path / "out.pt")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)

"""Foundation-diffusion codec (Relic et al.) on the tiny SD backbone: the continuous schedule,
P_φ's ranges, the quantiser, gradients, real bitstreams and side information, λ sweeps, the rate
as a function of λ after a short training, the naive zlib baseline, the evaluation sets."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from datamodules import EvalImages, list_items
from datamodules.transforms import to_float, train_crop
from modules.base import load_codec
from modules.diffusion import continuous_alpha_cumprod, ddim_indices
from modules.entropy import Bitstream, BitstreamError
from modules.foundation import FoundationModule, NaiveFoundationModule
from modules.metrics import extract_patches, quantize_8bit
from modules.metrics.suite import PATCH_SHIFT, PATCH_SIZE
from modules.nets import ParameterEstimator
from modules.utils import ConfigError
from tests.conftest import compose_config, run_script

TINY = {
    "backbone": {"name": "tiny_sd"},
    "estimator_widths": [16, 32],
    "hyper_channels": 16,
    "side_channels": 16,
    "context_channels": 16,
    "decode_steps": 2,
}
#: SD 2.1's scaled-linear schedule, built here independently of the code under test
SD_ALPHAS = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2)


def tiny_foundation(**kwargs) -> FoundationModule:
    torch.manual_seed(0)
    return FoundationModule(**{**TINY, **kwargs})


def _side(codec, data: bytes) -> tuple:
    return struct.unpack("<4e4eHH", Bitstream.from_bytes(data).side)


@pytest.fixture(scope="module")
def sample_images() -> list[torch.Tensor]:
    return [i["image"] for i in EvalImages(list_items({"source": "sample"})) if i is not None]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """`experiment=foundation_sd21 debug=smoke` (training, checkpoints, the final evaluation)."""
    from train import train

    run_dir = tmp_path_factory.mktemp("foundation") / "run"
    overrides = [
        "experiment=foundation_sd21",
        "debug=smoke",
        "+data.test.limit=1",
        "data.test.center_crop=192",  # padded to 256²
        "callbacks.rd_evaluation.images={source: sample, limit: 1, center_crop: 192}",
    ]
    train(compose_config("train", overrides, run_dir))
    return run_dir


@pytest.fixture(scope="module")
def codec(smoke) -> FoundationModule:
    return load_codec(smoke / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def naive_smoke(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """`experiment=foundation_naive debug=smoke`: nothing to train, then the evaluation."""
    from train import train

    run_dir = tmp_path_factory.mktemp("naive") / "run"
    overrides = [
        "experiment=foundation_naive",
        "debug=smoke",
        "+data.test.limit=1",
        "data.test.center_crop=192",
    ]
    return run_dir, train(compose_config("train", overrides, run_dir))


@pytest.fixture(scope="module")
def naive(naive_smoke) -> NaiveFoundationModule:
    return load_codec(naive_smoke[0] / "checkpoints" / "last.ckpt")


# ---------------------------------------------------------------------------- schedule, P_φ
def test_continuous_alpha_is_the_table_at_integers_and_differentiable():
    table = torch.from_numpy(SD_ALPHAS)
    steps = torch.tensor([0.0, 20.0, 76.0, 299.0, 999.0])
    assert torch.allclose(
        continuous_alpha_cumprod(table, steps), table[steps.long()], rtol=1e-14, atol=0
    )
    # between entries: β constant within the step, i.e. a geometric interpolation
    t = torch.tensor([20.25], requires_grad=True)
    alpha = continuous_alpha_cumprod(table, t)
    expected = SD_ALPHAS[20] ** 0.75 * SD_ALPHAS[21] ** 0.25
    assert float(alpha.detach()) == pytest.approx(expected, rel=1e-12)
    (grad,) = torch.autograd.grad(alpha.sum(), t)
    assert float(grad) == pytest.approx(
        math.log(SD_ALPHAS[21] / SD_ALPHAS[20]) * expected, rel=1e-6
    )
    assert float(grad) < 0
    # the untrained quantiser a = 1 is noise-matched at t = 76: √((1−ᾱ)/ᾱ) = 1/√12
    assert math.sqrt((1 - SD_ALPHAS[76]) / SD_ALPHAS[76]) == pytest.approx(12**-0.5, rel=2e-3)


@pytest.mark.parametrize("lmbda_input", ["log", "linear"])
def test_estimator_outputs_stay_valid_for_extreme_inputs(lmbda_input):
    torch.manual_seed(0)
    estimator = ParameterEstimator(widths=(8, 16), lmbda_input=lmbda_input, init_fraction=76 / 300)
    untrained = estimator(torch.randn(2, 4, 16, 16), torch.tensor([1.0, 20.0]))
    assert torch.allclose(untrained.scale, torch.ones(2, 4), rtol=1e-5)  # a = 1, b = 0, t = 76
    assert torch.equal(untrained.offset, torch.zeros(2, 4))
    assert torch.allclose(300 * untrained.fraction, torch.tensor(76.0), rtol=1e-5)
    with torch.no_grad():
        for param in estimator.parameters():
            param.normal_(0, 3)  # an estimator far from its initialisation
    for y in (
        torch.full((1, 4, 16, 16), 1e4),
        -1e4 * torch.rand(1, 4, 16, 16),
        torch.zeros(1, 4, 8, 8),
    ):
        for lmbda in (1e-4, 1.0, 20.0, 1e6):
            out = estimator(y, torch.tensor([lmbda]))
            assert torch.isfinite(out.scale).all() and (out.scale > 0).all()
            assert (out.scale >= 1 / 32 * (1 - 1e-6)).all() and (
                out.scale <= 32 * (1 + 1e-6)
            ).all()
            assert (out.offset.abs() <= 8).all()
            assert ((out.fraction >= 0) & (out.fraction <= 1)).all()
            assert (
                torch.isfinite(out.scale.half()).all() and torch.isfinite(out.offset.half()).all()
            )


def test_quantised_latent_is_within_half_a_step(codec, naive):
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    for model, lmbdas in ((codec, (1.0, 20.0)), (naive, (None,))):
        for lmbda in lmbdas:
            if lmbda:
                model.set_encoding(lmbda=lmbda)
            with torch.no_grad():
                y = model.latent(x)
                a, b, _ = model.side_parameters(y)
                z_hat, _ = model.quantize(model.transform(y, a, b))
                error = (model.inverse(z_hat, a, b) - y).abs()
            # per channel: |T⁻¹(ẑ) − y| ≤ 1/(2a), up to float rounding
            assert (error <= 0.5 / a[..., None, None] * (1 + 1e-5) + 1e-6).all()
            assert error.max() > 0  # really quantised
            if model is naive:  # the baseline rounds onto the integer grid (Eq. 4)
                assert torch.equal(z_hat, z_hat.round())
    codec.set_encoding(lmbda=5.0)


# ---------------------------------------------------------------------------- training
def test_training_pass_gradients_reach_estimator_and_entropy_model_not_sd():
    model = tiny_foundation().train()
    with torch.no_grad():  # a trained head: a, b and t depend on y and λ
        model.estimator.head.weight.normal_(0, 0.05)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    out = model(x)
    t = out["t"]
    assert not torch.equal(t, t.round())  # the continuous t, not an integer step
    alpha = continuous_alpha_cumprod(torch.from_numpy(SD_ALPHAS), t.detach()).float()
    eps = model.noise_prediction(out["y_t"], t).detach()
    y0 = (out["y_t"] - (1 - alpha).sqrt().view(-1, 1, 1, 1) * eps) / alpha.sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(out["y0"], y0, atol=1e-5)  # one UNet pass at t, ᾱ(t), ε-prediction
    terms = model.rd_loss(out, x)
    (dt,) = torch.autograd.grad(terms["loss"], t, retain_graph=True)
    assert (dt != 0).all()  # the loss reaches the timestep
    (terms["loss"] + model.aux_loss()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"estimator", "entropy_model"}
    assert all(p.grad is not None for p in trainable.values())
    head = model.estimator.head.bias.grad
    assert (head[:4] != 0).all() and (head[4:8] != 0).all() and head[8] != 0  # a, b and t
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())


def test_rd_loss_weights_each_sample_by_its_lambda(codec):
    x = torch.zeros(2, 3, 8, 8)
    out = {
        "x_hat": torch.stack([torch.full((3, 8, 8), 0.1), torch.full((3, 8, 8), 0.2)]),
        "likelihoods": {"y": torch.full((2, 4, 1, 1), 0.5), "z": torch.full((2, 1, 1, 1), 0.25)},
        "lmbda": torch.tensor([1.0, 20.0]),
        "t": torch.tensor([10.0, 30.0]),
    }
    terms = codec.rd_loss(out, x)
    bpp = (4 * 1 + 2) / 64  # 4 symbols of 1 bit + 1 of 2 bits over 8×8 pixels
    assert float(terms["bpp"]) == pytest.approx(bpp)
    assert float(terms["loss"]) == pytest.approx(((bpp + 0.01) + (bpp + 20 * 0.04)) / 2)
    assert float(terms["timestep"]) == 20.0


def test_lambda_is_drawn_per_sample_or_per_update(codec, monkeypatch):
    torch.manual_seed(0)
    drawn = codec.draw_lmbdas(64)
    assert set(drawn.tolist()) == {1.0, 5.0, 10.0, 20.0}
    monkeypatch.setitem(codec.hparams, "lmbda_sampling", "batch")
    batch = codec.draw_lmbdas(64)
    assert len(set(batch.tolist())) == 1 and batch[0] in (1.0, 5.0, 10.0, 20.0)
    with pytest.raises(ValueError, match="lmbda_sampling"):
        tiny_foundation(lmbda_sampling="image")


# ---------------------------------------------------------------------------- coding
def test_round_trip_equals_eval_reconstruction_for_any_size(codec):
    x = torch.rand(1, 3, 90, 140, generator=torch.Generator().manual_seed(3))
    data = codec.compress(x)
    decoded = codec.decompress(data)
    reconstruction, bpp_est = codec.reconstruct(x)
    assert decoded.shape == x.shape and torch.equal(decoded, reconstruction)
    header = Bitstream.from_bytes(data)
    real_bits = 8 * sum(len(s) for s in header.strings)
    assert 0.9 * float(bpp_est) * 90 * 140 <= real_bits <= 1.1 * float(bpp_est) * 90 * 140 + 64


def test_second_process_decodes_the_same_image_and_cli_takes_lmbda(codec, smoke, tmp_path):
    import scripts.codec as cli

    def args(command: str, source: str, target: str, *extra: str) -> list[str]:
        ckpt = smoke / "checkpoints" / "last.ckpt"
        return [command, "--ckpt", str(ckpt), "--input", str(tmp_path / source),
                "--output", str(tmp_path / target), *extra]  # fmt: skip

    image = np.random.default_rng(4).integers(0, 256, (70, 100, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    assert cli.main(args("compress", "in.png", "in.bin", "--lmbda", "20")) == 0
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    codec.set_encoding(lmbda=20.0)
    try:
        assert (tmp_path / "in.bin").read_bytes() == codec.compress(x)
        expected = quantize_8bit(codec.reconstruct(x)[0])[0].permute(1, 2, 0).byte().numpy()
    finally:
        codec.set_encoding(lmbda=5.0)
    decoded = run_script("scripts/codec.py", *args("decompress", "in.bin", "out.png"))
    assert decoded.returncode == 0, decoded.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)
    assert cli.main(args("decompress", "in.bin", "x.png", "--lmbda", "2")) == 2
    assert not (tmp_path / "x.png").exists()


def test_side_information_travels_in_the_stream(codec, smoke):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    codec.set_encoding(lmbda=20.0)
    codec.set_decoding(steps=3)
    try:
        data = codec.compress(x)
        expected = codec.reconstruct(x)[0]
        with torch.no_grad():
            a, b, s = codec.estimator(codec.latent(x), torch.tensor([20.0]))
    finally:
        codec.set_encoding(lmbda=5.0)
        codec.set_decoding(steps=2)
    *values, t, steps = _side(codec, data)
    assert values[:4] == a[0].half().tolist() and values[4:] == b[0].half().tolist()
    assert t == round(float(s) * 300) and steps == 3
    # another instance with other encoding and decoding settings decodes the same image
    decoder = load_codec(smoke / "checkpoints" / "last.ckpt")
    decoder.set_encoding(lmbda=1.0)
    decoder.set_decoding(steps=1)
    assert torch.equal(decoder.decompress(data), expected)
    # crafted side information is refused
    header = Bitstream.from_bytes(data)
    for crafted in (
        (0.0, *values[1:], t, steps),
        (*values[:4], math.nan, *values[5:], t, steps),
        (*values, 301, steps),
        (*values, t, 302),
        (*values[:3], 64.0, *values[4:], t, 1),
    ):
        stream = Bitstream(
            "foundation",
            header.fingerprint,
            64,
            64,
            header.strings,
            struct.pack("<4e4eHH", *crafted),
        ).to_bytes()
        with pytest.raises(BitstreamError):
            codec.decompress(stream)
    with pytest.raises(BitstreamError, match="expects 2"):
        codec.decompress(
            Bitstream(
                "foundation", header.fingerprint, 64, 64, header.strings[:1], header.side
            ).to_bytes()
        )


def test_default_decoding_runs_one_unet_pass_per_step(codec, monkeypatch):
    visited = []
    original = codec.noise_prediction

    def recording(y_t, t):
        visited.append(t.tolist())
        return original(y_t, t)

    monkeypatch.setattr(codec, "noise_prediction", recording)
    y_t = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        codec.decode_latent(y_t, torch.tensor([6]), None)
        assert visited == [[6], [5], [4], [3], [2], [1], [0]]  # t + 1 passes, t -> 0
        visited.clear()
        codec.decode_latent(y_t, torch.tensor([6]), 3)
        assert visited == [[i] for i in reversed(ddim_indices(7, 3).tolist())] == [[6], [3], [0]]
        visited.clear()
        codec.decode_latent(y_t, torch.tensor([1]), 5)  # never more passes than t + 1
        assert visited == [[1], [0]]


def test_coding_options_are_checked(codec):
    for bad in ({"lmbda": -1.0}, {"lmbda": math.inf}, {"lmbda": "high"}, {"lmbda": True}):
        with pytest.raises(ConfigError, match="lmbda"):
            codec.set_encoding(**bad)
    with pytest.raises(ConfigError, match=r"encoding options \['lmbda'\], not \['gamma'\]"):
        codec.set_encoding(gamma=1.0)
    for bad in (0, 302, 2.5):
        with pytest.raises(ConfigError, match="steps"):
            codec.set_decoding(steps=bad)
    assert codec.encoding == {"lmbda": 5.0} and codec.decoding == {"steps": 2}


def test_stream_of_another_backbone_is_refused(codec):
    data = codec.compress(torch.rand(1, 3, 64, 64))
    other = FoundationModule(**{**codec.hparams, "backbone": {"name": "tiny_sd", "seed": 1}})
    other.load_state_dict(codec.state_dict())
    other.eval().update(force=True)
    with pytest.raises(BitstreamError, match="different model"):
        other.decompress(data)


# ---------------------------------------------------------------------------- runs and sweeps
def test_smoke_run_trains_checkpoints_and_evaluates(smoke):
    checkpoint = torch.load(smoke / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 6
    assert {k.split(".")[0] for k in checkpoint["state_dict"]} == {"estimator", "entropy_model"}
    assert checkpoint["hyper_parameters"]["backbone"]["name"] == "tiny_sd"
    results = json.loads((smoke / "eval" / "sample" / "results.json").read_text())
    assert results["encoding"] == {"lmbda": 5.0} and results["results"]["bpp"][0] > 0


def test_lambda_and_steps_sweep_of_one_checkpoint_is_one_curve(smoke, sample_images, tmp_path):
    from eval import evaluate

    (tmp_path / "kodak").mkdir()  # a one-image stand-in for Kodak
    image = sample_images[0][:, :64, :128].permute(1, 2, 0).numpy()
    Image.fromarray(image).save(tmp_path / "kodak" / "kodim01.png")
    overrides = [
        f"ckpt_path={smoke / 'checkpoints' / 'last.ckpt'}",
        f"paths.data_root={tmp_path}",
        "metrics=basic",
        "encoding={lmbda: [1, 20]}",
        "decoding={steps: [1, 2]}",
    ]
    with pytest.warns(UserWarning, match="expected 24"):
        curves = evaluate(compose_config("eval", overrides, tmp_path / "run"))
    document = json.loads((tmp_path / "run" / "kodak" / "results.json").read_text())
    assert document == curves["kodak"]
    (curve,) = document["curves"]  # both options swept: one curve, named by the experiment
    assert curve["name"] == "foundation_sd21" and len(curve["results"]["bpp"]) == 4
    points = sorted(zip(curve["encoding"], curve["decoding"], strict=True), key=str)
    assert points == sorted(
        [({"lmbda": lm}, {"steps": st}) for lm in (1.0, 20.0) for st in (1, 2)], key=str
    )
    assert sorted(curve["checkpoints"]) == sorted(
        f"foundation_sd21-last-lmbda={lm}-steps={st}" for lm in (1, 20) for st in (1, 2)
    )
    for label in curve["checkpoints"]:
        point = json.loads((tmp_path / "run" / "kodak" / label / "results.json").read_text())
        assert f"lmbda={int(point['encoding']['lmbda'])}" in label
    fixed = [*overrides[:3], "encoding={lmbda: [1, 20]}", "decoding={steps: 2}"]
    (steps_2,) = evaluate(compose_config("eval", fixed, tmp_path / "fixed"))["kodak"]["curves"]
    assert steps_2["name"] == "foundation_sd21 (steps=2)"  # a fixed option names its curve
    assert sorted(e["lmbda"] for e in steps_2["encoding"]) == [1.0, 20.0]
    bad = [*overrides[:3], "encoding={lmbda: [-2, 1]}"]
    with pytest.raises(ConfigError, match="lmbda"):
        evaluate(compose_config("eval", bad, tmp_path / "bad"))


def pass_through_sd(backbone) -> None:
    """Turn the tiny backbone into one whose distortion depends on the quantisation.

    The random tiny VAE ignores its latent (its decoded MSE is the same with the latent set to
    zero), so no rate-distortion trade-off exists on it. Here its weights become an exact
    8×8 average pooling of RGB (encoder) and nearest upsampling (decoder), and the UNet predicts
    ε̂ = 0; the codec's code path through the SD modules is unchanged.
    """

    def identity(conv: nn.Conv2d, channels: int) -> None:
        conv.weight.zero_(), conv.bias.zero_()
        centre = conv.weight.shape[-1] // 2
        for c in range(channels):
            conv.weight[c, c, centre, centre] = 1.0

    vae = backbone.vae
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, ResnetBlock2D):  # the residual branch off: identity/shortcut
                module.conv2.weight.zero_(), module.conv2.bias.zero_()
                if module.conv_shortcut is not None:
                    identity(module.conv_shortcut, min(module.conv_shortcut.weight.shape[:2]))
            elif isinstance(module, Attention):
                module.to_out[0].weight.zero_(), module.to_out[0].bias.zero_()
            elif isinstance(module, Downsample2D):  # 2×2 mean (the VAE pads right and bottom)
                module.conv.weight.zero_(), module.conv.bias.zero_()
                for c in range(module.conv.weight.shape[0]):
                    module.conv.weight[c, c, :2, :2] = 0.25
            elif isinstance(module, Upsample2D):
                identity(module.conv, module.conv.weight.shape[0])
        for conv, channels in (
            (vae.encoder.conv_in, 3),
            (vae.encoder.conv_out, 3),
            (vae.decoder.conv_in, 4),
            (vae.decoder.conv_out, 3),
            (vae.quant_conv, 8),
            (vae.post_quant_conv, 4),
        ):
            identity(conv, channels)
        backbone.unet.conv_out.weight.zero_(), backbone.unet.conv_out.bias.zero_()
    for coder in (vae.encoder, vae.decoder):
        coder.conv_norm_out, coder.conv_act = nn.Identity(), nn.Identity()


def test_rate_grows_with_lambda_after_a_short_training(sample_images):
    model = tiny_foundation(lr=1e-3, gradient_checkpointing=False)
    pass_through_sd(model.backbone)
    crops = [im[None, :, :128, :128].float() / 255 for im in sample_images]

    def rates() -> dict[float, list[int]]:
        model.eval().update(force=True)
        out = {}
        for lmbda in (1.0, 20.0):
            model.set_encoding(lmbda=lmbda)
            out[lmbda] = [len(model.compress(x)) for x in crops]
        return out

    before = rates()
    assert before[1.0] == before[20.0]  # the untrained P_φ does not depend on λ
    generator = torch.Generator().manual_seed(0)
    pool = torch.stack(
        [to_float(train_crop(sample_images[i % 8], 64, generator=generator)) for i in range(48)]
    )
    # paired updates: the same two crops at each training λ, so that only the λ-dependence of
    # the loss (not the draw of crops per λ) can make P_φ depend on λ; a loss without λ leaves
    # a(20)/a(1) within a few per cent of 1 here
    lmbdas = torch.tensor([1.0, 5.0, 10.0, 20.0]).repeat_interleave(2)
    model.draw_lmbdas = lambda batch: lmbdas
    model.train()
    optimizer = model.configure_optimizers()["optimizer"]
    torch.manual_seed(0)
    for _ in range(20):
        batch = pool[torch.randint(len(pool), (2,))].repeat(4, 1, 1, 1)
        loss = model.rd_loss(model(batch), batch)["loss"] + model.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        model.configure_gradient_clipping(optimizer)
        optimizer.step()
    after = rates()
    assert all(high > low for low, high in zip(after[1.0], after[20.0], strict=True))
    assert sum(after[20.0]) > 1.25 * sum(after[1.0])
    scales = {}
    for lmbda in (1.0, 20.0):
        model.set_encoding(lmbda=lmbda)
        with torch.no_grad():
            scales[lmbda] = model.side_parameters(model.latent(crops[0]))[0][0, :3]
    assert (scales[20.0] > 4 * scales[1.0]).all()  # much finer quantisation at the higher λ


# ---------------------------------------------------------------------------- naive baseline
def test_naive_smoke_run_evaluates_without_training(naive_smoke, naive):
    run_dir, metrics = naive_smoke
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 0 and checkpoint["state_dict"] == {}
    assert metrics["test/bpp"] > 0 and (run_dir / "eval" / "sample" / "results.json").is_file()
    assert isinstance(naive, NaiveFoundationModule) and naive.encoding["timestep"] == 76
    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(6))  # no padding
    naive.set_encoding(scale=4.0, offset=0.25, timestep=5)
    data = naive.compress(x)
    assert torch.equal(naive.decompress(data), naive.reconstruct(x)[0])
    assert _side(naive, data) == (4.0,) * 4 + (0.25,) * 4 + (5, 2)
    # the payload is zlib over the int16 symbols round(a·y + b) on the integer grid
    y = naive.latent(x)
    symbols = np.frombuffer(zlib.decompress(Bitstream.from_bytes(data).strings[0]), "<i2")
    assert np.array_equal(symbols, (4.0 * y + 0.25).round().flatten().numpy().astype("<i2"))
    # a payload that inflates beyond the latent's size is refused before it is allocated
    header = Bitstream.from_bytes(data)
    bomb = zlib.compress(bytes(10**6))
    with pytest.raises(BitstreamError, match="expected"):
        naive.decompress(
            Bitstream("foundation", header.fingerprint, 64, 80, (bomb,), header.side).to_bytes()
        )
    with pytest.raises(ConfigError, match="timestep"):
        naive.set_encoding(timestep=1000)
    naive.set_encoding(scale=1.0, offset=0.0, timestep=76)


# ---------------------------------------------------------------------------- evaluation sets
def test_clic2022_and_mscoco30k_follow_the_paper(tmp_path):
    from datamodules import ImageDataModule
    from datamodules.sources import DatasetNotFoundError

    for name, folder, size in (
        ("clic2022", "clic2022_test", (1500, 1000)),
        ("mscoco30k", "mscoco30k", (300, 400)),
    ):
        cfg = compose_config(
            "eval", [f"data={name}", "ckpt_path=x", f"paths.data_root={tmp_path}"]
        )
        options = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()}
        del options["_target_"]
        with pytest.raises(DatasetNotFoundError, match=str(tmp_path / folder)):
            ImageDataModule(**options)
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(tmp_path / folder / "a.png")
        data = ImageDataModule(**options)
        with pytest.warns(UserWarning, match="expected"):
            image = data.eval_images()[0]["image"]
        # CLIC2022: 1500×1000 -> long side 2048 (2048×1365) -> 768² centre crop; COCO: 256²
        assert image.shape == ((3, 768, 768) if name == "clic2022" else (3, 256, 256))
    # on 256² images the FID patch protocol takes each whole image exactly once
    image = torch.rand(1, 3, 256, 256)
    patches = extract_patches(image, PATCH_SIZE, PATCH_SHIFT)
    assert patches.shape == (1, 3, 256, 256) and torch.equal(patches[0], image[0])


def test_experiments_follow_the_recipe():
    cfg = compose_config("train", ["experiment=foundation_sd21"])
    assert cfg.model.lmbdas == [1, 5, 10, 20] and cfg.model.lr == 1e-4
    # the untrained quantiser is noise-matched: rounding noise 1/(a√12) = SD's NSR at init_timestep
    alpha = SD_ALPHAS[cfg.model.init_timestep]
    nsr = math.sqrt((1 - alpha) / alpha)
    assert nsr == pytest.approx(1 / (cfg.model.init_scale * 12**0.5), rel=5e-3)
    assert cfg.model.init_timestep < cfg.model.max_timestep == 300
    assert cfg.trainer.max_steps == 300000 and cfg.data.crop_size == 256
    assert cfg.data.train.source == "vimeo90k" and cfg.backbone.name == "sd21_base"
    naive = compose_config("train", ["experiment=foundation_naive"])
    assert naive.model._target_.endswith("NaiveFoundationModule") and naive.data.train is None

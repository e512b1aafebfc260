"""Import of the official CDC, RDEIC and ELiC re-implementation checkpoints.

No official weights can be downloaded here, so each format is tested on a file written in the
official layout from a fixture (tests/fixtures/official/, read with tests/official_layout.py)
and compared with the output of the official code on the same weights. How the fixtures were
produced (in a scratch folder outside the project; the official code is not in this repository):

* Official code: buggyyang/CDC_compression @ 00b10de (`xparam/`, `epsilonparam/`, with einops
  and ema-pytorch 0.2.3); huai-chang/RDEIC's released code as in its fork
  ShreyasBhaktharam/RDEIC @ 5874b65 (`model/compression.py`, `model/compression_modules.py`,
  `model/rdeic.py`, `model/layers/*`, `ldm/` with the unused metric/trainer/sampler/LPIPS/torchac
  imports stubbed); VincentChandelier/ELiC-ReImplemetation @ 92a9ece (`Network.py`,
  `ELICUtilis/`) under CompressAI 1.1.5 built from source, the version it pins, so its files have
  the 1.1.x key names.
* Networks, as the official test scripts build them but narrower: CDC `Unet` + `ResnetCompressor`
  (X: cosine N = 8193, EMA(beta=0.999, update_every=10, power=0.75, update_after_step=100)) and
  `Unet` + `BigCompressor` (ε: linear N = 20000), dim 4 instead of 64 (the X compressor keeps 64
  context channels at full resolution); RDEIC `Compression(in_nc=32, out_nc=4, N=M=32,
  slice_ch=[4, 4, 8, 16], codebook 64)` with `ChannelContextEX`'s hard-coded 224/128 hidden widths
  set to 28/16 (this repository scales them by channels/256), and `NoiseEstimator` with
  model_channels 32, channel_mult [1, 2, 2, 2], num_head_channels 16, context_dim 32,
  control_model_ratio 1.0 (the ldm SpatialTransformer's GroupNorm(32) needs 32 channels), run on
  the tiny_sd UNet (seed 0) converted to the ldm layout with diffusers'
  `convert_ldm_unet_checkpoint` (the converted base reproduces the diffusers UNet to 1.4e-6);
  ELiC `TestModel(N=32, M=320)` with its EntropyBottleneck, hard-coded at 192 channels, built at
  N = 32. The `*_full.pt` fixtures are the layouts of the unmodified networks at the released
  widths (keys and shapes only, incl. the LPIPS-VGG keys of a ρ = 0.9 CDC file).
* Weights: every entry replaced by `materialize(layout)` (seeded uniform values; the schedule
  buffers, bounds, masks and scale tables as the official code computes them; coder tables
  zero), then: CDC `_medians` set where the learned CDF crosses ½, ± 0.05; the ε U-Net's output
  layer ×0.003 and ELiC's last g_s layer ×0.1 with bias 0.5 (so that the random models' decoded
  images are mostly inside the clamp range); ELiC's quantiles solved for its tail mass. Then
  saved as the official trainers save (`torch.save({"step", "model", "ema"})`, the Lightning
  `{"state_dict"}`, the TestModel state dict after `update(force=True)`).
* Outputs, in eval mode on the stored image (64×64): CDC `context_fn(x)` (each map contracted over
  its channels with `randn(C)` seeded 4), the bpp estimate, `denoise_fn(x_t, 0.3, context)` with
  `x_t = randn` seeded 2, `compress(x, sample_steps=3|4, init=None)` (deterministic DDIM) and the
  prior's CDF logits on a grid; RDEIC `Compression.forward(feature)` (z_c, y likelihoods, hint
  projection) and `NoiseEstimator.forward(z_t, hint, t=137, tiny_sd prompt embedding)`; ELiC
  `forward(x)` and `decompress(compress(x))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from modules.base import CodecModule, bits_per_pixel, load_codec
from modules.entropy import fingerprint
from modules.nets import (
    CDCCompressor,
    ConditionalUNet,
    ControlModule,
    RDEICCompressor,
    controlled_noise_prediction,
)
from modules.official import OfficialCheckpointError, check_coverage, import_official
from modules.official import cdc as official_cdc
from modules.official import elic as official_elic
from modules.official import rdeic as official_rdeic
from modules.utils import init_weights
from tests.official_layout import load_fixture, materialize, write_official

#: the options the narrow fixtures need (the defaults are the released widths)
OPTIONS = {
    "cdc_x": {"method": "cdc", "file": "x_b0.0032.pt", "options": {"dim": 4, "compressor_dim": 4}},
    "cdc_eps": {"method": "cdc", "file": "eps.pt", "options": {"dim": 4, "compressor_dim": 4}},
    "rdeic": {
        "method": "rdeic",
        "file": "rdeic_0.5_step5.ckpt",
        "options": {
            "backbone": {"name": "tiny_sd"},
            "channels": 32,
            "groups": [4, 4, 8, 16],
            "num_codes": 64,
            "hint_channels": 32,
            "control_ratio": 1.0,
        },
    },
    "elic": {"method": "elic", "file": "ELIC_0008.pth.tar", "options": {"lmbda": 0.008, "N": 32}},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """|actual − expected| ≤ tol · max(1, |expected|max)."""
    scale = max(1.0, float(expected.abs().max()))
    error = float((actual.float() - expected.float()).abs().max())
    assert error <= tol * scale, f"max error {error:.3g} (scale {scale:.3g})"


def project(maps: torch.Tensor) -> torch.Tensor:
    """A map contracted over its channels with the fixtures' seeded weights."""
    weights = torch.randn(maps.shape[1], generator=torch.Generator().manual_seed(4))
    return torch.einsum("bchw,c->bhw", maps, weights)


@dataclass
class Case:
    fixture: dict  # the fixture file (layout, inputs, official outputs)
    src: Path  # the official file written from it
    ckpt: Path  # the imported checkpoint
    codec: CodecModule  # the codec `import_official` returned


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Case]:
    """Each case imported once."""
    folder = tmp_path_factory.mktemp("official")
    cases = {}
    for name, case in OPTIONS.items():
        fixture = load_fixture(name)
        src = write_official(fixture, folder / case["file"])
        ckpt = folder / f"{name}.ckpt"
        codec = import_official(case["method"], src, ckpt, **case["options"])
        cases[name] = Case(fixture, src, ckpt, codec)
    return cases


@pytest.fixture(scope="module")
def codecs(imported) -> dict:
    """The imported checkpoints as `load_codec` rebuilds them."""
    return {name: load_codec(case.ckpt) for name, case in imported.items()}


def image_of(fixture: dict) -> torch.Tensor:
    return fixture["inputs"]["image"].float() / 255


# ---------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", ["cdc_x", "cdc_eps"])
def test_cdc_matches_the_official_code(imported, codecs, name):
    fixture, codec = imported[name].fixture, codecs[name]
    expected = fixture["outputs"]
    x = image_of(fixture)
    with torch.no_grad():
        compressed = codec.compressor(2 * x - 1)
        for ours, theirs in zip(
            compressed["context"], expected["context_projections"], strict=True
        ):
            assert_close(project(ours), theirs)
        assert_close(bits_per_pixel(compressed["likelihoods"], 64 * 64), expected["bpp"])
        x_t = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        assert_close(
            codec.unet(x_t, fixture["inputs"]["time"], compressed["context"]), expected["unet"]
        )
        steps = fixture["inputs"]["decode_steps"]
        decoded = codec.decode(compressed["context"], steps=steps, gamma=0.0, seed=0)
        assert_close(decoded, (expected["decoded"].clamp(-1, 1) + 1) / 2)
    assert codec.hparams.prediction == ("x" if name == "cdc_x" else "epsilon")
    assert codec.hparams.rho == 0 and codec.decoding["gamma"] == 0  # no LPIPS weights: ρ = 0


def test_cdc_x_is_imported_from_the_ema_weights(imported, tmp_path):
    """The "model" (online) weights of an X file differ from its EMA: importing them instead
    moves the output. LPIPS weights in the file mark a ρ = 0.9 model, decoded at γ = 0.8."""
    fixture = imported["cdc_x"].fixture
    official = materialize(fixture["layout"])
    official["model"]["loss_fn_vgg.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(official, tmp_path / "x_rho0.9.pt")
    online = import_official(
        "cdc",
        tmp_path / "x_rho0.9.pt",
        tmp_path / "a.ckpt",
        weights="model",
        dim=4,
        compressor_dim=4,
    )
    assert online.hparams.rho == 0.9 and online.decoding["gamma"] == pytest.approx(0.8, 1e-3)
    x = image_of(fixture)
    with torch.no_grad():
        context = online.compressor(2 * x - 1)["context"]
    assert (project(context[1]) - fixture["outputs"]["context_projections"][1]).abs().max() > 1e-2
    assert imported["cdc_x"].codec.hparams.rho == 0  # the fixture file has no LPIPS weights


def test_cdc_eps_decodes_with_the_official_sampler_by_default(imported, codecs):
    """The official ε sampler feeds i/S and does not clamp x̂0; the matched one differs."""
    fixture, codec = imported["cdc_eps"].fixture, codecs["cdc_eps"]
    assert codec.hparams.eps_sampler == "official"
    x = image_of(fixture)
    codec.hparams.eps_sampler = "matched"
    try:
        with torch.no_grad():
            context = codec.compressor(2 * x - 1)["context"]
            decoded = codec.decode(
                context, steps=fixture["inputs"]["decode_steps"], gamma=0.0, seed=0
            )
    finally:
        codec.hparams.eps_sampler = "official"
    official = (fixture["outputs"]["decoded"].clamp(-1, 1) + 1) / 2
    assert (decoded - official).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["cdc_x", "cdc_eps"])
def test_cdc_prior_quantiles_are_solved_from_the_learned_density(imported, codecs, name):
    fixture, codec = imported[name].fixture, codecs[name]
    bottleneck = codec.compressor.latent_codec["hyper"].entropy_bottleneck
    grid = fixture["inputs"]["grid"]  # K×C×1×1 points -> C×1×K for CompressAI
    with torch.no_grad():
        logits = bottleneck._logits_cumulative(
            grid[:, :, 0, 0].t().unsqueeze(1), stop_gradient=True
        )
    # the density is CDC's: CDF logits equal the official FlexiblePrior's on a grid
    assert_close(logits[:, 0].t(), fixture["outputs"]["prior_cdf_logits"][:, :, 0, 0])

    layout = fixture["layout"]["ema" if name == "cdc_x" else "model"]
    medians = layout[("ema_model." if name == "cdc_x" else "") + "context_fn.prior._medians"]
    quantiles = bottleneck.quantiles.detach()
    assert torch.equal(quantiles[:, 0, 1], medians.flatten())  # the trained rounding offset
    # the tails beyond the lower/upper quantiles hold tail_mass/2 each (CompressAI's targets)
    with torch.no_grad():
        below = torch.sigmoid(bottleneck._logits_cumulative(quantiles[:, :, :1], True).double())
        above = torch.sigmoid(-bottleneck._logits_cumulative(quantiles[:, :, 2:], True).double())
    half_tail = torch.tensor(bottleneck.tail_mass / 2, dtype=torch.float64)
    assert torch.allclose(below, half_tail, rtol=0.05) and torch.allclose(
        above, half_tail, rtol=0.05
    )
    # not CompressAI's initial ±10 spread, and the CDF tables cover the solved range
    assert not torch.allclose(quantiles[:, 0, 0], quantiles[:, 0, 1] - 10, atol=0.1)
    spread = torch.ceil(quantiles[:, 0, 2] - quantiles[:, 0, 1]) + torch.ceil(
        quantiles[:, 0, 1] - quantiles[:, 0, 0]
    )
    assert torch.equal(bottleneck._cdf_length.cpu(), spread.int() + 3)


def test_rdeic_matches_the_official_code(imported, codecs):
    fixture, codec = imported["rdeic"].fixture, codecs["rdeic"]
    unet = codec.backbone.unet
    assert fingerprint(unet.state_dict().items()).hex() == fixture["tiny_sd_unet_fingerprint"], (
        "tiny_sd's UNet changed: regenerate tests/fixtures/official/rdeic.pt (module docstring)"
    )
    expected, inputs = fixture["outputs"], fixture["inputs"]
    with torch.no_grad():
        coded = codec.compressor(inputs["feature"])
        assert_close(coded["z_c"], expected["z_c"])
        assert_close(coded["likelihoods"]["y"], expected["likelihoods"])
        assert_close(project(coded["hint"]), expected["hint_projection"])
        eps = controlled_noise_prediction(
            unet,
            codec.control,
            inputs["z_t"],
            inputs["t"],
            codec.backbone.prompt_embedding,
            coded["hint"],
        )
    assert_close(eps, expected["eps"])
    # λ and the fixed steps from the released name rdeic_<λ>_step<n>.ckpt
    assert codec.hparams.lmbda == 0.5 and codec.decoding["steps"] == 5
    assert codec.hparams.context == "official"


def test_elic_matches_the_official_code(imported, codecs):
    fixture, codec = imported["elic"].fixture, codecs["elic"]
    expected = fixture["outputs"]
    x = image_of(fixture)
    with torch.no_grad():
        out = codec(x)
    assert_close(out["x_hat"], expected["x_hat"])
    assert_close(out["likelihoods"]["y"], expected["likelihoods_y"])
    assert_close(out["likelihoods"]["z"], expected["likelihoods_z"])
    # real bitstreams decode to the official decoder's image and exactly to our eval forward
    decoded = codec.decompress(imported["elic"].codec.compress(x))
    assert_close(decoded, expected["decompressed"])
    assert torch.equal(decoded, codec.reconstruct(x)[0])
    assert codec.hparams.variant == "chandelier"


@pytest.mark.parametrize("name", ["cdc_x", "cdc_eps", "rdeic"])  # ELIC: its numerics test
def test_decompress_of_compress_is_exact(imported, codecs, name):
    """The importer's codec encodes, the checkpoint's (as load_codec rebuilds it) decodes:
    exactly its own eval-mode reconstruction."""
    encoder, decoder = imported[name].codec, codecs[name]
    for codec in (encoder, decoder):
        codec.set_decoding(steps=1)  # the released 17/500 (CDC), 5 (RDEIC) are slow on CPU
    x = image_of(imported[name].fixture) if name != "rdeic" else torch.rand(1, 3, 64, 64)
    decoded = decoder.decompress(encoder.compress(x))
    assert torch.equal(decoded, decoder.reconstruct(x)[0])


def test_imported_checkpoints_serve_init_from(imported):
    """`init_from=` loads the weights strictly into a model built from the hyper-parameters."""
    ckpt = imported["cdc_x"].ckpt
    trained = imported["cdc_x"].codec
    fresh = type(trained)(**trained.hparams)
    init_weights(fresh, str(ckpt))  # strict: every trainable weight is in the checkpoint
    for (key, a), b in zip(fresh.state_dict().items(), trained.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


# ---------------------------------------------------------------------------------- key maps
def _sd21_unet_config() -> dict:
    from modules.diffusion.sd_backbone import RANDOM_SIZES

    return {
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "use_linear_projection": True,
        **RANDOM_SIZES["sd21"]["unet"],
    }


@pytest.mark.parametrize("name", ["cdc_x_full", "cdc_eps_full", "rdeic_full", "elic_full"])
def test_every_key_of_a_released_layout_maps(name):
    """At the released widths every official key has its place and every weight of the model
    comes from the file, with the right shape (shapes only: meta tensors)."""
    layout = load_fixture(name)["layout"]
    official = materialize(layout, meta=True)
    if name.startswith("cdc"):
        state = official["model"]
        if "ema" in official:
            ema = official["ema"].items()
            state = {k.removeprefix("ema_model."): v for k, v in ema if k.startswith("ema_model.")}
        assert any(k.startswith("loss_fn_vgg.") for k in state)  # a ρ = 0.9 file
        finest = 64 if name == "cdc_x_full" else 3
        with torch.device("meta"):
            model = nn.Module()
            model.compressor = CDCCompressor(dim=64, out_channels=finest)
            model.unet = ConditionalUNet(
                dim=64, context_channels=model.compressor.context_channels
            )
        mapped = official_cdc.map_state(state, latent_channels=256)
        check_coverage(model, mapped)
    elif name == "rdeic_full":
        model = nn.Module()
        model.compressor = RDEICCompressor(context="official", num_codes=16384)
        with torch.device("meta"):
            model.control = ControlModule(_sd21_unet_config(), hint_channels=256, ratio=0.2)
        mapped = official_rdeic.map_state(
            official["state_dict"], model.compressor, _sd21_unet_config()
        )
        check_coverage(model, mapped)
        anchors = model.compressor.latent_codec.anchor_param_aggregation
        params = model.compressor.latent_codec.param_aggregation
        total = sum(p.numel() for p in [*anchors.parameters(), *params.parameters()])
        assert round(total / 1e6, 2) == 1.40  # the official SCCTX (the shared one: 0.74 M)
    else:
        from modules.elic import ELICModule

        model = ELICModule(lmbda=0.008, variant="chandelier")
        mapped = official_elic.map_state(official, model)
        check_coverage(
            model, mapped, derived=[k for k in model.state_dict() if k.endswith(".mask")]
        )


# ---------------------------------------------------------------------------------- bad files
def test_unknown_and_missing_keys_are_refused(imported, tmp_path):
    fixture = imported["cdc_eps"].fixture
    official = materialize(fixture["layout"])
    extra = {**official, "model": {**official["model"], "denoise_fn.extra.weight": torch.zeros(1)}}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(OfficialCheckpointError, match=r"denoise_fn\.extra\.weight"):
        import_official("cdc", tmp_path / "extra.pt", tmp_path / "a.ckpt", dim=4, compressor_dim=4)
    model = dict(official["model"])
    del model["denoise_fn.final_conv.1.weight"]
    torch.save({**official, "model": model}, tmp_path / "missing.pt")
    with pytest.raises(OfficialCheckpointError, match=r"lacks 1 weight.*unet.final.1.weight"):
        import_official(
            "cdc", tmp_path / "missing.pt", tmp_path / "b.ckpt", dim=4, compressor_dim=4
        )
    with pytest.raises(OfficialCheckpointError, match="width options"):  # the released widths
        import_official("cdc", imported["cdc_eps"].src, tmp_path / "c.ckpt")


def test_rdeic_skips_only_the_frozen_backbone_entries(imported):
    codec = imported["rdeic"].codec
    official = materialize(imported["rdeic"].fixture["layout"])["state_dict"]
    frozen = {"model.diffusion_model.out.2.weight": torch.zeros(1), "betas": torch.zeros(3)}
    config = codec.backbone.unet.config
    mapped = official_rdeic.map_state({**official, **frozen}, codec.compressor, config)
    check_coverage(codec, mapped)
    with pytest.raises(OfficialCheckpointError, match=r"lpips_head\.weight"):
        official_rdeic.map_state(
            {**official, "lpips_head.weight": frozen["betas"]}, codec.compressor, config
        )
    with pytest.raises(OfficialCheckpointError, match="control_scale 1"):
        scaled = {**official, "control_model.scale_list": 2 * official["control_model.scale_list"]}
        official_rdeic.map_state(scaled, codec.compressor, config)
    assert official_rdeic.rate_point("weight/rdeic_0.25_step5.ckpt") == (0.25, 5)
    with pytest.raises(OfficialCheckpointError, match="--lmbda"):
        official_rdeic.convert({"state_dict": official}, "my_model.ckpt")


def test_files_of_another_method_or_truncated_are_one_clear_error(imported, tmp_path, capsys):
    from scripts.import_official import main

    rdeic_file = imported["rdeic"].src
    elic_file, elic_ckpt = imported["elic"].src, imported["elic"].ckpt
    with pytest.raises(OfficialCheckpointError, match="official RDEIC checkpoint, not CDC"):
        import_official("cdc", rdeic_file, tmp_path / "a.ckpt")
    with pytest.raises(OfficialCheckpointError, match="official ELIC checkpoint, not RDEIC"):
        import_official("rdeic", elic_file, tmp_path / "a.ckpt")
    with pytest.raises(OfficialCheckpointError, match="already a checkpoint of this repository"):
        import_official("elic", elic_ckpt, tmp_path / "a.ckpt", lmbda=0.008)
    truncated = tmp_path / "truncated.pt"
    data = elic_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code = main(
        ["elic", "--src", str(truncated), "--out", str(tmp_path / "b.ckpt"), "--lmbda", "0.008"]
    )
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "truncated" in error
    assert not (tmp_path / "b.ckpt").exists()

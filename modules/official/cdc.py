"""CDC (buggyyang/CDC_compression; weights on the Hugging Face hub, `rhyang/CDC_params`).

The official trainer saves `torch.save({"step", "model", "ema"})`: "model" is the state dict of
`GaussianDiffusion` (`denoise_fn.*` U-Net, `context_fn.*` compressor with CDC's own
`FlexiblePrior`, `train_*` schedule buffers, `loss_fn_vgg.*` LPIPS-VGG when ρ > 0), "ema" that
of ema_pytorch 0.2.3's `EMA` wrapper (`initted`, `step`, `online_model.*`, `ema_model.*`; only
X-parameterised runs have it). As the official test scripts, X-models are imported from the EMA
weights and ε-models from "model"; `train_snr` exists only in the X tree, so the file says which
parameterisation it is, and its schedule buffers must equal this repository's (N = 8193 cosine or
N = 20000 linear). LPIPS weights (ρ > 0) are dropped: they are frozen and this repository loads
its own for training.

Maps beyond renaming:
    FlexiblePrior -> EntropyBottleneck(filters=(3, 3, 3), init_scale=10), the same Ballé
        density: `affine.i.weight` (C,1,1,in,out) -> `matrices.i` (C,out,in), `affine.i.bias`
        and `a.i` (C,1,1,1,out) -> `biases.i`, `factors.i` (C,out,1), `_medians` -> the median
        quantile. CDC learns only the median, so the lower and upper quantiles are solved from
        the learned density (where its CDF reaches CompressAI's tail mass), keeping the median
        the model was trained to round around.
    hyper-decoder output: CDC chunks it as (mean, scale), CompressAI as (scales, means): the two
        halves of its last convolution are swapped. The σ clamp at 0.1 is the
        GaussianConditional's scale bound (0.1, `CDCCompressor`).
The constructor widths are not in the file; the official test scripts fix dim 64, mults 1–6,
compressor dim 64 (the defaults here, overridable for other widths).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from modules.cdc import VARIANTS, CDCModule
from modules.diffusion import make_alphas_cumprod

from . import OfficialCheckpointError, Rule, load_mapped, refuse_unknown, rename, state_dict_of

EXPECTED = 'a torch.save({"step", "model"[, "ema"]}) of GaussianDiffusion state dicts'
#: keys of the official GaussianDiffusion that carry no weights of the codec
_DROPPED = (r"train_\w+", r"loss_fn_vgg\..+")
_EB = "compressor.latent_codec.hyper.entropy_bottleneck"
#: default decoding of imported models (the paper's settings; the official test scripts use
#: 65 steps for X and 200 for ε, both with γ = 0.8)
DECODE_STEPS = {"x": 17, "epsilon": 500}


def matches(obj: Any) -> bool:
    model = state_dict_of(obj, "model") if isinstance(obj, Mapping) and "model" in obj else None
    return model is not None and any(k.startswith(("denoise_fn.", "context_fn.")) for k in model)


def _resnet(rest: str) -> str:
    """Key inside CDC's ResnetBlock (`Block`s with a `block` Sequential, time `mlp`) -> ours."""
    return re.sub(r"^block([12])\.block\.", r"block\1.", rest).replace("mlp.", "time_mlp.", 1)


def _attention(rest: str) -> str:
    """Key inside Residual(PreNorm(LinearAttention)) -> inside our AttentionBlock."""
    return rest.replace("fn.fn.", "attn.", 1).replace("fn.norm.", "norm.", 1)


#: official key patterns (named groups) -> this repository's key
_RULES: list[Rule] = [
    (r"denoise_fn\.time_mlp\.([02]\.(?:weight|bias))", r"unet.time_mlp.\1"),
    (
        r"denoise_fn\.(?P<side>downs|ups)\.(?P<i>\d+)\.(?P<j>[01])\.(?P<rest>.+)",
        lambda m: f"unet.{m['side']}.{m['i']}.res{int(m['j']) + 1}.{_resnet(m['rest'])}",
    ),
    (
        r"denoise_fn\.(?P<side>downs|ups)\.(?P<i>\d+)\.2\.(?P<rest>.+)",
        lambda m: f"unet.{m['side']}.{m['i']}.attn.{_attention(m['rest'])}",
    ),
    (r"denoise_fn\.downs\.(\d+)\.3\.conv\.(weight|bias)", r"unet.downs.\1.down.\2"),
    (r"denoise_fn\.ups\.(\d+)\.3\.conv\.(weight|bias)", r"unet.ups.\1.up.\2"),
    (
        r"denoise_fn\.mid_block(?P<j>[12])\.(?P<rest>.+)",
        lambda m: f"unet.mid_res{m['j']}.{_resnet(m['rest'])}",
    ),
    (r"denoise_fn\.mid_attn\.(?P<rest>.+)", lambda m: f"unet.mid_attn.{_attention(m['rest'])}"),
    (r"denoise_fn\.final_conv\.0\.(g|b)", r"unet.final.0.\1"),
    (r"denoise_fn\.final_conv\.1\.(weight|bias)", r"unet.final.1.\1"),
    # compressor; the ε tree has an Identity (VBR slot) at index 1 of each stage
    (
        r"context_fn\.enc\.(?P<i>\d+)\.0\.(?P<rest>.+)",
        lambda m: f"compressor.g_a.{2 * int(m['i'])}.{_resnet(m['rest'])}",
    ),
    (
        r"context_fn\.enc\.(?P<i>\d+)\.[12]\.conv\.(?P<rest>weight|bias)",
        lambda m: f"compressor.g_a.{2 * int(m['i']) + 1}.{m['rest']}",
    ),
    (
        r"context_fn\.dec\.(?P<i>\d+)\.0\.(?P<rest>.+)",
        lambda m: f"compressor.context_decoder.{m['i']}.0.{_resnet(m['rest'])}",
    ),
    (
        r"context_fn\.dec\.(\d+)\.[12]\.conv\.(weight|bias)",
        r"compressor.context_decoder.\1.1.\2",
    ),
    (
        r"context_fn\.hyper_(?P<side>enc|dec)\.(?P<i>\d+)\.0\.(?P<rest>weight|bias)",
        lambda m: (
            f"compressor.latent_codec.hyper.h_{'a' if m['side'] == 'enc' else 's'}"
            f".{2 * int(m['i'])}.{m['rest']}"
        ),
    ),
    (r"context_fn\.prior\.affine\.(\d+)\.weight", rf"{_EB}.matrices.\1"),
    (r"context_fn\.prior\.affine\.(\d+)\.bias", rf"{_EB}.biases.\1"),
    (r"context_fn\.prior\.a\.(\d+)", rf"{_EB}.factors.\1"),
    (r"context_fn\.prior\._medians", "medians"),
]


def map_state(official: Mapping[str, Tensor], latent_channels: int) -> dict[str, Tensor]:
    """Official GaussianDiffusion state -> this repository's CDCModule keys (weights only;
    the lower/upper quantiles are left to `solve_tail_quantiles`)."""
    kept = {
        k: v
        for k, v in official.items()
        if not any(re.fullmatch(pattern, k) for pattern in _DROPPED)
    }
    mapped, unknown = rename(kept, _RULES)
    refuse_unknown(unknown, "CDC")
    medians = mapped.pop("medians", None)
    if medians is None:
        raise OfficialCheckpointError("the CDC file lacks context_fn.prior._medians")
    for key in [k for k in mapped if k.startswith(f"{_EB}.")]:
        value = mapped[key]
        if ".matrices." in key:  # (C,1,1,in,out) -> (C,out,in)
            mapped[key] = value[:, 0, 0].transpose(-1, -2)
        else:  # biases, factors: (C,1,1,1,out) -> (C,out,1)
            mapped[key] = value[:, 0, 0, 0].unsqueeze(-1)
    # a placeholder lower/upper (median ∓ 10, CompressAI's initial spread) until solved
    median = medians.reshape(-1, 1, 1)
    mapped[f"{_EB}.quantiles"] = torch.cat((median - 10, median, median + 10), dim=-1)
    # (mean, scale) -> (scales, means): swap the halves of the hyper-decoder's last conv
    last = max(
        (k for k in mapped if k.startswith("compressor.latent_codec.hyper.h_s.")),
        key=lambda k: int(k.split(".")[4]),
    )
    for key in (last, last.replace(".weight", ".bias")):
        value = mapped[key]
        if value.shape[0] != 2 * latent_channels:
            raise OfficialCheckpointError(
                f"{key}: the hyper-decoder outputs {value.shape[0]} channels, expected "
                f"2 × {latent_channels}; the width options do not match the file"
            )
        mapped[key] = torch.cat((value[latent_channels:], value[:latent_channels]))
    return mapped


def solve_tail_quantiles(bottleneck: EntropyBottleneck) -> None:
    """Set the lower and upper quantiles of `bottleneck` where its learned CDF reaches
    tail_mass/2 and 1 − tail_mass/2 (bisection on the logits), keeping the medians.

    CompressAI fits these with its aux loss during training (or all three with
    `update(update_quantiles=True)`); CDC trained only the median, around which its
    hyper-decoder input was rounded, so that one must stay.
    """
    shape = (bottleneck.channels, 1, 1)
    radius = 1e5
    low = torch.full(shape, -radius, dtype=bottleneck.quantiles.dtype)
    high = torch.full(shape, radius, dtype=bottleneck.quantiles.dtype)

    def logits(y: Tensor) -> Tensor:
        return bottleneck._logits_cumulative(y, stop_gradient=True)

    with torch.no_grad():
        for i in (0, 2):  # the targets ∓log(2/tail_mass − 1)
            # CompressAI's bisection of `_update_quantiles`, one quantile at a time
            solved = EntropyBottleneck._search_target(logits, bottleneck.target[i], low, high)
            bottleneck.quantiles[:, :, i] = solved[:, :, 0]


def convert(
    obj: Mapping[str, Any],
    name: str,
    weights: str | None = None,
    dim: int = 64,
    dim_mults: Sequence[int] = (1, 2, 3, 4, 5, 6),
    compressor_dim: int = 64,
    rho: float | None = None,
    decode_steps: int | None = None,
    decode_gamma: float | None = None,
    eps_sampler: str = "official",
    weights_dir: str | None = "weights",
) -> CDCModule:
    """The CDCModule of an official CDC file.

    `weights`: "ema" or "model" (default: the EMA weights when the file has them, as the X
    test script; "model" for ε). `rho` defaults to 0.9 when the file carries LPIPS weights
    (the official ρ > 0 runs) and 0 otherwise; decoding defaults to `DECODE_STEPS` and
    γ = 0.8 for ρ > 0 (the paper's perceptual setting), deterministic for ρ = 0. ε-models
    decode with the official sampler convention unless `eps_sampler="matched"`.
    """
    model = state_dict_of(obj, "model")
    prediction = "x" if "train_snr" in model else "epsilon"
    if weights is None:
        weights = "ema" if prediction == "x" and "ema" in obj else "model"
    if weights == "ema":
        ema = state_dict_of(obj, "ema")
        if ema is None:
            raise OfficialCheckpointError(f"{name} has no EMA weights ('ema')")
        state = {
            k.removeprefix("ema_model."): v for k, v in ema.items() if k.startswith("ema_model.")
        }
        if not state:
            raise OfficialCheckpointError(f"{name}: 'ema' holds no ema_model.* weights")
    elif weights == "model":
        state = model
    else:
        raise OfficialCheckpointError(f"weights must be 'ema' or 'model', got {weights!r}")
    _check_schedule(state, prediction, name)
    if rho is None:
        rho = 0.9 if any(k.startswith("loss_fn_vgg.") for k in state) else 0.0
    codec = CDCModule(
        prediction=prediction,
        rho=rho,
        warmup_steps=0,
        dim=dim,
        dim_mults=tuple(dim_mults),
        compressor_dim=compressor_dim,
        decode_steps=decode_steps or DECODE_STEPS[prediction],
        decode_gamma=(0.8 if rho > 0 else 0.0) if decode_gamma is None else decode_gamma,
        eps_sampler=eps_sampler,
        weights_dir=weights_dir,
    )
    latent_channels = compressor_dim * 4
    load_mapped(codec, map_state(state, latent_channels), derived=[f"{_EB}.quantiles"])
    solve_tail_quantiles(codec.compressor.latent_codec["hyper"].entropy_bottleneck)
    return codec


def _check_schedule(state: Mapping[str, Tensor], prediction: str, name: str) -> None:
    """The file's ᾱ table must be the one this repository uses for `prediction`."""
    table = state.get("train_alphas_cumprod")
    if table is None:
        raise OfficialCheckpointError(f"{name} lacks the schedule buffer train_alphas_cumprod")
    schedule, steps, _ = VARIANTS[prediction]
    expected = make_alphas_cumprod(schedule, steps)
    if table.numel() != steps or not torch.allclose(table.double(), expected, atol=1e-6):
        raise OfficialCheckpointError(
            f"{name}: its {table.numel()}-step schedule is not CDC's {prediction}-model "
            f"schedule ({schedule}, N = {steps})"
        )

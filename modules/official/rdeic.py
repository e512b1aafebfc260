"""RDEIC (huai-chang/RDEIC; the released "compression and control module" files, e.g.
`rdeic_2_step2.ckpt`, from the Google Drive folder linked in its README).

The file is a Lightning checkpoint whose "state_dict" holds, in the original LDM naming,
`preprocess_model.*` (the compression module, `model/compression.py`) and `control_model.*`
(`NoiseEstimator`: the control branch `control_model.control_model.*`, its 25 zero convolutions
and a `scale_list` buffer). The official loader merges it over the SD 2.1
`v2-1_512-ema-pruned.ckpt` with `strict=False`; here SD comes from the diffusers folder of
`backbone`, and any SD, VAE, text-encoder, LPIPS or schedule entry of the file is checked to be
one and skipped; every other key must map.

Maps beyond renaming:
    context model: the official SCCTX has separate anchor (`entropy_parameters_anchor`) and
        non-anchor (`entropy_parameters_nonanchor`) networks: imported models use
        `context="official"` (`anchor_param_aggregation` / `param_aggregation`).
    VQ: `quantize.embedding` -> `vq.codebook`, `quantize.embed_prob` (the usage EMA) ->
        `vq.usage`.
    control branch: ldm `ResBlock`s and `SpatialTransformer`s -> diffusers `ResnetBlock2D` and
        `Transformer2DModel` (ldm input block n -> down block and layer), the zero
        convolutions -> `encoder_out`, `middle_out`, `decoder_out`; `scale_list` must be all
        ones (control_scale 1, as every released model).
λ and the fixed step count are not in the file: they come from the released name
`rdeic_<λ>_step<2|5>.ckpt` or the options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modules.nets.rdeic_compressor import StridedResidualBlock, SubpelResidualBlock
from modules.rdeic import RDEICModule

from . import OfficialCheckpointError, load_mapped, refuse_unknown, rename, state_dict_of

EXPECTED = "a Lightning checkpoint with preprocess_model.* and control_model.* weights"
#: file entries of the frozen parts and the LDM schedule that the official checkpoint may carry
_FROZEN = (
    r"model\.diffusion_model\..+",
    r"model_ema\..+",
    r"first_stage_model\..+",
    r"cond_stage_model\..+",
    r"perceptual_loss\..+",
    r"(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
    r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
    r"|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef[12]|logvar"
    r"|scale_factor|cond_ids)",
)
#: entropy-model buffers of the official GaussianConditional: tables rebuilt by update(), bounds
#: that must equal this repository's
_TABLES = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")
_NAME = re.compile(r"rdeic_(?P<lmbda>\d+(?:\.\d+)?)_step(?P<steps>\d+)")


def matches(obj: Any) -> bool:
    state = state_dict_of(obj, "state_dict")
    return state is not None and any(k.startswith("preprocess_model.") for k in state)


def _block(module: nn.Module, rest: str) -> str:
    """Key inside an official residual block -> inside this repository's block `module`."""
    if isinstance(module, StridedResidualBlock):  # conv1, conv2, downsample
        names = {"conv1": "body.0", "conv2": "body.2", "downsample": "skip"}
    elif isinstance(module, SubpelResidualBlock):  # subpel_conv.0, conv, upsample.0
        names = {"subpel_conv.0": "body.0", "conv": "body.3", "upsample.0": "skip.0"}
    else:  # CompressAI's ResidualBlock: conv1, conv2, skip (official: adaptor); or a conv
        names = {"conv1": "conv1", "conv2": "conv2", "adaptor": "skip"}
    head, _, tail = rest.rpartition(".")
    if head and head not in names:
        raise OfficialCheckpointError(f"unknown RDEIC block key {rest!r}")
    return f"{names[head]}.{tail}" if head else rest


def map_compressor(official: Mapping[str, Tensor], compressor: nn.Module) -> dict[str, Tensor]:
    """`preprocess_model.*` (prefix removed) -> `RDEICCompressor(context="official")` keys."""
    bounds = dict(compressor.latent_codec.gaussian_conditional.named_buffers())
    state = {}
    for key, value in official.items():
        if key.startswith("gaussian_conditional."):
            name = key.removeprefix("gaussian_conditional.")
            if name in _TABLES:
                continue
            if name not in bounds or not torch.allclose(value.float(), bounds[name].float()):
                raise OfficialCheckpointError(
                    f"preprocess_model.{key} = {value.tolist()} differs from this repository's "
                    f"GaussianConditional ({bounds.get(name)})"
                )
            continue
        state[key] = value

    #: official Sequential -> this repository's name
    sequences = {
        "encoder.g_a": "g_a",
        "hyper_enc.hyper_enc": "h_a",
        "hyper_dec.hyper_dec": "h_s",
        "decoder.g_s": "g_s",
    }

    def block(m: re.Match) -> str:
        name = sequences[m["seq"]]
        module = getattr(compressor, name)[int(m["i"])]
        return f"{name}.{m['i']}.{_block(module, m['rest'])}"

    codec = "latent_codec"
    rules = [
        (r"(?P<seq>encoder\.g_a|hyper_enc\.hyper_enc|hyper_dec\.hyper_dec|decoder\.g_s)"
         r"\.(?P<i>\d+)\.(?P<rest>.+)", block),
        (r"out\.(weight|bias)", r"out.\1"),
        (r"local_context\.(\d+)\.(weight|bias)", rf"{codec}.spatial_context.\1.\2"),
        (r"channel_context\.(\d+)\.fushion\.(\d)\.(weight|bias)",
         rf"{codec}.channel_context.y\1.\2.\3"),
        (r"entropy_parameters_anchor\.(\d+)\.fusion\.(\d)\.(weight|bias)",
         rf"{codec}.anchor_param_aggregation.\1.\2.\3"),
        (r"entropy_parameters_nonanchor\.(\d+)\.fusion\.(\d)\.(weight|bias)",
         rf"{codec}.param_aggregation.\1.\2.\3"),
        (r"quantize\.embedding\.weight", "vq.codebook.weight"),
        (r"quantize\.embed_prob", "vq.usage"),
    ]  # fmt: skip
    mapped, unknown = rename(state, rules)
    refuse_unknown([f"preprocess_model.{k}" for k in unknown], "RDEIC")
    return mapped


def _ldm_resnet(rest: str) -> str:
    """Key inside an ldm ResBlock -> inside a diffusers ResnetBlock2D."""
    names = {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    }
    head, _, tail = rest.rpartition(".")
    if head not in names:
        raise OfficialCheckpointError(f"unknown ldm ResBlock key {rest!r}")
    return f"{names[head]}.{tail}"


def map_control(
    official: Mapping[str, Tensor], layers_per_block: int, levels: int
) -> dict[str, Tensor]:
    """`control_model.*` (prefix removed) of the official NoiseEstimator -> `ControlModule` keys
    for an SD UNet of `levels` levels with `layers_per_block` resnets each."""
    state = dict(official)
    scale = state.pop("scale_list", None)
    if scale is not None and not torch.all(scale == 1):
        raise OfficialCheckpointError(
            f"control_model.scale_list is {scale.tolist()}; only control_scale 1 is supported"
        )
    per_level = layers_per_block + 1

    def input_block(m: re.Match) -> str:
        n, layer, rest = int(m["n"]), int(m["layer"]), m["rest"]
        level, j = divmod(n - 1, per_level)
        if j == layers_per_block:  # the level's downsampler (ldm Downsample.op)
            if level >= levels - 1 or not rest.startswith("op."):
                raise OfficialCheckpointError(f"unexpected control input block key {m[0]!r}")
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        if layer == 0:
            return f"down_blocks.{level}.resnets.{j}.{_ldm_resnet(rest)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"

    def middle_block(m: re.Match) -> str:
        layer, rest = int(m["layer"]), m["rest"]
        if layer == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{layer // 2}.{_ldm_resnet(rest)}"

    rules = [
        (r"control_model\.time_embed\.([02])\.(weight|bias)",
         lambda m: f"time_embedding.linear_{int(m[1]) // 2 + 1}.{m[2]}"),
        (r"control_model\.input_blocks\.0\.0\.(?P<rest>weight|bias)",
         lambda m: f"conv_in.{m['rest']}"),
        (r"control_model\.input_blocks\.(?P<n>[1-9]\d*)\.(?P<layer>[01])\.(?P<rest>.+)",
         input_block),
        (r"control_model\.middle_block\.(?P<layer>[012])\.(?P<rest>.+)", middle_block),
        (r"enc_zero_convs_out\.(\d+)\.0\.(weight|bias)", r"encoder_out.\1.\2"),
        (r"middle_block_out\.0\.(weight|bias)", r"middle_out.\1"),
        (r"dec_zero_convs_out\.(\d+)\.0\.(weight|bias)", r"decoder_out.\1.\2"),
    ]  # fmt: skip
    mapped, unknown = rename(state, rules)
    refuse_unknown([f"control_model.{k}" for k in unknown], "RDEIC")
    return mapped


def map_state(
    official: Mapping[str, Tensor], compressor: nn.Module, unet_config: Mapping[str, Any]
) -> dict[str, Tensor]:
    """The official state dict -> `RDEICModule(context="official")` keys (`compressor.*`,
    `control.*`); frozen and schedule entries are skipped, anything else unknown refused."""
    parts: dict[str, dict[str, Tensor]] = {"preprocess_model.": {}, "control_model.": {}}
    unknown = []
    for key, value in official.items():
        prefix = next((p for p in parts if key.startswith(p)), None)
        if prefix is not None:
            parts[prefix][key.removeprefix(prefix)] = value
        elif not any(re.fullmatch(pattern, key) for pattern in _FROZEN):
            unknown.append(key)
    refuse_unknown(unknown, "RDEIC")
    if not parts["control_model."]:
        raise OfficialCheckpointError("the RDEIC file has no control_model.* weights")
    compressor_state = map_compressor(parts["preprocess_model."], compressor)
    control_state = map_control(
        parts["control_model."],
        int(unet_config["layers_per_block"]),
        len(unet_config["block_out_channels"]),
    )
    return {
        **{f"compressor.{k}": v for k, v in compressor_state.items()},
        **{f"control.{k}": v for k, v in control_state.items()},
    }


def rate_point(name: str) -> tuple[float | None, int | None]:
    """(λ, fixed steps) read from a released name `rdeic_<λ>_step<n>.ckpt`, else (None, None)."""
    match = _NAME.search(name)
    if match is None:
        return None, None
    return float(match["lmbda"]), int(match["steps"])


def convert(
    obj: Mapping[str, Any],
    name: str,
    lmbda: float | None = None,
    fixed_steps: int | None = None,
    backbone: Mapping[str, Any] | None = None,
    channels: int = 256,
    groups: Sequence[int] = (8, 8, 8, 8, 16, 16, 32, 32, 64, 64),
    num_codes: int = 16384,
    hint_channels: int = 256,
    control_ratio: float = 0.2,
    weights_dir: str | None = "weights",
) -> RDEICModule:
    """The RDEICModule (`context="official"`) of an official RDEIC file.

    `backbone` is the `load_backbone` config (default: SD 2.1-base at
    weights/stable-diffusion-2-1-base); λ and the fixed step count default to the released
    file name. The result is a finished stage-2 model (`initial_steps = stage1_steps = 0`),
    decoding with `fixed_steps` steps.
    """
    named_lmbda, named_steps = rate_point(name)
    lmbda = named_lmbda if lmbda is None else lmbda
    fixed_steps = named_steps if fixed_steps is None else fixed_steps
    if lmbda is None or fixed_steps is None:
        raise OfficialCheckpointError(
            f"{name} is not named rdeic_<λ>_step<n>.ckpt: give λ (--lmbda: 2, 1, 0.5, 0.25 or "
            "0.1) and the fine-tuning steps (--fixed-steps: 2 or 5)"
        )
    codec = RDEICModule(
        lmbda=lmbda,
        backbone=dict(
            backbone or {"name": "sd21_base", "path": "weights/stable-diffusion-2-1-base"}
        ),
        channels=channels,
        groups=tuple(groups),
        num_codes=num_codes,
        hint_channels=hint_channels,
        context="official",
        control_ratio=control_ratio,
        initial_steps=0,
        stage1_steps=0,
        fixed_steps=fixed_steps,
        weights_dir=weights_dir,
    )
    state = state_dict_of(obj, "state_dict")
    load_mapped(codec, map_state(state, codec.compressor, codec.backbone.unet.config))
    return codec

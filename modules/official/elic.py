"""The ELiC re-implementation (VincentChandelier/ELiC-ReImplemetation; λ ∈ {0.45, 0.15, 0.032,
0.016, 0.008, 0.004}, Google Drive links in its README), the checkpoints CorrDiff starts from.

A file is the state dict of its `TestModel` (CompressAI 1.1.5 naming: `entropy_bottleneck.
_matrix{i}`, `_bias{i}`, `_factor{i}`), as `updata.py` writes it, or a training checkpoint
holding it under "state_dict" (DataParallel "module." prefixes are removed). `TestModel` is the
layout CompressAI later added as `Elic2022Chandelier`: imported models use
`ELICModule(variant="chandelier")`.

Key map: `g_a`, `g_s` unchanged; `h_a`, `h_s`, `entropy_bottleneck` -> `latent_codec.hyper.*`;
`cc_transforms.{k-1}` -> `latent_codec.y.channel_context.y{k}`; `context_prediction.k` ->
`spatial_context.k` (CompressAI's CheckerboardMaskedConv2d, which zeroes the masked weights
before every use as the official one does); `ParamAggregation.k` -> `param_aggregation.k` (both
chunk (means, scales)). The coder
tables are rebuilt; bounds, quantile targets and checkerboard masks must equal this
repository's. λ is not in the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modules.elic import ELICModule

from . import OfficialCheckpointError, load_mapped, refuse_unknown, rename, state_dict_of

EXPECTED = "a TestModel state dict with g_a.*, cc_transforms.* and ParamAggregation.* keys"
_HYPER = "latent_codec.hyper"
_EB = f"{_HYPER}.entropy_bottleneck"
_Y = "latent_codec.y"
#: buffers the official file has and this repository recomputes (coder tables) or must equal
_TABLES = ("_offset", "_quantized_cdf", "_cdf_length", "scale_table")
_CHECKED = ("target", "scale_bound", "likelihood_lower_bound.bound", "lower_bound_scale.bound")


def matches(obj: Any) -> bool:
    state = state_dict_of(obj, "state_dict", "network")
    return (
        state is not None
        and "g_a.0.weight" in state
        and any(k.startswith("ParamAggregation.") for k in state)
    )


_RULES = [
    (r"(g_a|g_s)\.(.+)", r"\1.\2"),
    (r"(h_a|h_s)\.(.+)", rf"{_HYPER}.\1.\2"),
    # CompressAI 1.1.x: _matrix{i}; older releases: _matrices.{i}; 1.2.8: matrices.{i}
    *[
        (rf"entropy_bottleneck\.(?:_{old}|_?{new}\.)(\d+)", rf"{_EB}.{new}.\1")
        for old, new in (("matrix", "matrices"), ("bias", "biases"), ("factor", "factors"))
    ],
    (r"entropy_bottleneck\.quantiles", f"{_EB}.quantiles"),
    (r"cc_transforms\.(\d+)\.(.+)", lambda m: f"{_Y}.channel_context.y{int(m[1]) + 1}.{m[2]}"),
    (r"context_prediction\.(\d+)\.(weight|bias)", rf"{_Y}.spatial_context.\1.\2"),
    (r"ParamAggregation\.(\d+)\.(.+)", rf"{_Y}.param_aggregation.\1.\2"),
]  # fmt: skip


def map_state(official: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The official TestModel state -> `ELICModule(variant="chandelier")` keys."""
    ours = model.state_dict()
    state, masks = {}, {}
    for key, value in official.items():
        module, _, name = key.partition(".")
        if module in ("entropy_bottleneck", "gaussian_conditional") and (
            name in _TABLES or name in _CHECKED
        ):
            if name in _CHECKED:
                target = ours[f"{_HYPER if module == 'entropy_bottleneck' else _Y}.{key}"]
                if value.shape != target.shape or not torch.allclose(value, target):
                    raise OfficialCheckpointError(
                        f"{key} = {value.tolist()} differs from this repository's "
                        f"{target.tolist()}"
                    )
            continue
        match = re.fullmatch(r"context_prediction\.(\d+)\.mask", key)
        if match:
            masks[int(match[1])] = value
            continue
        state[key] = value
    mapped, unknown = rename(state, _RULES)
    refuse_unknown(unknown, "ELIC")
    for k, mask in masks.items():
        key = f"{_Y}.spatial_context.{k}.mask"
        if key not in ours or not torch.equal(mask.to(ours[key].dtype), ours[key]):
            raise OfficialCheckpointError(
                f"context_prediction.{k}.mask is not this repository's checkerboard mask"
            )
    return mapped


def convert(
    obj: Mapping[str, Any],
    name: str,
    lmbda: float | None = None,
    N: int = 192,
    M: int = 320,
    groups: Sequence[int] = (16, 16, 32, 64, 192),
) -> ELICModule:
    """The ELICModule (`variant="chandelier"`) of an official ELiC re-implementation file."""
    if lmbda is None:
        raise OfficialCheckpointError(
            f"{name} does not record λ: give the λ of its release (--lmbda: 0.45, 0.15, 0.032, "
            "0.016, 0.008 or 0.004)"
        )
    codec = ELICModule(lmbda=lmbda, N=N, M=M, groups=tuple(groups), variant="chandelier")
    state = state_dict_of(obj, "state_dict", "network")
    # the spatial-context masks are buffers of the model: they come with it, not the file
    masks = [k for k in codec.state_dict() if k.endswith(".mask")]
    load_mapped(codec, map_state(state, codec), derived=masks)
    return codec

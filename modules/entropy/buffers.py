"""Loading of entropy-coder tables whose size depends on `update()`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn


def resize_entropy_buffers(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = ""):
    """Resize the CDF tables and scale tables of every CompressAI entropy model in `module` to
    the shapes in `state_dict`, so that an updated checkpoint loads into a fresh model.

    nn.Module cannot load a buffer of another size; CompressAI resizes them only inside
    `CompressionModel.load_state_dict`, which plain modules and LightningModules lack.
    """
    for name, submodule in module.named_modules():
        if not isinstance(submodule, EntropyBottleneck | GaussianConditional):
            continue
        for buffer_name, buffer in submodule.named_buffers(recurse=False):
            incoming = state_dict.get(f"{prefix}{name}{'.' if name else ''}{buffer_name}")
            if incoming is not None and incoming.shape != buffer.shape:
                buffer.resize_(incoming.shape)


def resize_entropy_buffers_hook(
    module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str, *args: Any
) -> None:
    """`register_load_state_dict_pre_hook` form of `resize_entropy_buffers`."""
    resize_entropy_buffers(module, state_dict, prefix)

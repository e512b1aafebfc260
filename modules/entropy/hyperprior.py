"""Hyperprior latent codecs: CompressAI's composition, run in fp32 with autocast disabled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from torch import Tensor, nn

from .buffers import resize_entropy_buffers_hook
from .precision import entropy_fp32


class HyperpriorCodec(HyperpriorLatentCodec):
    """CompressAI's `HyperpriorLatentCodec` (z -> h_s params -> y codec) with its whole
    entropy-parameter path in fp32, identically in forward, compress and decompress.

    `latent_codec = {"y": <codec of y given params>, "hyper": HyperLatentCodec(...)}`; the y
    codec can be a `GaussianConditionalLatentCodec` (mean-scale hyperprior) or a context model
    such as `SpaceChannelContextCodec`.
    """

    def __init__(self, latent_codec: dict[str, nn.Module], **kwargs: Any) -> None:
        super().__init__(latent_codec, **kwargs)
        self.register_load_state_dict_pre_hook(resize_entropy_buffers_hook)

    def forward(self, y: Tensor) -> dict[str, Any]:
        with entropy_fp32(y.device.type):
            return super().forward(y.float())

    def compress(self, y: Tensor) -> dict[str, Any]:
        with entropy_fp32(y.device.type):
            return super().compress(y.float())

    def decompress(
        self, strings: list[list[bytes]], shape: dict[str, tuple[int, ...]], **kwargs: Any
    ) -> dict[str, Any]:
        device_type = next(self.parameters()).device.type
        with entropy_fp32(device_type):
            return super().decompress(strings, shape, **kwargs)


def mean_scale_hyperprior(
    h_a: nn.Module,
    h_s: nn.Module,
    z_channels: int,
    entropy_bottleneck_filters: Sequence[int] = (3, 3, 3, 3),
    scale_bound: float = 0.11,
) -> HyperpriorCodec:
    """Mean-scale hyperprior (Minnen et al. 2018): z = h_a(y) coded with an EntropyBottleneck,
    h_s(ẑ) -> (scales, means) of a GaussianConditional for y.

    `h_s` must output 2·C channels for a C-channel y, chunked as (scales, means). Both latents
    are quantized with the straight-through estimator around their medians/means for the
    reconstruction and with additive noise for the training rate, as in CompressAI.
    """
    return HyperpriorCodec(
        latent_codec={
            "y": GaussianConditionalLatentCodec(quantizer="ste", scale_bound=scale_bound),
            "hyper": HyperLatentCodec(
                EntropyBottleneck(z_channels, filters=tuple(entropy_bottleneck_filters)),
                h_a=h_a,
                h_s=h_s,
                quantizer="ste",
            ),
        }
    )

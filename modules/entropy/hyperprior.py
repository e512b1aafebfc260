"""Hyperprior latent codecs: CompressAI's composition, run in fp32 with autocast disabled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from torch import Tensor, nn

from .bitstream import BitstreamError
from .buffers import resize_entropy_buffers_hook
from .precision import entropy_fp32
from .rans import decoder_input


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
        """CompressAI's decompress, with every string checked and padded for the C++ decoder
        (`modules.entropy.rans`): a crafted string is a BitstreamError or decodes to garbage."""
        *y_strings_, z_strings = strings
        if not y_strings_ or any(len(y) != len(z_strings) for y in y_strings_):
            raise BitstreamError(
                f"expected y strings and z strings per batch item, got {len(strings)} lists"
            )
        hyper, y_codec = self.latent_codec["hyper"], self.latent_codec["y"]
        z_symbols = hyper.entropy_bottleneck.channels * math.prod(shape["hyper"])
        z_strings = [decoder_input(s, z_symbols, "the hyper-latent z") for s in z_strings]
        device_type = next(self.parameters()).device.type
        with entropy_fp32(device_type):
            params = hyper.decompress([z_strings], shape["hyper"])["params"]
            if isinstance(y_codec, GaussianConditionalLatentCodec):  # else the codec checks
                # an upper bound of y's symbols: params hold (scales, means) per channel
                y_symbols = params.shape[1] * math.prod(shape["y"])
                y_strings_ = [
                    [decoder_input(s, y_symbols, "the latent y") for s in y_strings]
                    for y_strings in y_strings_
                ]
            y_out = y_codec.decompress(y_strings_, shape["y"], params)
        return {"y_hat": y_out["y_hat"]}


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

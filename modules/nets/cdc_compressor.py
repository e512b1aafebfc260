"""The compressor of CDC (Yang & Mandt, NeurIPS 2023): a ResNet analysis transform, a
mean-scale hyperprior and a multi-scale context decoder that conditions the U-Net."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from torch import Tensor, nn

from modules.entropy import mean_scale_hyperprior

from .cdc_unet import ResnetBlock


class CDCCompressor(nn.Module):
    """x -> y = g_a(x) -> hyperprior-coded ŷ -> context maps for the U-Net, finest first.

    y has ``dim * dim_mults[-1]`` channels at H/16 (for four levels) and z ``dim * hyper_mult``
    channels at H/64, so H and W must be multiples of 64 for the defaults. The context decoder
    upsamples ŷ through ``dim * reverse_dim_mults[1:]`` channels to ``out_channels`` at full
    resolution; `context_channels` lists the widths of the returned maps, finest first.
    """

    def __init__(
        self,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 3, 4),
        reverse_dim_mults: Sequence[int] = (4, 3, 2, 1),
        hyper_mult: int = 4,
        channels: int = 3,
        out_channels: int = 64,
    ) -> None:
        super().__init__()
        latent = dim * dim_mults[-1]
        if dim * reverse_dim_mults[0] != latent:
            raise ValueError(
                f"reverse_dim_mults[0] ({reverse_dim_mults[0]}) must give the latent width "
                f"dim * dim_mults[-1] = {latent}"
            )
        hyper = dim * hyper_mult

        enc_dims = [channels, *(dim * mult for mult in dim_mults)]
        self.g_a = nn.Sequential(
            *(
                layer
                for i, (c_in, c_out) in enumerate(pairwise(enc_dims))
                for layer in (
                    ResnetBlock(c_in, c_out, kernel_size=7 if i == 0 else 3),
                    nn.Conv2d(c_out, c_out, 3, stride=2, padding=1),
                )
            )
        )

        h_a = nn.Sequential(
            nn.Conv2d(latent, hyper, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hyper, hyper, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hyper, hyper, 5, stride=2, padding=2),
        )
        h_s = nn.Sequential(
            nn.ConvTranspose2d(hyper, hyper, 5, stride=2, padding=2, output_padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(hyper, hyper, 5, stride=2, padding=2, output_padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hyper, 2 * latent, 3, padding=1),
        )
        self.latent_codec = mean_scale_hyperprior(
            h_a, h_s, z_channels=hyper, entropy_bottleneck_filters=(3, 3, 3), scale_bound=0.1
        )

        dec_dims = [*(dim * mult for mult in reverse_dim_mults), out_channels]
        stages = []
        for j, (c_in, c_out) in enumerate(pairwise(dec_dims)):
            # as in the official model, the last stage changes the width in its upsampling
            width = c_out if j < len(dec_dims) - 2 else c_in
            stages.append(
                nn.Sequential(
                    ResnetBlock(c_in, width),
                    nn.ConvTranspose2d(width, c_out, 4, stride=2, padding=1),
                )
            )
        self.context_decoder = nn.ModuleList(stages)
        self.context_channels: tuple[int, ...] = tuple(reversed(dec_dims[1:]))

    def decode_context(self, y_hat: Tensor) -> list[Tensor]:
        """The context maps from ŷ: the output of every upsampling stage, finest first."""
        maps = []
        x = y_hat
        for stage in self.context_decoder:
            x = stage(x)
            maps.append(x)
        return maps[::-1]

    def forward(self, x: Tensor) -> dict[str, Any]:
        """Training/evaluation pass: ŷ (straight-through rounding), the likelihoods of y and z
        (additive noise in training mode) and the context maps decoded from ŷ."""
        out = self.latent_codec(self.g_a(x))
        return {
            "y_hat": out["y_hat"],
            "likelihoods": out["likelihoods"],
            "context": self.decode_context(out["y_hat"]),
        }

    def compress(self, x: Tensor) -> dict[str, Any]:
        """Entropy-code x; returns the strings [y_strings, z_strings], the latent shapes, and the
        ŷ and context maps the decoder will reconstruct from them."""
        out = self.latent_codec.compress(self.g_a(x))
        return {
            "strings": out["strings"],
            "shape": out["shape"],
            "y_hat": out["y_hat"],
            "context": self.decode_context(out["y_hat"]),
        }

    def decompress(self, strings: list[list[bytes]], shape: dict[str, Any]) -> dict[str, Any]:
        """The context maps decoded from the output of `compress`."""
        out = self.latent_codec.decompress(strings, shape)
        return {"context": self.decode_context(out["y_hat"])}

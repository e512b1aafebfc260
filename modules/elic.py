"""ELIC (He et al., CVPR 2022): the learned MSE baseline and CorrDiff's encoder/entropy model.

Networks are CompressAI's (g_a, g_s, hyperprior h_a/h_s with an EntropyBottleneck); the
space-channel context model is replaced by the shared `SpaceChannelContextCodec` (same weights,
one rANS string per image). `variant` picks the layout:
    "official"    `Elic2022Official`: the channel context of group k reads every decoded group,
                  h_s ends at 2N, parameter networks ramp from their input width to 2·g_k
    "chandelier"  `Elic2022Chandelier`, the layout of the ELiC re-implementation whose released
                  checkpoints CorrDiff starts from (`scripts/import_official.py elic`): the
                  channel context reads the first and the most recent group, h_s ends at 2M,
                  parameter networks in -> 2M -> 512 -> 2·g_k with (means, scales) outputs
A CompressAI state dict of either class loads after `ELICModule.remap_compressai_state_dict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from compressai.models import Elic2022Chandelier, Elic2022Official
from torch import Tensor

from modules.base import CodecModule, bits_per_pixel
from modules.entropy import HyperpriorCodec, SpaceChannelContextCodec

#: variant -> (CompressAI model class, what each group's channel context reads)
VARIANTS = {
    "official": (Elic2022Official, "all"),
    "chandelier": (Elic2022Chandelier, "first_and_previous"),
}


class ELICModule(CodecModule):
    """ELIC trained with CompressAI's MSE objective λ·255²·MSE + bpp."""

    method = "elic"
    num_strings, side_bytes = 2, 0  # y (space-channel context), z (hyperprior)
    #: downsampling of y (g_a) and z (h_a)
    y_stride, z_stride = 16, 64

    def __init__(
        self,
        lmbda: float,
        N: int = 192,
        M: int = 320,
        groups: Sequence[int] = (16, 16, 32, 64, 192),
        variant: str = "official",
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] = (),
        lr_gamma: float = 0.1,
        clip_grad_norm: float | None = 1.0,
    ) -> None:
        super().__init__(lr, aux_lr, weight_decay, lr_milestones, lr_gamma, clip_grad_norm)
        self.save_hyperparameters()
        if sum(groups) != M:
            raise ValueError(f"model.groups {list(groups)} must sum to model.M={M}")
        if variant not in VARIANTS:
            raise ValueError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        model_class, channel_context_input = VARIANTS[variant]
        net = model_class(N=N, M=M, groups=list(groups))
        self.g_a = net.g_a
        self.g_s = net.g_s
        y_codec = SpaceChannelContextCodec.from_compressai(
            net.latent_codec["y"], channel_context_input=channel_context_input
        )
        self.latent_codec = HyperpriorCodec(
            latent_codec={
                "y": y_codec,
                "hyper": net.latent_codec["hyper"],
            }
        )

    def forward(self, x: Tensor) -> dict[str, Any]:
        out = self.latent_codec(self.g_a(x))
        return {"x_hat": self.g_s(out["y_hat"]), "likelihoods": out["likelihoods"]}

    def likelihoods(self, x: Tensor) -> dict[str, Tensor]:
        return self.latent_codec(self.g_a(x))["likelihoods"]

    def rd_loss(self, out: dict[str, Any], x: Tensor) -> dict[str, Tensor]:
        bpp = bits_per_pixel(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        mse = F.mse_loss(out["x_hat"].float(), x.float())
        return {"loss": self.hparams.lmbda * 255**2 * mse + bpp, "bpp": bpp, "mse": mse}

    def compress_padded(self, x: Tensor) -> tuple[list[bytes], bytes]:
        out = self.latent_codec.compress(self.g_a(x))
        return [item_strings[0] for item_strings in out["strings"]], b""

    def decompress_padded(
        self, strings: Sequence[bytes], side: bytes, size: tuple[int, int]
    ) -> Tensor:
        height, width = size
        shape = {
            "y": (height // self.y_stride, width // self.y_stride),
            "hyper": (height // self.z_stride, width // self.z_stride),
        }
        out = self.latent_codec.decompress([[s] for s in strings], shape)
        return self.g_s(out["y_hat"])

    @staticmethod
    def remap_compressai_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Keys of a CompressAI `Elic2022Official` or `Elic2022Chandelier` state dict -> this
        module's keys."""
        return SpaceChannelContextCodec.remap_compressai_state_dict(state_dict, "latent_codec.y.")

"""The parameter estimator P_φ(y, λ) of the foundation-diffusion codec (Relic et al., Sec. 4.2).

From the latent y and the rate-distortion weight λ it predicts, per image, the affine
quantisation transform T(y) = a ⊙ y + b (one scale a_c > 0 and one offset b_c per latent
channel) and the fraction s ∈ [0, 1] of `max_timestep` at which the dequantised latent enters
the reverse diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn


class QuantizationParameters(NamedTuple):
    """Per image: scales a (B×C, > 0), offsets b (B×C) and timestep fraction s (B, in [0, 1])."""

    scale: Tensor
    offset: Tensor
    fraction: Tensor


class ParameterEstimator(nn.Module):
    """P_φ: fully convolutional, λ as an extra input channel, mean-pooled head.

    The body alternates stride-2 and stride-1 `kernel_size` convolutions with SiLU between them,
    one pair per entry of `widths` (the paper: "alternating downsampling and standard
    convolutional layers, increasing filter count as depth increases"); a last convolution gives
    2·C + 1 maps, mean-pooled to one scalar each (the paper's 9 parameters for C = 4). λ enters
    as ln(λ/λ_ref) broadcast to a channel (`lmbda_input="log"`; with λ_ref the geometric mean of
    the training λs it is centred and of order 1, so a trend of the loss that does not depend on
    λ moves every λ alike instead of leaking into the λ dependence) or as λ/λ_ref (`"linear"`;
    λ itself, the paper's literal wording, for λ_ref = 1).

    The paper applies no activation except a sigmoid on the timestep. Here the scalars are mapped
    to bounded ranges so that every output is a valid, fp16-representable side parameter for any
    input: a = exp(ln a_min + (ln a_max − ln a_min)·σ(·)) ∈ [a_min, a_max] (`scale_range`; a > 0
    even where σ saturates), b = β·tanh(·/β) (`offset_bound` β; the identity near 0), s = σ(·).
    The head's weights start at zero and its biases at `init_scale`, offset 0 and `init_fraction`:
    the untrained estimator is a fixed, λ-independent quantiser, so whatever depends on λ after
    training was learned.
    """

    def __init__(
        self,
        latent_channels: int = 4,
        widths: Sequence[int] = (64, 128, 256),
        kernel_size: int = 3,
        lmbda_input: str = "log",
        lmbda_reference: float = 1.0,
        scale_range: Sequence[float] = (1 / 32, 32.0),
        offset_bound: float = 8.0,
        init_scale: float = 1.0,
        init_fraction: float = 0.25,
    ) -> None:
        super().__init__()
        if lmbda_input not in ("log", "linear"):
            raise ValueError(f"lmbda_input must be 'log' or 'linear', got {lmbda_input!r}")
        low, high = (float(v) for v in scale_range)
        if not 0 < low < init_scale < high:
            raise ValueError(
                f"need 0 < scale_range[0] < init_scale < scale_range[1], got {[low, high]} "
                f"and {init_scale}"
            )
        if not 0 < init_fraction < 1 or offset_bound <= 0 or kernel_size % 2 == 0 or not widths:
            raise ValueError(
                "need 0 < init_fraction < 1, offset_bound > 0, an odd kernel_size and widths"
            )
        self.latent_channels = latent_channels
        if not lmbda_reference > 0:
            raise ValueError(f"lmbda_reference must be positive, got {lmbda_reference}")
        self.lmbda_input = lmbda_input
        self.lmbda_reference = float(lmbda_reference)
        self.offset_bound = float(offset_bound)
        self.register_buffer("log_scale_range", torch.tensor([math.log(low), math.log(high)]))
        layers: list[nn.Module] = []
        channels, pad = latent_channels + 1, kernel_size // 2
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size, stride=2, padding=pad),
                nn.SiLU(),
                nn.Conv2d(width, width, kernel_size, padding=pad),
                nn.SiLU(),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 2 * latent_channels + 1, kernel_size, padding=pad)
        nn.init.zeros_(self.head.weight)
        scale_logit = _logit((math.log(init_scale) - math.log(low)) / math.log(high / low))
        bias = [scale_logit] * latent_channels + [0.0] * latent_channels + [_logit(init_fraction)]
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor(bias))

    def forward(self, y: Tensor, lmbda: Tensor) -> QuantizationParameters:
        """y: B×C×h×w latent, lmbda: (B,) positive -> QuantizationParameters (fp32)."""
        ratio = lmbda.to(y).view(-1, 1, 1, 1) / self.lmbda_reference
        condition = ratio.log() if self.lmbda_input == "log" else ratio
        h = torch.cat([y, condition.expand(-1, 1, *y.shape[2:])], dim=1)
        raw = self.head(self.body(h)).mean(dim=(2, 3))
        c = self.latent_channels
        low, high = self.log_scale_range
        scale = torch.exp(low + (high - low) * torch.sigmoid(raw[:, :c]))
        offset = self.offset_bound * torch.tanh(raw[:, c : 2 * c] / self.offset_bound)
        return QuantizationParameters(scale, offset, torch.sigmoid(raw[:, 2 * c]))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))

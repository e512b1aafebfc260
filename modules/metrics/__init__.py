"""Image-quality metrics of the evaluation protocol, computed on 8-bit rounded images.

Every full-reference metric takes (decoded, original) as 1×3×H×W float tensors holding integer
values in [0, 255] and returns a float; `FULL_REFERENCE` maps result-column names to them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

#: MS-SSIM's five scales with an 11-px window need both sides larger than this
MS_SSIM_MIN_SIDE = 160


def quantize_8bit(x: Tensor) -> Tensor:
    """[0, 1] float image -> float image of integers 0..255 (what a PNG file would hold)."""
    return (x.clamp(0, 1) * 255).round()


def psnr(decoded: Tensor, original: Tensor) -> float:
    """PSNR in dB of one image (peak 255); inf for identical images."""
    mse = torch.mean((decoded.double() - original.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ms_ssim(decoded: Tensor, original: Tensor) -> float:
    """MS-SSIM (torchmetrics, data range 255); NaN with a warning for images too small for it."""
    if min(original.shape[-2:]) <= MS_SSIM_MIN_SIDE:
        warnings.warn(
            f"MS-SSIM needs both sides > {MS_SSIM_MIN_SIDE} px, got {tuple(original.shape[-2:])}",
            stacklevel=2,
        )
        return math.nan
    value = multiscale_structural_similarity_index_measure(
        decoded.float(), original.float(), data_range=255.0
    )
    return float(value)


FULL_REFERENCE: dict[str, Callable[[Tensor, Tensor], float]] = {
    "psnr": psnr,
    "ms_ssim": ms_ssim,
}

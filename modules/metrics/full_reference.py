"""Network-free full-reference metrics on 8-bit images: PSNR, SSIM, MS-SSIM, GMSD, VIF.

Every metric takes (decoded, original) as 1×3×H×W float tensors holding integers 0..255, on any
device, and returns a float; an image too small for a metric gives NaN with a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import piq
import pytorch_msssim
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

#: the smallest side each metric can take: SSIM's 11-px Gaussian window; MS-SSIM's window at its
#: fifth scale (sides > 160); piq's minimum for VIF's four scales; GMSD's 3×3 Prewitt filters
#: after its 2× downsampling (piq pads them and scores tinier images as near-perfect); the
#: smallest inputs LPIPS' AlexNet and VGG run on. DISTS pads its filters and takes any size.
MIN_SIDE = {"ssim": 11, "ms_ssim": 161, "vif": 41, "gmsd": 6, "lpips_alex": 32, "lpips_vgg": 16}


def quantize_8bit(x: Tensor) -> Tensor:
    """[0, 1] float image -> float image of integers 0..255 (what a PNG file would hold)."""
    return (x.clamp(0, 1) * 255).round()


def check_8bit(*images: Tensor) -> None:
    """Raise ValueError unless every image is 1×3×H×W of the same size holding integers 0..255."""
    shape = images[0].shape
    for image in images:
        if image.dim() != 4 or image.shape[:2] != (1, 3) or image.shape != shape:
            raise ValueError(
                f"expected 1×3×H×W images of one size, got {[i.shape for i in images]}"
            )
        if image.min() < 0 or image.max() > 255 or not torch.equal(image, image.round()):
            raise ValueError("expected 8-bit images (integers 0..255, see quantize_8bit)")


def _fits(metric: str, image: Tensor) -> bool:
    """Whether `image` is large enough for `metric`; warns when it is not."""
    if min(image.shape[-2:]) >= MIN_SIDE[metric]:
        return True
    warnings.warn(
        f"{metric} needs both sides >= {MIN_SIDE[metric]} px, got {tuple(image.shape[-2:])}: NaN",
        stacklevel=3,
    )
    return False


def psnr(decoded: Tensor, original: Tensor) -> float:
    """PSNR in dB of one image (peak 255); inf for identical images."""
    mse = torch.mean((decoded.double() - original.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ssim(decoded: Tensor, original: Tensor) -> float:
    """SSIM (torchmetrics, data range 255, 11-px Gaussian window of σ 1.5, fp32), averaged
    where the window fits in the image."""
    if not _fits("ssim", original):
        return math.nan
    _, ssim_map = structural_similarity_index_measure(
        decoded.float(),
        original.float(),
        sigma=1.5,
        kernel_size=11,
        data_range=255.0,
        return_full_image=True,
    )
    # torchmetrics' own mean also covers the borders, where its window reads reflect padding;
    # Wang et al.'s reference code (as skimage and piq) averages only the valid positions
    border = MIN_SIDE["ssim"] // 2
    return float(ssim_map[..., border:-border, border:-border].mean())


def ms_ssim(decoded: Tensor, original: Tensor) -> float:
    """MS-SSIM (pytorch_msssim, as CompressAI's evaluation: data range 255, five scales, 11-px
    Gaussian window of σ 1.5, fp32).

    Each scale averages only the positions where the window fits; torchmetrics' MS-SSIM also
    averages the reflect-padded borders and reads low (by 5e-4 at 768×512, more on larger and
    odd sizes).
    """
    if not _fits("ms_ssim", original):
        return math.nan
    return float(pytorch_msssim.ms_ssim(decoded.float(), original.float(), data_range=255.0))


def gmsd(decoded: Tensor, original: Tensor) -> float:
    """GMSD (piq, fp32): 0 for identical images, larger is worse."""
    if not _fits("gmsd", original):
        return math.nan
    return float(piq.gmsd(decoded.float(), original.float(), data_range=255.0))


def vif(decoded: Tensor, original: Tensor) -> float:
    """Pixel-domain VIF (piq `vif_p`, fp32) of `decoded` against the reference `original`."""
    if not _fits("vif", original):
        return math.nan
    return float(piq.vif_p(decoded.float(), original.float(), data_range=255.0))


#: result-column name -> metric, for every metric here
FULL_REFERENCE: dict[str, Callable[[Tensor, Tensor], float]] = {
    "psnr": psnr,
    "ms_ssim": ms_ssim,
    "ssim": ssim,
    "gmsd": gmsd,
    "vif": vif,
}

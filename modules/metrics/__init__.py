"""Image-quality metrics of the evaluation protocol, computed on 8-bit rounded images.

Every full-reference metric takes (decoded, original) as 1×3×H×W float tensors holding integers
0..255 and returns a float per image. `MetricSuite` computes all of them (PSNR, MS-SSIM, SSIM,
LPIPS-Alex/VGG, DISTS, GMSD, VIF, PieAPP) with networks built once, and gathers the patch
features of FID/KID, which `fid_kid` turns into the data-set scores. `FULL_REFERENCE` maps the
network-free metrics' column names to their functions.
"""

from modules.metrics.fid import extract_patches, fid_kid
from modules.metrics.full_reference import (
    FULL_REFERENCE,
    check_8bit,
    gmsd,
    ms_ssim,
    psnr,
    quantize_8bit,
    ssim,
    vif,
)
from modules.metrics.lpips import build_lpips
from modules.metrics.suite import DEFAULT_METRICS, WEIGHT_URLS, MetricSuite
from modules.metrics.weights import WeightsNotFoundError, find_weights

__all__ = [
    "DEFAULT_METRICS",
    "FULL_REFERENCE",
    "WEIGHT_URLS",
    "MetricSuite",
    "WeightsNotFoundError",
    "build_lpips",
    "check_8bit",
    "extract_patches",
    "fid_kid",
    "find_weights",
    "gmsd",
    "ms_ssim",
    "psnr",
    "quantize_8bit",
    "ssim",
    "vif",
]

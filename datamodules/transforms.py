"""Training crops and evaluation preprocessing on uint8 tensors of shape 3×H×W."""

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


def to_tensor(array: np.ndarray) -> Tensor:
    """H×W×3 uint8 array -> 3×H×W uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_float(img: Tensor) -> Tensor:
    """uint8 tensor -> float32 tensor in [0, 1]."""
    return F.to_dtype(img, torch.float32, scale=True)


def resize_to_short_side(img: Tensor, size: int) -> Tensor:
    """Resize so the shorter side is ``size`` (bicubic, antialiased; uint8 stays in 0..255)."""
    if min(img.shape[-2:]) == size:
        return img
    return F.resize(img, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def resize_to_long_side(img: Tensor, size: int) -> Tensor:
    """Resize so the longer side is ``size`` (bicubic, antialiased; uint8 stays in 0..255)."""
    height, width = img.shape[-2:]
    if max(height, width) == size:
        return img
    scale = size / max(height, width)
    shape = [round(height * scale), round(width * scale)]
    return F.resize(img, shape, interpolation=InterpolationMode.BICUBIC, antialias=True)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def train_crop(
    img: Tensor,
    crop_size: int,
    resize_short_side: tuple[int, int] | None = None,
    hflip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random ``crop_size``² crop, after an optional random short-side resize, random h-flip.

    Args:
        img: uint8 tensor 3×H×W.
        crop_size: side of the square crop.
        resize_short_side: (lo, hi): first resize the short side to a uniform integer in
            [lo, hi]; None keeps the original scale.
        hflip: flip horizontally with probability 1/2.
        generator: torch RNG; None uses the global one (seeded per DataLoader worker).

    Raises:
        ValueError: the (resized) image is smaller than the crop.
    """
    if resize_short_side is not None:
        img = resize_to_short_side(img, _randint(*resize_short_side, generator))
    height, width = img.shape[-2:]
    if height < crop_size or width < crop_size:
        raise ValueError(f"image of {width}×{height} is smaller than the crop {crop_size}²")
    top = _randint(0, height - crop_size, generator)
    left = _randint(0, width - crop_size, generator)
    img = F.crop(img, top, left, crop_size, crop_size)
    if hflip and torch.rand(1, generator=generator).item() < 0.5:
        img = F.horizontal_flip(img)
    return img


def eval_preprocess(
    img: Tensor,
    resize_short_side: int | None = None,
    center_crop: int | None = None,
    resize_long_side: int | None = None,
) -> Tensor:
    """Evaluation protocol: optional short- or long-side resize, then optional square centre
    crop.

    ``resize_short_side=768, center_crop=768`` is RDEIC's protocol for Tecnick and CLIC2020 and
    CDC's for DIV2K; CDC resizes Tecnick to 512² (configs/data/*_768, tecnick_512);
    ``resize_long_side=2048, center_crop=768`` is Relic et al.'s for CLIC2022. None skips a
    step.

    Raises:
        ValueError: both resizes are given, or the (resized) image is smaller than the crop.
    """
    if resize_short_side is not None and resize_long_side is not None:
        raise ValueError("give resize_short_side or resize_long_side, not both")
    if resize_short_side is not None:
        img = resize_to_short_side(img, resize_short_side)
    if resize_long_side is not None:
        img = resize_to_long_side(img, resize_long_side)
    if center_crop is not None:
        height, width = img.shape[-2:]
        if height < center_crop or width < center_crop:
            raise ValueError(f"image of {width}×{height} is smaller than the crop {center_crop}²")
        img = F.center_crop(img, [center_crop, center_crop])
    return img

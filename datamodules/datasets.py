"""Torch datasets: random training crops, fixed validation crops and full evaluation images.

None of them lets one unreadable file stop an epoch: bad files are skipped with a
:class:`SkippedImageWarning` that names the file and the reason.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from datamodules.io import ImageLoadError, load_rgb
from datamodules.sources import Item
from datamodules.transforms import eval_preprocess, to_float, to_tensor, train_crop


class SkippedImageWarning(UserWarning):
    """An image was left out: unreadable, or too small for the crop or evaluation protocol."""


def _skip(message: str) -> None:
    warnings.warn(message, SkippedImageWarning, stacklevel=3)


class TrainCrops(Dataset[Tensor]):
    """Random square crops in [0, 1] (float32, 3×crop×crop) of a random frame of each item.

    An item that cannot be read, or (without a resize range) is smaller than the crop, is
    skipped with a warning (once per file and worker) and the next item is used instead;
    only if no item at all works does ``__getitem__`` raise ``RuntimeError``.
    """

    def __init__(
        self,
        items: Sequence[Item],
        crop_size: int,
        resize_short_side: tuple[int, int] | None = None,
        hflip: bool = True,
    ) -> None:
        if not items:
            raise ValueError("TrainCrops needs at least one item")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if resize_short_side is not None:
            low, high = resize_short_side
            if not crop_size <= low <= high:
                raise ValueError(
                    f"resize_short_side={[low, high]} needs crop_size ({crop_size}) <= lo <= hi"
                )
            resize_short_side = (low, high)
        self.items = list(items)
        self.crop_size = crop_size
        self.resize_short_side = resize_short_side
        self.hflip = hflip
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        for offset in range(len(self.items)):
            frames = self.items[(index + offset) % len(self.items)].frames
            path = frames[int(torch.randint(len(frames), ()))] if len(frames) > 1 else frames[0]
            if path not in self._bad:
                img = self._load(path)
                if img is not None:
                    return to_float(
                        train_crop(img, self.crop_size, self.resize_short_side, self.hflip)
                    )
        raise RuntimeError(
            f"none of the {len(self.items)} training items could be used; see the warnings above"
        )

    def _load(self, path: Path) -> Tensor | None:
        """The frame as a uint8 tensor, or None (after one warning) if it cannot be used."""
        try:
            img = to_tensor(load_rgb(path))
        except ImageLoadError as error:
            self._bad.add(path)
            _skip(f"skipping training image: {error}")
            return None
        height, width = img.shape[-2:]
        if self.resize_short_side is None and min(height, width) < self.crop_size:
            self._bad.add(path)
            _skip(
                f"skipping training image {path}: {width}×{height} is smaller than the crop "
                f"{self.crop_size}²"
            )
            return None
        return img


class ValCrops(Dataset[Tensor]):
    """Centre crops in [0, 1] (float32, 3×crop×crop) of the first frame of each item.

    The crops are decoded once, at construction, and kept in memory as uint8 (validation sets
    are small); unreadable images and images smaller than the crop are skipped with a warning.
    """

    def __init__(self, items: Sequence[Item], crop_size: int) -> None:
        crops = []
        for item in items:
            try:
                img = to_tensor(load_rgb(item.frames[0]))
            except ImageLoadError as error:
                _skip(f"skipping validation image: {error}")
                continue
            height, width = img.shape[-2:]
            if min(height, width) < crop_size:
                _skip(
                    f"skipping validation image {item.frames[0]}: {width}×{height} is smaller "
                    f"than val_crop_size={crop_size}"
                )
                continue
            crops.append(F.center_crop(img, [crop_size, crop_size]).clone())
        if not crops:
            raise ValueError(
                f"none of the {len(items)} validation images is readable and at least "
                f"{crop_size}×{crop_size} (val_crop_size); see the warnings above"
            )
        self.crops = torch.stack(crops)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> Tensor:
        return to_float(self.crops[index])


class EvalImages(Dataset[dict[str, Any] | None]):
    """Full evaluation images: ``{"name": str, "image": uint8 tensor 3×H×W}`` per item.

    Uses the first frame of each item, after :func:`eval_preprocess` with ``resize_short_side``
    (or ``resize_long_side``) and ``center_crop``. An image that cannot be read, is smaller than
    ``center_crop`` after the resize, or has a side below ``min_side`` gives None (after a
    warning); use :func:`collate_single` and skip None batches. The evaluation configs set
    ``min_side`` to 64: below one 64-px coding block the header and padding dominate the rate (a
    1×1 image costs hundreds of bpp) and LPIPS, SSIM and VIF are undefined (MS-SSIM needs 161 px;
    smaller images are NaN there and counted per metric).
    """

    def __init__(
        self,
        items: Sequence[Item],
        resize_short_side: int | None = None,
        center_crop: int | None = None,
        min_side: int = 1,
        resize_long_side: int | None = None,
    ) -> None:
        if resize_short_side is not None and resize_long_side is not None:
            raise ValueError("give resize_short_side or resize_long_side, not both")
        self.items = list(items)
        self.resize_short_side = resize_short_side
        self.resize_long_side = resize_long_side
        self.center_crop = center_crop
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        item = self.items[index]
        try:
            img = to_tensor(load_rgb(item.frames[0]))
        except ImageLoadError as error:
            _skip(f"skipping evaluation image {item.name}: {error}")
            return None
        try:
            img = eval_preprocess(
                img, self.resize_short_side, self.center_crop, self.resize_long_side
            )
        except ValueError as error:
            _skip(
                f"skipping evaluation image {item.frames[0]}: {error} (resize_short_side="
                f"{self.resize_short_side}, resize_long_side={self.resize_long_side}, "
                f"center_crop={self.center_crop})"
            )
            return None
        if min(img.shape[-2:]) < self.min_side:
            _skip(
                f"skipping evaluation image {item.frames[0]}: {img.shape[-1]}×{img.shape[-2]} "
                f"has a side below min_side={self.min_side}"
            )
            return None
        return {"name": item.name, "image": img}


def collate_single(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Collate a one-entry batch of :class:`EvalImages`: the entry (no batch dim) or None."""
    if len(batch) != 1:
        raise ValueError(f"collate_single needs batch_size=1, got a batch of {len(batch)}")
    return batch[0]

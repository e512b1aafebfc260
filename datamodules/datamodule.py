"""Lightning DataModule: random training crops, fixed validation crops, full test images."""

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from datamodules.datasets import EvalImages, TrainCrops, ValCrops, collate_single
from datamodules.sources import check_exists, list_items
from modules.utils import ConfigError

_SPEC_KEYS = frozenset({"source", "root", "split", "limit", "homepage"})
#: keys that must be positive integers when set
_SIZE_KEYS = (
    "limit",
    "resize_short_side",
    "resize_long_side",
    "center_crop",
    "expected_count",
    "min_side",
)
_TEST_KEYS = _SPEC_KEYS | {
    "name",
    "resize_short_side",
    "resize_long_side",
    "center_crop",
    "expected_count",
    "min_side",
}


def _positive_int(value: Any, what: str) -> int:
    """``value`` if it is an int >= 1; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def _spec(value: Mapping | None, key: str) -> dict[str, Any] | None:
    """A split spec as a plain dict, with its keys and numbers checked."""
    if value is None:
        return None
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, Mapping):
        raise ValueError(f"data.{key} must be a mapping with a source, got {value!r}")
    spec = dict(value)
    allowed = _TEST_KEYS if key == "test" else _SPEC_KEYS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"data.{key} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    for name in _SIZE_KEYS:
        if spec.get(name) is not None:
            _positive_int(spec[name], f"data.{key}.{name}")
    if spec.get("resize_short_side") is not None and spec.get("resize_long_side") is not None:
        raise ValueError(f"data.{key}: give resize_short_side or resize_long_side, not both")
    return spec


class ImageDataModule(L.LightningDataModule):
    """Images for learned compression: training crops, validation crops, evaluation images.

    Args:
        train, val, test: split specs (see :func:`datamodules.sources.list_items`); ``test``
            may also set ``name`` (used in result files), ``resize_short_side`` or
            ``resize_long_side`` and ``center_crop`` (the evaluation protocol), ``min_side``
            (skip images with a smaller side; the configs use 64) and ``expected_count`` (warn
            if the number of images differs).
        batch_size: global batch size, split evenly over the processes.
        num_workers: DataLoader workers per process.
        crop_size: side of the random square training crops.
        resize_short_side: (lo, hi): resize each training image's short side to a random
            integer in [lo, hi] before cropping; None keeps the original scale.
        hflip: random horizontal flips of training crops.
        val_crop_size: side of the deterministic centre crops used for validation.
        pin_memory: pin batches in page-locked memory (only when CUDA is available).

    Raises:
        DatasetNotFoundError: a given split's folders or list files are missing.
        ValueError: a spec or number is invalid.
    """

    def __init__(
        self,
        train: Mapping | None = None,
        val: Mapping | None = None,
        test: Mapping | None = None,
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: int = 256,
        resize_short_side: Sequence[int] | None = None,
        hflip: bool = True,
        val_crop_size: int = 256,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.specs = {"train": _spec(train, "train"), "val": _spec(val, "val")}
        self.specs["test"] = _spec(test, "test")
        self.batch_size = _positive_int(batch_size, "data.batch_size")
        self.crop_size = _positive_int(crop_size, "data.crop_size")
        self.val_crop_size = _positive_int(val_crop_size, "data.val_crop_size")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        self.num_workers = num_workers
        self.resize_short_side = self._resize_range(resize_short_side)
        self.hflip = hflip
        self.pin_memory = pin_memory and torch.cuda.is_available()
        for spec in self.specs.values():
            if spec is not None:
                check_exists(spec)
        self.train_set: TrainCrops | None = None
        self.val_set: ValCrops | None = None
        self.test_set: EvalImages | None = None

    def _resize_range(self, value: Sequence[int] | None) -> tuple[int, int] | None:
        if value is None:
            return None
        if isinstance(value, ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"data.resize_short_side must be [lo, hi] or null, got {value!r}")
        low = _positive_int(value[0], "data.resize_short_side[0]")
        high = _positive_int(value[1], "data.resize_short_side[1]")
        if not self.crop_size <= low <= high:
            raise ValueError(
                f"data.resize_short_side={[low, high]} needs data.crop_size ({self.crop_size}) "
                "<= lo <= hi, so that every resized image holds a crop"
            )
        return low, high

    @property
    def per_device_batch_size(self) -> int:
        """``batch_size`` divided by the trainer's world size (1 process without a trainer).

        Raises:
            ValueError: ``batch_size`` is not divisible by the world size.
        """
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is the global batch and must be divisible by "
                f"the number of processes ({world_size})"
            )
        return self.batch_size // world_size

    @property
    def test_name(self) -> str:
        """Name of the evaluation set for result files: the test spec's ``name`` or source."""
        spec = self._test_spec()
        return spec.get("name") or spec["source"]

    def _test_spec(self) -> dict[str, Any]:
        spec = self.specs["test"]
        if spec is None:
            raise ValueError(
                "this data config defines no evaluation images (test:); use data=kodak, "
                "data=tecnick, data=clic2020, data=clic_pro_valid, data=div2k_valid or data=sample"
            )
        return spec

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets that ``stage`` needs (each only once); check the batch split."""
        if stage in ("fit", "validate", None):
            rank_zero_info(
                f"data.batch_size={self.batch_size} (global): "
                f"{self.per_device_batch_size} per process"
            )
        if stage in ("fit", None) and self.train_set is None:
            if self.specs["train"] is None:
                raise ValueError("this data config defines no training images (train:)")
            self.train_set = TrainCrops(
                list_items(self.specs["train"]),
                self.crop_size,
                self.resize_short_side,
                self.hflip,
            )
            if len(self.train_set) < self.batch_size:
                raise ValueError(
                    f"the training set has {len(self.train_set)} images, fewer than "
                    f"data.batch_size={self.batch_size}"
                )
        if stage in ("fit", "validate", None) and self.val_set is None and self.specs["val"]:
            self.val_set = ValCrops(list_items(self.specs["val"]), self.val_crop_size)
        if stage in ("test", None) and self.specs["test"] is not None:
            self.eval_images()

    def eval_images(self) -> EvalImages:
        """The evaluation images of the ``test`` spec, preprocessed by its protocol."""
        if self.test_set is None:
            spec = self._test_spec()
            items = list_items(spec)
            expected = spec.get("expected_count")
            if expected is not None and len(items) != expected:
                warnings.warn(
                    f"evaluation set {self.test_name} has {len(items)} images, expected "
                    f"{expected}; check the copy under {spec.get('root')}",
                    stacklevel=2,
                )
            self.test_set = EvalImages(
                items,
                resize_short_side=spec.get("resize_short_side"),
                center_crop=spec.get("center_crop"),
                min_side=spec.get("min_side") or 1,
                resize_long_side=spec.get("resize_long_side"),
            )
        return self.test_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled random crops, per-device batches, incomplete last batch dropped."""
        if self.train_set is None:
            self.setup("fit")
        return DataLoader(
            self.train_set,
            batch_size=self.per_device_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader | list:
        """Fixed centre crops in per-device batches, decoded at setup; [] without a val spec."""
        if self.specs["val"] is None:
            return []
        if self.val_set is None:
            self.setup("validate")
        return DataLoader(
            self.val_set,
            batch_size=self.per_device_batch_size,
            shuffle=False,
            pin_memory=self.pin_memory,
        )

    def test_dataloader(self) -> DataLoader:
        """Full evaluation images one at a time; a batch is a dict or None (skip None)."""
        return DataLoader(
            self.eval_images(),
            batch_size=1,
            shuffle=False,
            collate_fn=collate_single,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

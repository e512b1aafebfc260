"""Data layer: dataset layouts, robust image reading, crops and the Lightning DataModule."""

from datamodules.datamodule import ImageDataModule
from datamodules.datasets import EvalImages, TrainCrops
from datamodules.io import ImageLoadError, load_rgb
from datamodules.sources import SOURCES, DatasetNotFoundError, list_items

__all__ = [
    "SOURCES",
    "DatasetNotFoundError",
    "EvalImages",
    "ImageDataModule",
    "ImageLoadError",
    "TrainCrops",
    "list_items",
    "load_rgb",
]

"""Lightning callbacks of the training runs."""

from callbacks.ema import EMA
from callbacks.image_logger import ProbeImageLogger

__all__ = ["EMA", "ProbeImageLogger"]

"""Lightning callbacks of the training runs."""

from callbacks.image_logger import ProbeImageLogger

__all__ = ["ProbeImageLogger"]

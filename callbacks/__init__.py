"""Lightning callbacks of the training runs."""

from callbacks.ema import EMA
from callbacks.image_logger import ProbeImageLogger
from callbacks.progress import StepProgressBar
from callbacks.rd_evaluation import RateDistortionEvaluation

__all__ = ["EMA", "ProbeImageLogger", "RateDistortionEvaluation", "StepProgressBar"]

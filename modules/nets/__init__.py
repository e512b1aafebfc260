"""Networks of the CDC codec: the conditional denoising U-Net and the compressor."""

from .cdc_compressor import CDCCompressor
from .cdc_unet import ConditionalUNet

__all__ = ["CDCCompressor", "ConditionalUNet"]

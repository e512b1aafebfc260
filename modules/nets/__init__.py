"""Networks: CDC's denoising U-Net and compressor; RDEIC's compressor and control module."""

from .cdc_compressor import CDCCompressor
from .cdc_unet import ConditionalUNet
from .rdeic_compressor import RDEICCompressor
from .rdeic_control import ControlModule, controlled_noise_prediction, guided_noise_prediction

__all__ = [
    "CDCCompressor",
    "ConditionalUNet",
    "ControlModule",
    "RDEICCompressor",
    "controlled_noise_prediction",
    "guided_noise_prediction",
]

"""Networks: ADM's U-Net; CDC's denoising U-Net and compressor; RDEIC's compressor and control
module."""

from .adm_unet import adm_unet
from .cdc_compressor import CDCCompressor
from .cdc_unet import ConditionalUNet
from .rdeic_compressor import RDEICCompressor
from .rdeic_control import ControlModule, controlled_noise_prediction, guided_noise_prediction

__all__ = [
    "CDCCompressor",
    "ConditionalUNet",
    "ControlModule",
    "RDEICCompressor",
    "adm_unet",
    "controlled_noise_prediction",
    "guided_noise_prediction",
]

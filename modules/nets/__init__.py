"""Networks: ADM's U-Net; CDC's denoising U-Net and compressor; RDEIC's compressor and control
module; the foundation codec's parameter estimator and latent entropy model."""

from .adm_unet import adm_unet
from .cdc_compressor import CDCCompressor
from .cdc_unet import ConditionalUNet
from .latent_entropy import checkerboard_hyperprior
from .parameter_estimator import ParameterEstimator, QuantizationParameters
from .rdeic_compressor import RDEICCompressor
from .rdeic_control import ControlModule, controlled_noise_prediction, guided_noise_prediction

__all__ = [
    "CDCCompressor",
    "ConditionalUNet",
    "ControlModule",
    "ParameterEstimator",
    "QuantizationParameters",
    "RDEICCompressor",
    "adm_unet",
    "checkerboard_hyperprior",
    "controlled_noise_prediction",
    "guided_noise_prediction",
]

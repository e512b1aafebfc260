"""Entropy coding: hyperprior and space-channel context codecs, precision policy, container."""

from .bitstream import METHOD_IDS, Bitstream, BitstreamError, fingerprint
from .hyperprior import HyperpriorCodec, mean_scale_hyperprior
from .precision import entropy_fp32
from .space_channel import SpaceChannelContextCodec
from .vector_quantizer import VectorQuantizer

__all__ = [
    "METHOD_IDS",
    "Bitstream",
    "BitstreamError",
    "HyperpriorCodec",
    "SpaceChannelContextCodec",
    "VectorQuantizer",
    "entropy_fp32",
    "fingerprint",
    "mean_scale_hyperprior",
]

"""Entropy coding: space-channel context model, precision policy and stream container."""

from .bitstream import METHOD_IDS, Bitstream, BitstreamError, fingerprint
from .precision import entropy_fp32
from .space_channel import SpaceChannelContextCodec

__all__ = [
    "METHOD_IDS",
    "Bitstream",
    "BitstreamError",
    "SpaceChannelContextCodec",
    "entropy_fp32",
    "fingerprint",
]

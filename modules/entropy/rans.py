"""Guard for handing untrusted rANS strings to CompressAI's C++ decoder.

CompressAI's `RansDecoder` reads 32-bit words without bounds checks: a crafted or corrupted
string makes it read past its end (into other memory, or an unmapped page) instead of failing.
`decoder_input` refuses what cannot be a rANS64 string and zero-pads the rest so that every read
stays inside the buffer. A valid string is read exactly to its end, so the padding never changes
what it decodes to; a crafted one decodes to garbage symbols, never to a crash.

The padding bound (written by hand: no library bounds this decoder) comes from the decoder's
reads: at most one word per symbol, plus its bypass (escape) path, whose run of 0xF nibbles is
bounded by the string's own bits. A simulation of the C++ decoder on CompressAI's tables (trained
ELIC, uniform 64- and 16384-symbol tables) with random, all-ones and mixed strings read at most
16 words per word of the string plus 0.9 words per symbol past the end; the padding doubles that.
"""

from __future__ import annotations

from .bitstream import BitstreamError

#: a rANS64 string ends with its 8-byte final state and is whole 32-bit words
FINAL_STATE_BYTES = 8


def padding_bytes(length: int, num_symbols: int) -> int:
    """Zero bytes appended to a `length`-byte string that decodes `num_symbols` symbols."""
    return 32 * length + 8 * num_symbols + 1024


def decoder_input(string: bytes, num_symbols: int, what: str) -> bytes:
    """`string` zero-padded for CompressAI's decoder; BitstreamError naming `what` if it is not
    a rANS64 string (at least its final state, whole 32-bit words)."""
    if not isinstance(string, bytes | bytearray):
        raise BitstreamError(f"{what}: expected bytes, got {type(string).__name__}")
    if len(string) < FINAL_STATE_BYTES or len(string) % 4:
        raise BitstreamError(
            f"malformed rANS string of {len(string)} bytes for {what} (a rANS string is whole "
            f"32-bit words, at least {FINAL_STATE_BYTES} bytes)"
        )
    return bytes(string) + bytes(padding_bytes(len(string), num_symbols))

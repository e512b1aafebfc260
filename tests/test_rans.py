"""The guard of untrusted rANS strings (modules/entropy/rans.py): what it refuses, and that its
zero padding covers every read CompressAI's C++ decoder makes on crafted strings.

The read counts come from a transcription of the C++ decoder's loop (compressai/cpp_exts/rans/
rans_interface.cpp and ryg_rans' rans64.h: renormalise after each symbol, bypass runs of 4-bit
values for the escape symbol), an independent computation of how far it reads."""

from __future__ import annotations

import random

import pytest
import torch

from modules.elic import ELICModule
from modules.entropy import BitstreamError
from modules.entropy.rans import decoder_input, padding_bytes

_L, _MASK64 = 1 << 31, (1 << 64) - 1


def words_read(words: list[int], tables: list[tuple[list[int], int]], indexes: list[int]) -> int:
    """32-bit words CompressAI's decoder reads decoding len(indexes) symbols from `words`
    (zeros beyond them, as the padding gives it)."""
    position = 0

    def read() -> int:
        nonlocal position
        position += 1
        return words[position - 1] if position <= len(words) else 0

    state = read() | (read() << 32)

    def bits(n: int) -> int:
        nonlocal state
        value, state = state & ((1 << n) - 1), state >> n
        if state < _L:
            state = ((state << 32) | read()) & _MASK64
        return value

    for index in indexes:
        cdf, length = tables[index]
        cumulative = state & 0xFFFF
        symbol = next(s for s in range(length - 1) if cdf[s + 1] > cumulative)
        state = (cdf[symbol + 1] - cdf[symbol]) * (state >> 16) + cumulative - cdf[symbol]
        if state < _L:
            state = ((state << 32) | read()) & _MASK64
        if symbol == length - 2:  # escape: a run of 4-bit counts, then that many 4-bit values
            count = value = bits(4)
            while value == 15:
                value = bits(4)
                count += value
            for _ in range(count):
                bits(4)
    return position


@pytest.fixture(scope="module")
def tables() -> list[tuple[list[int], int]]:
    """The CDF tables of a tiny ELIC's Gaussian conditional and entropy bottleneck."""
    torch.manual_seed(0)
    codec = ELICModule(lmbda=0.032, N=16, M=32, groups=[4, 4, 8, 16]).eval()
    codec.update(force=True)
    out = []
    for _, module in codec.entropy_modules():
        lengths = module._cdf_length.tolist()
        out += [(cdf, n) for cdf, n in zip(module._quantized_cdf.tolist(), lengths, strict=True)]
    return out


def test_padding_covers_every_read_of_crafted_strings(tables):
    rng = random.Random(0)
    for trial in range(60):
        n_words, n_symbols = rng.choice([2, 8, 256]), rng.choice([16, 256])
        words = [
            [rng.getrandbits(32) for _ in range(n_words)],
            [0xFFFFFFFF] * n_words,  # maximal bypass runs
            [0] * n_words,
            [rng.choice([0, 0xFFFFFFFF]) for _ in range(n_words)],
        ][trial % 4]
        indexes = [rng.randrange(len(tables)) for _ in range(n_symbols)]
        read = words_read(words, tables, indexes)
        available = 4 * n_words + padding_bytes(4 * n_words, n_symbols)
        assert 4 * read <= available, (trial, read)


@pytest.mark.parametrize("length", [0, 1, 4, 7, 9, 10, 11, 13])
def test_strings_that_cannot_be_rans_are_refused(length):
    with pytest.raises(BitstreamError, match=f"malformed rANS string of {length} bytes for z"):
        decoder_input(bytes(length), 10, "z")


def test_valid_strings_are_only_padded_with_zeros():
    string = bytes(range(12))
    padded = decoder_input(string, 5, "y")
    assert padded[:12] == string and not any(padded[12:])
    assert len(padded) == 12 + padding_bytes(12, 5)

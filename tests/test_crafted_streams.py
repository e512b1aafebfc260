"""Hostile streams through every method's decoder: crafted payloads with a valid checksum and the
model's fingerprint are a one-line BitstreamError or an image of the header's size, never a crash,
a hang or an unbounded allocation (DESIGN: streams are untrusted input)."""

from __future__ import annotations

import math
import random
import struct
import time

import pytest
import torch

from modules.entropy import Bitstream, BitstreamError
from tests.conftest import TINY_EXPERIMENTS

#: header sizes that must be refused before anything is allocated
BOMBS = [(65535, 65535), (20000, 20000), (8193, 8192)]
#: per method, side information whose decoding settings are out of range (a new method with
#: side information adds its cases)
INVALID_SIDES = {
    "cdc": [  # steps u16, γ fp16, seed u32
        struct.pack("<HeI", 0, 0.0, 0),
        struct.pack("<HeI", 8194, 0.0, 0),
        struct.pack("<HeI", 3, math.nan, 0),
        struct.pack("<HeI", 3, -1.0, 0),
        struct.pack("<HeI", 3, math.inf, 0),
    ],
    "rdeic": [  # steps u16, guidance f32, seed u32
        struct.pack("<HfI", 0, 1.0, 0),
        struct.pack("<HfI", 301, 1.0, 0),
        struct.pack("<HfI", 2, math.nan, 0),
        struct.pack("<HfI", 2, math.inf, 0),
    ],
    "corrdiff": [  # steps u16, seed u32, one γ fp16 per step
        struct.pack("<HI", 0, 0),
        struct.pack("<HI", 1001, 0) + bytes(2 * 1001),
        struct.pack("<HIee", 2, 0, 0.5, math.nan),
        struct.pack("<HIee", 2, 0, math.inf, 0.5),
    ],
    "foundation": [  # a (4 × fp16), b (4 × fp16), t u16, decoding passes u16
        struct.pack("<4e4eHH", 0.0, 1, 1, 1, 0, 0, 0, 0, 10, 0),
        struct.pack("<4e4eHH", 1, math.nan, 1, 1, 0, 0, 0, 0, 10, 0),
        struct.pack("<4e4eHH", 1, 1, 1, 1, 0, 0, 4000.0, 0, 10, 0),
        struct.pack("<4e4eHH", 1, 1, 1, 1, 0, 0, 0, 0, 65535, 0),
        struct.pack("<4e4eHH", 1, 1, 1, 1, 0, 0, 0, 0, 10, 65535),
    ],
}


def smallest_codable_side(codec) -> int:
    """64, or 128 for a tiny model whose deepest GroupNorm cannot decode a 64-px image."""
    try:
        codec.decompress(codec.compress(torch.rand(1, 3, 64, 64)))
        return 64
    except ValueError:
        return 128


def crafted_streams(
    valid: Bitstream, base: int, rng: random.Random
) -> list[tuple[str, bytes, bool]]:
    """(label, stream, whether it must be refused): streams built from a valid one whose checks
    (CRC, method, fingerprint) all pass and whose payload is wrong in one way. Wrong sizes,
    counts and side information must be refused; garbage strings may decode to an image."""
    strings, side = list(valid.strings), valid.side

    def stream(label, size=(valid.height, valid.width), strings=strings, side=side, fail=True):
        data = Bitstream(valid.method, valid.fingerprint, *size, tuple(strings), side).to_bytes()
        return label, data, fail

    def noise(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))

    out = [stream(f"bomb {size}", size=size) for size in BOMBS]
    sizes = [(base - 63, base - 63), (base + 1, 2 * base)]
    out += [stream(f"size {s}", size=s, fail=False) for s in sizes]
    n = len(strings)
    for count in sorted({0, 1, n - 1, n + 1, 2 * n} - {n}):  # wrong counts only
        out.append(stream(f"{count} strings", strings=(strings * 3)[:count]))
        out.append(stream(f"{count} random strings", strings=[noise(16) for _ in range(count)]))
    out.append(stream("swapped strings", strings=strings[::-1], fail=False))
    garbage = [noise(len(s) + 4 - len(s) % 4) for s in strings]
    out.append(stream("random strings", strings=garbage, fail=False))
    out.append(stream("all empty", strings=[b""] * len(strings)))
    for i, string in enumerate(strings):

        def replaced(new: bytes, i=i) -> list[bytes]:
            return [new if j == i else s for j, s in enumerate(strings)]

        flipped = bytearray(string)
        flipped[len(string) // 2] ^= 0xFF
        whole = len(string) + 4 - len(string) % 4  # whole 32-bit words, as rANS strings are
        out.append(stream(f"string {i} empty", strings=replaced(b"")))
        out += [
            stream(f"string {i} {what}", strings=replaced(new), fail=False)
            for what, new in [
                ("with a byte flipped", bytes(flipped)),
                ("random words", noise(whole)),
                ("0xff words", b"\xff" * whole),
            ]
        ]
        for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 31):  # too short for, or not whole words
            # of, a rANS string (a fixed-length code of that many bytes may decode)
            out.append(stream(f"string {i}: {n} bytes", strings=replaced(noise(n)), fail=False))
    zeros = [bytes(8 + len(s) - len(s) % 4) for s in strings]
    out.append(stream("zero words", strings=zeros, fail=False))
    for n in sorted({0, 1, len(side) + 1, 2 * len(side) + 3, 64} - {len(side)}):
        out.append(stream(f"side of {n} bytes", side=noise(n)))
    for j, bad in enumerate(INVALID_SIDES.get(valid.method, [])):
        out.append(stream(f"invalid side {j}", side=bad))
    while len(out) < 200:  # wrong counts of random strings and sides of wrong lengths
        n = rng.choice([n for n in range(6) if n != len(strings)])
        out.append(stream("random count", strings=[noise(rng.randrange(60)) for _ in range(n)]))
        out.append(stream("random side", side=noise(rng.choice([len(side) + 1, len(side) + 7]))))
    return out


@pytest.mark.parametrize("method", sorted(TINY_EXPERIMENTS))
def test_crafted_streams_are_one_line_errors_or_images(method, tiny_codec):
    codec = tiny_codec(method)
    base = smallest_codable_side(codec)
    x = torch.rand(1, 3, base - 8, base - 20, generator=torch.Generator().manual_seed(0))
    valid = Bitstream.from_bytes(codec.compress(x))
    streams = crafted_streams(valid, base, random.Random(0))
    assert len(streams) >= 200
    images = []
    for label, data, must_fail in streams:
        start = time.perf_counter()
        try:
            image = codec.decompress(data)
        except BitstreamError as error:
            message = str(error)
            assert message and "\n" not in message, label
            if label.startswith("bomb"):  # refused before anything is allocated
                assert "limit" in message and time.perf_counter() - start < 0.5, label
            assert not label.startswith("invalid side") or "decoding settings" in message
            continue
        assert not must_fail, label
        header = Bitstream.from_bytes(data)
        assert image.shape == (1, 3, header.height, header.width), label
        assert image.isfinite().all() and image.min() >= 0 and image.max() <= 1, label
        images.append(label)
    assert len(images) <= 12  # garbage is rare: the checks catch the rest

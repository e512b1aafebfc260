"""Tests for the stream container and model fingerprints."""

import random
import zlib

import pytest
import torch
from torch import nn

from modules.entropy import METHOD_IDS, Bitstream, BitstreamError, fingerprint
from modules.entropy.bitstream import MAGIC

FP = b"\x01\x02\x03\x04"


def small_stream() -> bytes:
    return Bitstream("elic", FP, 5, 7, (b"abc", b""), side=b"z").to_bytes()


@pytest.mark.parametrize(
    "strings",
    [(), (b"",), (b"", b""), (b"x",), (b"a" * 300, b"", bytes(range(256)))],
)
@pytest.mark.parametrize("size", [(1, 1), (65535, 65535), (17, 300)])
@pytest.mark.parametrize("side", [b"", b"\x00side\xff" * 50])
def test_round_trip(strings: tuple[bytes, ...], size: tuple[int, int], side: bytes) -> None:
    for method in METHOD_IDS:
        stream = Bitstream(method, FP, *size, strings, side)
        data = stream.to_bytes()
        parsed = Bitstream.from_bytes(
            data, method=method, fingerprint=FP, num_strings=len(strings), max_pixels=None
        )
        assert parsed == stream
        payload = sum(len(s) for s in strings) + len(side)
        assert stream.overhead_bytes == len(data) - payload


def test_every_single_byte_corruption_is_detected() -> None:
    data = small_stream()
    for position in range(len(data)):
        for delta in range(1, 256):
            corrupted = bytearray(data)
            corrupted[position] ^= delta
            with pytest.raises(BitstreamError):
                Bitstream.from_bytes(bytes(corrupted))


def test_every_truncation_and_extension_is_detected() -> None:
    data = small_stream()
    for length in range(len(data)):
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data[:length])
    with pytest.raises(BitstreamError, match="trailing"):
        Bitstream.from_bytes(data + b"\x00")


def test_foreign_inputs_are_rejected() -> None:
    rng = random.Random(0)
    foreign = [
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(64),
        bytes(rng.randrange(256) for _ in range(1000)),
        b"XXXX" + small_stream()[4:],
    ]
    for data in foreign:
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data)
    with pytest.raises(BitstreamError, match="bad magic"):
        Bitstream.from_bytes(foreign[-1])
    with pytest.raises(BitstreamError, match="expected bytes"):
        Bitstream.from_bytes("DIFC")  # type: ignore[arg-type]


def test_random_streams_with_valid_header_never_escape() -> None:
    rng = random.Random(1)
    header = small_stream()[:10]
    for _ in range(2000):
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(header + tail)


def test_huge_lengths_do_not_allocate_or_hang() -> None:
    def with_crc(body: bytes) -> bytes:
        return body + zlib.crc32(body).to_bytes(4, "big")

    head = MAGIC + bytes((1, METHOD_IDS["elic"])) + FP + b"\x05\x07"
    huge = b"\xff" * 9 + b"\x01"  # 2**63 + ..., a ten-byte varint
    with pytest.raises(BitstreamError, match="truncated"):
        Bitstream.from_bytes(with_crc(head + huge + b"\x00"))
    with pytest.raises(BitstreamError, match="truncated"):
        Bitstream.from_bytes(with_crc(head + b"\x01" + huge + b"\x00"))
    with pytest.raises(BitstreamError, match="longer than 10 bytes"):
        Bitstream.from_bytes(with_crc(head + b"\xff" * 11 + b"\x00"))
    with pytest.raises(BitstreamError, match="height 0 out of range"):
        Bitstream.from_bytes(with_crc(MAGIC + bytes((1, 1)) + FP + b"\x00\x07\x00\x00"))


@pytest.mark.parametrize("size", [(65535, 65535), (20000, 20000), (8193, 8192)])
def test_decompression_bombs_are_refused_before_decoding(size: tuple[int, int]) -> None:
    data = Bitstream("rdeic", FP, *size, (b"\x00" * 8,)).to_bytes()  # valid CRC, tiny payload
    with pytest.raises(BitstreamError, match=rf"{size[1]}×{size[0]} image .* limit of 67108864"):
        Bitstream.from_bytes(data)
    assert Bitstream.from_bytes(data, max_pixels=None).height == size[0]


def test_pixel_limit_is_configurable(monkeypatch) -> None:
    import modules.entropy.bitstream as bitstream

    eight_k = Bitstream("cdc", FP, 4320, 7680, ()).to_bytes()
    assert Bitstream.from_bytes(eight_k).width == 7680  # 8K UHD is within the default
    assert bitstream.MAX_IMAGE_PIXELS == 8192**2
    monkeypatch.setattr(bitstream, "MAX_IMAGE_PIXELS", 4320 * 7680 - 1)
    with pytest.raises(BitstreamError, match="limit of 33177599"):
        Bitstream.from_bytes(eight_k)
    monkeypatch.setattr(bitstream, "MAX_IMAGE_PIXELS", None)
    assert Bitstream.from_bytes(Bitstream("cdc", FP, 65535, 65535, ()).to_bytes()).height == 65535
    with pytest.raises(BitstreamError, match="limit of 100"):
        Bitstream.from_bytes(eight_k, max_pixels=100)


def test_expectations_name_what_differs() -> None:
    data = Bitstream("cdc", FP, 4, 4, (b"a", b"b")).to_bytes()
    with pytest.raises(BitstreamError, match="method 'cdc', this model is 'elic'"):
        Bitstream.from_bytes(data, method="elic")
    with pytest.raises(BitstreamError, match="fingerprint 01020304, this model 05060708"):
        Bitstream.from_bytes(data, fingerprint=b"\x05\x06\x07\x08")
    with pytest.raises(BitstreamError, match="2 strings, this model expects 3"):
        Bitstream.from_bytes(data, num_strings=3)


def test_error_messages_are_one_line() -> None:
    data = small_stream()
    for length in range(len(data)):
        with pytest.raises(BitstreamError) as error:
            Bitstream.from_bytes(data[:length])
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "jpeg"},
        {"fingerprint": b"\x00" * 3},
        {"height": 0},
        {"width": 65536},
        {"height": 4.0},
    ],
)
def test_invalid_fields_are_refused_on_write(kwargs: dict) -> None:
    fields = {"method": "elic", "fingerprint": FP, "height": 4, "width": 4, "strings": ()}
    with pytest.raises(ValueError):
        Bitstream(**{**fields, **kwargs}).to_bytes()


def make_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_fingerprint_identifies_weights() -> None:
    first, second = make_module(), make_module()
    reference = fingerprint(first.state_dict().items())
    assert len(reference) == 4
    assert fingerprint(second.state_dict().items()) == reference
    assert fingerprint(reversed(list(second.state_dict().items()))) == reference
    assert fingerprint(first.state_dict().items(), extra="v2") != reference
    with torch.no_grad():
        weight = second[0].weight
        weight[0, 0, 0, 0] = torch.nextafter(weight[0, 0, 0, 0], torch.tensor(float("inf")))
    assert fingerprint(second.state_dict().items()) != reference


def test_fingerprint_matches_golden_value() -> None:
    tensors = [("b", torch.arange(6, dtype=torch.int64).reshape(2, 3)), ("a", torch.ones(2))]
    assert fingerprint(tensors, extra="x").hex() == "f05ed54c"

"""Self-describing, checksummed container written by every codec of this project.

Layout (varints are unsigned LEB128)::

    MAGIC (4) | version u8 | method id u8 | fingerprint (4)
    | varint height | varint width
    | varint n_strings | n_strings x (varint length | bytes)
    | varint side length | side bytes
    | CRC32 of everything before it (4, big-endian)

Streams are untrusted input: a stream that claims more than `MAX_IMAGE_PIXELS` pixels is refused
when it is parsed, before a decoder allocates anything (as PIL's `Image.MAX_IMAGE_PIXELS`; set it,
or pass `max_pixels`, to decode larger images; None disables the check).
"""

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import torch

METHOD_IDS = {"elic": 1, "cdc": 2, "rdeic": 3, "corrdiff": 4, "foundation": 5}
FORMAT_VERSION = 1
MAGIC = b"DIFC"

_METHOD_NAMES = {v: k for k, v in METHOD_IDS.items()}
_FINGERPRINT_BYTES = 4
_CRC_BYTES = 4
_MAX_VARINT_BYTES = 10
_MAX_SIZE = 65535
#: the largest image (H·W) a stream may claim: 8192² covers 8K UHD and DCI 8K frames
MAX_IMAGE_PIXELS: int | None = 8192 * 8192
# Magic, version, method, fingerprint, four one-byte varints (height, width, n_strings,
# side length) and the CRC.
_MIN_STREAM_BYTES = len(MAGIC) + 2 + _FINGERPRINT_BYTES + 4 + _CRC_BYTES


class BitstreamError(ValueError):
    """Any unreadable stream: truncated, corrupted, foreign, wrong method or model.

    The message is one line.
    """


def fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]], extra: str = "") -> bytes:
    """Return a 4-byte digest identifying a model's weights (e.g. ``state_dict().items()``).

    SHA-256 over the sorted names, dtypes, shapes and raw bytes of the tensors, then
    ``extra``; deterministic across processes and (little-endian) machines.
    """
    digest = hashlib.sha256()

    def update(data: bytes) -> None:
        # Length-prefix every field so that different inputs never hash the same bytes.
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        update(name.encode())
        update(str(tensor.dtype).encode())
        update(repr(tuple(tensor.shape)).encode())
        update(tensor.view(torch.uint8).numpy().tobytes())
    update(extra.encode())
    return digest.digest()[:_FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Bitstream:
    """One compressed image: the rANS strings of a codec plus side payload and header."""

    method: str
    fingerprint: bytes
    height: int
    width: int
    strings: tuple[bytes, ...]
    side: bytes = b""

    def to_bytes(self) -> bytes:
        """Serialize; raises ``ValueError`` on fields that cannot be written."""
        if self.method not in METHOD_IDS:
            raise ValueError(f"unknown method {self.method!r}, known: {sorted(METHOD_IDS)}")
        if not isinstance(self.fingerprint, bytes) or len(self.fingerprint) != _FINGERPRINT_BYTES:
            raise ValueError(f"fingerprint must be 4 bytes, got {self.fingerprint!r}")
        for name, size in (("height", self.height), ("width", self.width)):
            if not isinstance(size, int) or not 1 <= size <= _MAX_SIZE:
                raise ValueError(f"{name} {size} out of range 1..{_MAX_SIZE}")
        if not all(isinstance(s, bytes) for s in (*self.strings, self.side)):
            raise ValueError("strings and side must be bytes")
        out = bytearray(MAGIC)
        out += bytes((FORMAT_VERSION, METHOD_IDS[self.method]))
        out += self.fingerprint
        out += _encode_varint(self.height) + _encode_varint(self.width)
        out += _encode_varint(len(self.strings))
        for string in self.strings:
            out += _encode_varint(len(string)) + string
        out += _encode_varint(len(self.side)) + self.side
        out += zlib.crc32(out).to_bytes(_CRC_BYTES, "big")
        return bytes(out)

    @property
    def overhead_bytes(self) -> int:
        """Bytes of the serialized stream that are neither strings nor side payload."""
        payload = sum(len(s) for s in self.strings) + len(self.side)
        return len(self.to_bytes()) - payload

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        method: str | None = None,
        fingerprint: bytes | None = None,
        num_strings: int | None = None,
        max_pixels: int | None = -1,
    ) -> Self:
        """Parse and validate ``data``; any problem raises :class:`BitstreamError`.

        ``method``, ``fingerprint`` and ``num_strings``, when given, are checked against
        the stream; ``max_pixels`` bounds height·width (default `MAX_IMAGE_PIXELS`; None: no
        bound).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BitstreamError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _MIN_STREAM_BYTES:
            raise BitstreamError(
                f"too short: {len(data)} bytes, a stream has at least {_MIN_STREAM_BYTES}"
            )
        reader = _Reader(data)
        if reader.take(len(MAGIC), "magic") != MAGIC:
            raise BitstreamError("not a stream written by this project (bad magic)")
        version, method_id = reader.take(2, "version and method")
        if version != FORMAT_VERSION:
            raise BitstreamError(
                f"unsupported format version {version}, this reader supports {FORMAT_VERSION}"
            )
        if method_id not in _METHOD_NAMES:
            raise BitstreamError(f"unknown method id {method_id}")
        stream_fingerprint = reader.take(_FINGERPRINT_BYTES, "fingerprint")
        height = reader.varint("height")
        width = reader.varint("width")
        n_strings = reader.varint("string count")
        # Each string needs at least its one-byte length: bounds the loop below.
        reader.require(n_strings, f"{n_strings} strings")
        strings = tuple(
            reader.take(reader.varint(f"length of string {i}"), f"string {i}")
            for i in range(n_strings)
        )
        side = reader.take(reader.varint("side length"), "side info")
        body_end = reader.pos
        stored_crc = reader.take(_CRC_BYTES, "checksum")
        if reader.left:
            raise BitstreamError(f"{reader.left} trailing bytes after the checksum")
        if zlib.crc32(data[:body_end]) != int.from_bytes(stored_crc, "big"):
            raise BitstreamError("corrupted: checksum mismatch")
        for name, size in (("height", height), ("width", width)):
            if not 1 <= size <= _MAX_SIZE:
                raise BitstreamError(f"{name} {size} out of range 1..{_MAX_SIZE}")
        limit = MAX_IMAGE_PIXELS if max_pixels == -1 else max_pixels
        if limit is not None and height * width > limit:
            raise BitstreamError(
                f"stream claims a {width}×{height} image ({height * width} pixels), more than "
                f"the limit of {limit} (modules.entropy.bitstream.MAX_IMAGE_PIXELS; raise it to "
                "decode larger images)"
            )

        stream_method = _METHOD_NAMES[method_id]
        if method is not None and stream_method != method:
            raise BitstreamError(
                f"stream was written by method {stream_method!r}, this model is {method!r}"
            )
        if fingerprint is not None and stream_fingerprint != fingerprint:
            raise BitstreamError(
                "stream was written by a different model (fingerprint "
                f"{stream_fingerprint.hex()}, this model {bytes(fingerprint).hex()})"
            )
        if num_strings is not None and n_strings != num_strings:
            raise BitstreamError(
                f"stream has {n_strings} strings, this model expects {num_strings}"
            )
        return cls(stream_method, stream_fingerprint, height, width, strings, side)


def _encode_varint(value: int) -> bytes:
    # Unsigned LEB128, written by hand: the standard library has no varint codec.
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Reader:
    """Bounds-checked cursor over the stream; every read failure is a BitstreamError."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def require(self, n: int, what: str) -> None:
        if n > self.left:
            raise BitstreamError(f"truncated: {what} needs {n} bytes, {self.left} left")

    def take(self, n: int, what: str) -> bytes:
        self.require(n, what)
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def varint(self, what: str) -> int:
        # Unsigned LEB128 decoder, the counterpart of _encode_varint.
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return value
        raise BitstreamError(f"{what}: varint longer than {_MAX_VARINT_BYTES} bytes")

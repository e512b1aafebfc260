"""The codec contract on ELIC: exact round trips, real vs estimated rate, bad streams, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import EvalImages, list_items
from modules.base import load_codec
from modules.entropy import Bitstream, BitstreamError
from tests.conftest import run_script


@pytest.fixture(scope="module")
def codec(trained_elic: Path):
    return load_codec(trained_elic)


@pytest.fixture(scope="module")
def sample_images() -> list[dict]:
    return [item for item in EvalImages(list_items({"source": "sample"})) if item is not None]


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().div(255).unsqueeze(0)


@pytest.mark.parametrize("size", [(64, 64), (67, 131), (200, 96)])
def test_round_trip_equals_eval_reconstruction_bit_exactly(codec, size):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    decoded = codec.decompress(codec.compress(x))
    reconstruction, _ = codec.reconstruct(x)
    assert decoded.shape == x.shape
    assert torch.equal(decoded, reconstruction)


def test_separately_loaded_instances_decode_identically(codec, trained_elic, sample_images):
    other = load_codec(trained_elic)
    x = _as_float(sample_images[2]["image"])  # chelsea, 300×451: not a multiple of 64
    data = codec.compress(x)
    assert other.compress(x) == data
    assert torch.equal(other.decompress(data), codec.decompress(data))


def test_real_rate_matches_estimate_on_sample_photos(codec, sample_images):
    for item in sample_images:
        x = _as_float(item["image"])
        data = codec.compress(x)
        _, bpp_est = codec.reconstruct(x)
        pixels = x.shape[-1] * x.shape[-2]
        overhead = Bitstream.from_bytes(data).overhead_bytes
        real_bits, est_bits = 8 * len(data), float(bpp_est) * pixels
        assert real_bits <= 1.03 * est_bits + 8 * overhead, item["name"]
        assert real_bits >= 0.97 * est_bits, item["name"]


def test_training_changes_require_update(codec, trained_elic):
    fresh = load_codec(trained_elic)
    fresh._fingerprint = None
    with pytest.raises(RuntimeError, match="update"):
        fresh.compress(torch.rand(1, 3, 64, 64))


@pytest.fixture(scope="module")
def stream(codec) -> bytes:
    return codec.compress(torch.rand(1, 3, 80, 72, generator=torch.Generator().manual_seed(1)))


def test_corrupted_stream_raises(codec, stream):
    for position in range(0, len(stream), max(1, len(stream) // 40)):
        corrupted = bytearray(stream)
        corrupted[position] ^= 0x5A
        with pytest.raises(BitstreamError):
            codec.decompress(bytes(corrupted))


def test_truncated_stream_raises(codec, stream):
    for length in range(0, len(stream), max(1, len(stream) // 40)):
        with pytest.raises(BitstreamError, match=r"truncated|too short"):
            codec.decompress(stream[:length])


def test_foreign_stream_raises(codec):
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    for data in (png, bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))):
        with pytest.raises(BitstreamError, match="magic"):
            codec.decompress(data)


def test_wrong_model_stream_raises(codec, trained_elic, stream):
    other = load_codec(trained_elic)
    with torch.no_grad():
        next(other.g_s.parameters()).add_(1e-3)
    other.update(force=True)
    with pytest.raises(BitstreamError, match="different model"):
        other.decompress(stream)


def test_codec_cli_round_trip_any_size(tmp_path, trained_elic, codec):
    image = np.random.default_rng(3).integers(0, 256, (45, 77, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    encoded = run_script(
        "scripts/codec.py",
        "compress",
        "--ckpt",
        str(trained_elic),
        "--input",
        str(tmp_path / "in.png"),
        "--output",
        str(tmp_path / "in.bin"),
    )
    assert encoded.returncode == 0, encoded.stderr
    decoded = run_script(
        "scripts/codec.py",
        "decompress",
        "--ckpt",
        str(trained_elic),
        "--input",
        str(tmp_path / "in.bin"),
        "--output",
        str(tmp_path / "out.png"),
    )
    assert decoded.returncode == 0, decoded.stderr
    out = np.asarray(Image.open(tmp_path / "out.png"))
    expected, _ = codec.reconstruct(torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255)
    expected = (expected[0] * 255).round().byte().permute(1, 2, 0).numpy()
    assert out.shape == (45, 77, 3)
    assert np.array_equal(out, expected)  # a separate process decodes exactly the same image


def test_codec_cli_bad_stream_is_one_line(tmp_path, trained_elic):
    (tmp_path / "bad.bin").write_bytes(b"DIFC" + bytes(40))
    result = run_script(
        "scripts/codec.py",
        "decompress",
        "--ckpt",
        str(trained_elic),
        "--input",
        str(tmp_path / "bad.bin"),
        "--output",
        str(tmp_path / "out.png"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr and not (tmp_path / "out.png").exists()


def test_compress_refuses_8_bit_images(codec):
    photo = torch.from_numpy(np.asarray(Image.new("RGB", (64, 48), (200, 30, 90)))).permute(
        2, 0, 1
    )
    with pytest.raises(ValueError, match=r"float image in \[0, 1\], got torch.uint8"):
        codec.compress(photo)
    with pytest.raises(ValueError, match=r"got \[30, 200\] \(an 8-bit image\? divide it by 255\)"):
        codec.compress(photo.float())
    with pytest.raises(ValueError, match="values in"):
        codec.compress(torch.full((1, 3, 64, 64), math.nan))
    assert codec.decompress(codec.compress(photo.float() / 255)).shape == (1, 3, 48, 64)


def test_estimated_bpp_divides_by_original_pixels(codec):
    x = torch.rand(1, 3, 65, 65)
    _, bpp_small = codec.reconstruct(x)
    padded = torch.nn.functional.pad(x, (0, 63, 0, 63), mode="replicate")
    _, bpp_padded = codec.reconstruct(padded)
    assert math.isclose(float(bpp_small) * 65 * 65, float(bpp_padded) * 128 * 128, rel_tol=1e-5)
    # the entropy-model-only estimate that eval.py reports is the same number
    assert float(codec.estimate_bpp(x)) == pytest.approx(float(bpp_small), rel=1e-6)

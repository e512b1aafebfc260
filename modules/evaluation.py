"""The evaluation protocol: every image through compress -> bytes -> decompress, metrics on 8 bits.

Writes into an output folder:
    per_image.csv   one row per image (size, bytes, real and estimated bpp, metrics, seconds)
    results.json    CompressAI's format: {"name", "description", "results": {metric: [mean]}}
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import save_image

from modules.base import CodecModule
from modules.metrics import FULL_REFERENCE, quantize_8bit

#: per-image columns before the metric columns
BASE_COLUMNS = ("name", "height", "width", "bytes", "bpp", "bpp_est", "encode_s", "decode_s")
#: results.json keys of the per-image columns (CompressAI's names where it has one)
RESULT_KEYS = {
    "bpp": "bpp",
    "bpp_est": "bpp_est",
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
    "encode_s": "encoding_time",
    "decode_s": "decoding_time",
}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def code_image(codec: CodecModule, image: Tensor) -> tuple[bytes, Tensor, dict[str, float]]:
    """Compress and decompress one uint8 3×H×W image; returns (bytes, decoded, timing/rate row)."""
    x = (image.float() / 255).unsqueeze(0).to(codec.device)
    height, width = image.shape[-2:]
    _synchronize(codec.device)
    start = time.perf_counter()
    data = codec.compress(x)
    _synchronize(codec.device)
    encoded = time.perf_counter()
    decoded = codec.decompress(data)
    _synchronize(codec.device)
    finished = time.perf_counter()
    bpp_est = codec.estimate_bpp(x)
    row = {
        "height": height,
        "width": width,
        "bytes": len(data),
        "bpp": 8 * len(data) / (height * width),
        "bpp_est": float(bpp_est),
        "encode_s": encoded - start,
        "decode_s": finished - encoded,
    }
    return data, decoded, row


def evaluate_codec(
    codec: CodecModule,
    images: Iterable[dict[str, Any] | None],
    out_dir: Path,
    name: str,
    description: str,
    save_outputs: bool = False,
) -> dict[str, Any]:
    """Evaluate `codec` on `images` ({"name", "image": uint8 3×H×W}; None = skipped file).

    Returns the results.json content; also writes per_image.csv (and, with `save_outputs`,
    every bitstream and reconstruction) into `out_dir`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in images:
        if item is None:
            continue
        data, decoded, row = code_image(codec, item["image"])
        original = item["image"].unsqueeze(0).float().to(decoded.device)
        decoded_8bit = quantize_8bit(decoded)
        row.update({key: fn(decoded_8bit, original) for key, fn in FULL_REFERENCE.items()})
        rows.append({"name": item["name"], **row})
        if save_outputs:
            stem = out_dir / "outputs" / item["name"]
            stem.parent.mkdir(parents=True, exist_ok=True)
            stem.with_suffix(".bin").write_bytes(data)
            save_image(decoded_8bit / 255, stem.with_suffix(".png"))
    if not rows:
        raise FileNotFoundError(f"no readable images to evaluate for {description}")

    columns = [*BASE_COLUMNS, *FULL_REFERENCE]
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def mean(key: str) -> float:
        values = [r[key] for r in rows if not math.isnan(r[key])]
        return sum(values) / len(values) if values else math.nan

    results = {
        "name": name,
        "description": f"{description}; {len(rows)} images; real bitstreams (compress/decompress)",
        "results": {
            RESULT_KEYS.get(k, k): [mean(k)] for k in columns if k not in BASE_COLUMNS[:4]
        },
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results

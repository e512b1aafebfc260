"""The evaluation protocol: every image through compress -> bytes -> decompress, metrics on 8 bits.

`evaluate_point` evaluates one checkpoint on one image set, sharded over the ranks of a
torch.distributed job (each image exactly once, no DistributedSampler padding) and resumable:
every finished image is appended to `progress/rank<r>.jsonl` (its FID features next to it), and a
re-run skips what is there. It writes into its folder:

    per_image.csv   one row per image: size, bytes, real and estimated bpp, seconds, metrics
    results.json    CompressAI's format: {"name", "description", "results": {key: [mean]}}, plus
                    per-key image counts, timing standard deviations and the decoding settings
    meta.json       the resume key: every setting that changes a number (checkpoint and model
                    fingerprint, data and preprocessing, metrics, decoding, device); a re-run
                    with other settings is refused, naming the key that differs
    progress/       resume state;  outputs/  bitstreams and reconstructions (save_outputs)

Columns of per_image.csv map one-to-one to results.json keys (`RESULT_KEYS`, CompressAI's names
where it has one): bpp -> bpp, bpp_est -> bpp_est, encode_s -> encoding_time, decode_s ->
decoding_time, psnr -> psnr-rgb, ms_ssim -> ms-ssim-rgb, ssim -> ssim-rgb, and any other metric
with "-" for "_" (lpips_alex -> lpips-alex). A metric an image is too small for is NaN in the
CSV, left out of its mean and counted in "counts"; it is never scored as perfect.

`write_curves` collects every point evaluated in a dataset folder, whichever run wrote it, into
that folder's results.json (one RD curve per sweep and fixed coding-option setting, each in
CompressAI's format) and `write_summary` renders every dataset and curve as Markdown tables.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.utils import save_image
from tqdm import tqdm

from modules.base import CodecModule
from modules.metrics import MetricSuite, fid_kid, quantize_8bit
from modules.utils import ConfigError, resolve_device

#: per-image columns before the metric columns
BASE_COLUMNS = ("name", "height", "width", "bytes", "bpp", "bpp_est", "encode_s", "decode_s")
#: results.json keys of the per-image columns (CompressAI's names where it has one); a column not
#: listed keeps its name with "-" for "_" (lpips_alex -> lpips-alex)
RESULT_KEYS = {
    "bpp": "bpp",
    "bpp_est": "bpp_est",
    "encode_s": "encoding_time",
    "decode_s": "decoding_time",
    "psnr": "psnr-rgb",
    "ms_ssim": "ms-ssim-rgb",
    "ssim": "ssim-rgb",
}
#: units of the results.json keys that have one (the others are unitless scores)
UNITS = {
    "bpp": "bpp",
    "bpp_est": "bpp",
    "encoding_time": "s",
    "decoding_time": "s",
    "psnr-rgb": "dB",
}
#: side of the crop of the first image coded once per point, untimed, before the timed images
WARMUP_SIDE = 256
#: columns that depend on the machine's load, not on the codec (excluded from equality checks)
TIMING_COLUMNS = ("encode_s", "decode_s")


def result_key(column: str) -> str:
    """results.json key of a per-image column."""
    return RESULT_KEYS.get(column, column.replace("_", "-"))


# ---------------------------------------------------------------------------- distribution
def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current torch.distributed job, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> torch.device:
    """Join the process group of a torchrun/srun launch (NCCL on GPUs, gloo on CPU) and return
    this rank's device; a plain `python eval.py` stays a single process. A device that does not
    exist here is a ConfigError (`modules.utils.resolve_device`)."""
    use_cuda = resolve_device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (all_gather_object; [obj] without a process group)."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def _broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------- one image
def timed_call(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(fn(*args), wall seconds), CUDA synchronised before and after so the time is the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def device_name(device: torch.device) -> str:
    """Human-readable name of the device that timed the coding."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def code_image(codec: CodecModule, image: Tensor) -> tuple[bytes, Tensor, dict[str, float]]:
    """Compress and decompress one uint8 3×H×W image; returns (bytes, decoded, timing/rate row)."""
    x = (image.float() / 255).unsqueeze(0).to(codec.device)
    height, width = image.shape[-2:]
    data, encode_s = timed_call(codec.device, codec.compress, x)
    decoded, decode_s = timed_call(codec.device, codec.decompress, data)
    bpp_est = codec.estimate_bpp(x)
    row = {
        "height": height,
        "width": width,
        "bytes": len(data),
        "bpp": 8 * len(data) / (height * width),
        "bpp_est": float(bpp_est),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }
    return data, decoded, row


def evaluate_image(
    codec: CodecModule, item: dict[str, Any], metrics: MetricSuite
) -> tuple[dict[str, Any], Tensor, bytes, tuple[Tensor, Tensor] | None]:
    """One image through the real codec -> (row, 8-bit reconstruction, bytes, FID features)."""
    data, decoded, row = code_image(codec, item["image"])
    original = item["image"].unsqueeze(0).float().to(decoded.device)
    decoded_8bit = quantize_8bit(decoded)
    row = {"name": item["name"], **row, **metrics(decoded_8bit, original)}
    features = metrics.patch_features(decoded_8bit, original) if metrics.fid else None
    if features is not None:
        row["patches"] = features[0].shape[0]
    return row, decoded_8bit, data, features


def metric_suite(options: Mapping[str, Any], device: torch.device | str) -> MetricSuite:
    """The metric networks of a `metrics` config group (configs/metrics/*.yaml) on `device`."""
    return MetricSuite(
        names=options["names"],
        fid=options["fid"],
        weights_dir=options["weights_dir"],
        pretrained=options["pretrained"],
        device=device,
    )


def defined(values: Sequence[float]) -> list[float]:
    """The values that are not NaN (a metric an image is too small for is NaN)."""
    return [v for v in values if not math.isnan(v)]


def mean(values: Sequence[float]) -> float:
    """Mean over the finite-or-inf values, ignoring NaN (metrics an image is too small for)."""
    kept = defined(values)
    return sum(kept) / len(kept) if kept else math.nan


# ---------------------------------------------------------------------------- one point
def _read_progress(progress_dir: Path) -> dict[int, dict[str, Any]]:
    """Rows of finished images by index; a line cut short by a kill is ignored (redone)."""
    rows: dict[int, dict[str, Any]] = {}
    for path in sorted(progress_dir.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row.pop("index")] = row
    return rows


def _differences(new: Any, old: Any, key: str = "") -> list[str]:
    """'key: old -> new' for every leaf of two nested dicts that differs."""
    if isinstance(new, dict) and isinstance(old, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [d for k in keys for d in _differences(new.get(k), old.get(k), f"{key}{k}.")]
    if new == old:
        return []
    return [f"{key.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]


def _check_meta(out_dir: Path, meta: dict[str, Any], resume: bool) -> None:
    """Refuse to mix results of another checkpoint or other settings into `out_dir`."""
    path = out_dir / "meta.json"
    meta = json.loads(json.dumps(meta))  # as stored: a tuple option compares as the list it reads
    if path.is_file() and resume:
        changed = _differences(meta, json.loads(path.read_text()))
        if changed:
            raise ConfigError(
                f"{out_dir} holds results of other settings ({'; '.join(changed)}); evaluate "
                "into another run_name, or pass resume=false to start it over"
            )
    elif path.is_file():  # resume=false: start over
        shutil.rmtree(out_dir / "progress", ignore_errors=True)
    path.write_text(json.dumps(meta, indent=2))


def _json_number(value: float) -> float | None:
    """JSON has no NaN: a metric that could not be computed is null."""
    return None if isinstance(value, float) and math.isnan(value) else value


def summarize_rows(
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    features: list[tuple[Tensor, Tensor]] | None,
    fid_min_patches: int,
    kid_subset_size: int = 1000,
) -> tuple[dict[str, float | None], dict[str, int], str]:
    """Per-dataset means of the per-image columns (CompressAI keys), the standard deviation of
    the timings ("<key>_std"), plus FID/KID over all patches when there are at least
    `fid_min_patches`; returns (results, images per key with a defined value, note)."""
    results, counts = {}, {}
    for column in columns:
        values = [r[column] for r in rows]
        key = result_key(column)
        results[key] = _json_number(mean(values))
        counts[key] = len(defined(values))
        if column in TIMING_COLUMNS:
            kept = defined(values)
            results[f"{key}_std"] = statistics.stdev(kept) if len(kept) > 1 else None
    note = ""
    if features is not None:
        real = torch.cat([f[0] for f in features])
        fake = torch.cat([f[1] for f in features])
        if real.shape[0] >= fid_min_patches:
            scores = fid_kid(real.double(), fake.double(), kid_subset_size=kid_subset_size)
            results.update({k: float(v) for k, v in scores.items()})
            note = f"FID/KID on {real.shape[0]} patches of 256²"
        else:
            results.update({"fid": None, "kid": None})
            note = f"FID/KID not reported: {real.shape[0]} patches < {fid_min_patches}"
    return results, counts, note


def evaluate_point(
    codec: CodecModule,
    images: Dataset,
    metrics: MetricSuite,
    out_dir: Path,
    name: str,
    description: str,
    meta: dict[str, Any] | None = None,
    save_outputs: bool = False,
    resume: bool = True,
    fid_min_patches: int = 1000,
    progress: bool = True,
    curve: str | None = None,
) -> dict[str, Any]:
    """Evaluate `codec` on every image of `images` ({"name", "image": uint8 3×H×W} or None for
    an unreadable file) on all ranks; returns the results.json content on every rank.

    `meta` holds the caller's part of the resume key (checkpoint, data settings); the model's
    fingerprint, the metric settings, the decoding options and the device type are added here.
    `curve` names the RD curve the point belongs to (`write_curves`; default `name`).
    """
    rank, world = rank_and_world()
    progress_dir = out_dir / "progress"
    features_dir = progress_dir / "features"
    meta = {
        **(meta or {}),
        "model": codec.model_fingerprint.hex(),
        "metrics": {"names": metrics.names, "fid": metrics.fid, "pretrained": metrics.pretrained},
        "encoding": codec.encoding,
        "decoding": codec.decoding,
        "device": codec.device.type,
    }
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _check_meta(out_dir, meta, resume)
        features_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    done = _read_progress(progress_dir)
    _barrier()  # every rank has read the same state before anyone appends to it

    todo = [i for i in range(len(images)) if i not in done][rank::world]
    new_rows: dict[int, dict[str, Any]] = {}
    label = f"{name} | {meta.get('dataset', description)}"
    # the whole set, finished images included: a resumed run shows "8/8" once it is done
    bar = tqdm(
        total=len(images) if world == 1 else len(todo),
        initial=len(images) - len(todo) if world == 1 else 0,
        desc=label,
        disable=not progress or rank != 0,
    )
    warmed_up = False
    with open(progress_dir / f"rank{rank}.jsonl", "a") as log, bar:
        for index in todo:
            item = images[index]
            bar.update()
            if item is None:
                continue
            if not warmed_up:  # once per point: lazy initialisation is not coding time
                code_image(codec, item["image"][:, :WARMUP_SIDE, :WARMUP_SIDE])
                warmed_up = True
            row, decoded_8bit, data, features = evaluate_image(codec, item, metrics)
            if features is not None:  # written first: a logged row always has its features
                torch.save([f.float() for f in features], features_dir / f"{index}.pt")
            if save_outputs:
                stem = out_dir / "outputs" / item["name"]
                stem.parent.mkdir(parents=True, exist_ok=True)
                stem.with_suffix(".bin").write_bytes(data)
                save_image(decoded_8bit / 255, stem.with_suffix(".png"))
            log.write(json.dumps({"index": index, **row}) + "\n")
            log.flush()
            new_rows[index] = row
            bar.set_postfix(
                bpp=f"{mean([r['bpp'] for r in new_rows.values()]):.4f}",
                psnr=f"{mean([r['psnr'] for r in new_rows.values() if 'psnr' in r]):.2f}",
            )

    gathered = gather_objects(new_rows)
    results = None
    if rank == 0:
        rows_by_index = dict(done)
        for part in gathered:
            rows_by_index.update(part)
        results = _write_point(
            rows_by_index, metrics, features_dir, out_dir, name, description, fid_min_patches
        )
        # with the device in the description: complexity tables come from the same run
        results.update(
            {"curve": curve or name, "encoding": codec.encoding, "decoding": codec.decoding}
        )
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    results = _broadcast(results)
    _barrier()
    return results


def _write_point(
    rows_by_index: dict[int, dict[str, Any]],
    metrics: MetricSuite,
    features_dir: Path,
    out_dir: Path,
    name: str,
    description: str,
    fid_min_patches: int,
) -> dict[str, Any]:
    """per_image.csv and the results of one point from the rows of all ranks (rank 0)."""
    if not rows_by_index:
        raise FileNotFoundError(f"no readable images to evaluate for {description}")
    indices = sorted(rows_by_index)
    rows = [rows_by_index[i] for i in indices]
    columns = [*BASE_COLUMNS, *metrics.names] + (["patches"] if metrics.fid else [])
    with open(out_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    features = None
    if metrics.fid:
        features = [torch.load(features_dir / f"{i}.pt", weights_only=True) for i in indices]
    averaged = [c for c in columns if c not in ("name", "height", "width", "bytes", "patches")]
    values, counts, note = summarize_rows(rows, averaged, features, fid_min_patches)
    results = {
        "name": name,
        "description": "; ".join(
            filter(None, [description, f"{len(rows)} images", "real bitstreams", note])
        ),
        "results": {k: [v] for k, v in values.items()},
        "images": len(rows),
        "counts": counts,
        "untrained_backbones": [result_key(m) for m in metrics.untrained],
    }
    return results


# ---------------------------------------------------------------------------- curves, summary
def _read_points(dataset_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(folder name, results) of every point evaluated in a dataset folder."""
    points = []
    for path in sorted(dataset_dir.glob("*/results.json")):
        if (path.parent / "meta.json").is_file():
            points.append((path.parent.name, json.loads(path.read_text())))
    return points


def write_curves(dataset_dir: Path, dataset: str) -> dict[str, Any]:
    """`<dataset_dir>/results.json`: every point evaluated in the folder, by any run, as one
    CompressAI-format curve per sweep and fixed coding-option setting ("curves"), each with one
    value per point ordered by bpp and the points' folder names ("checkpoints")."""
    by_curve: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for label, point in _read_points(dataset_dir):
        by_curve.setdefault(point.get("curve", point["name"]), []).append((label, point))
    curves = []
    for name, points in by_curve.items():
        points.sort(key=lambda p: (p[1]["results"]["bpp"][0], p[0]))
        keys = list(dict.fromkeys(k for _, p in points for k in p["results"]))
        curves.append(
            {
                "name": name,
                "description": f"{dataset}; real bitstreams; one entry per point",
                "dataset": dataset,
                "checkpoints": [label for label, _ in points],
                "encoding": [p.get("encoding", {}) for _, p in points],
                "decoding": [p.get("decoding", {}) for _, p in points],
                "images": [p.get("images") for _, p in points],
                "counts": [p.get("counts", {}) for _, p in points],
                "results": {k: [p["results"].get(k, [None])[0] for _, p in points] for k in keys},
                "untrained_backbones": sorted(
                    {u for _, p in points for u in p.get("untrained_backbones", [])}
                ),
            }
        )
    document = {
        "dataset": dataset,
        "description": f"{dataset}; real bitstreams; one curve per sweep and fixed "
        "coding-option setting",
        "curves": curves,
    }
    (dataset_dir / "results.json").write_text(json.dumps(document, indent=2))
    return document


def _format(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _header(key: str) -> str:
    return f"{key} [{UNITS[key]}]" if key in UNITS else key


def write_summary(path: Path, device: str) -> str:
    """Markdown tables of every dataset folder next to `path` (their results.json): one table
    per curve, one row per point, units in the header, image counts per point and per metric
    where a metric covers fewer images, timings as mean ± std."""
    lines = [f"# Evaluation summary\n\nReal bitstreams; this run's timings on {device}.\n"]
    for results_path in sorted(path.parent.glob("*/results.json")):
        document = json.loads(results_path.read_text())
        if "curves" not in document:
            continue
        lines.append(f"## {document['dataset']}\n")
        for curve in document["curves"]:
            keys = [k for k in curve["results"] if not k.endswith("_std")]
            lines.append(f"### {curve['name']}\n")
            lines.append("| point | images | " + " | ".join(map(_header, keys)) + " |")
            lines.append("|---" * (len(keys) + 2) + "|")
            for i, label in enumerate(curve["checkpoints"]):
                images, counts = curve["images"][i], curve["counts"][i]
                cells = []
                for key in keys:
                    cell = _format(curve["results"][key][i])
                    std = curve["results"].get(f"{key}_std", [None] * (i + 1))[i]
                    if std is not None:
                        cell += f" ± {_format(std)}"
                    if key in counts and images is not None and counts[key] < images:
                        cell += f" ({counts[key]} of {images} images)"
                    cells.append(cell)
                lines.append(f"| {label} | {images} | " + " | ".join(cells) + " |")
            if curve["untrained_backbones"]:
                untrained = ", ".join(curve["untrained_backbones"])
                lines.append(f"\n**Untrained backbones (not real numbers): {untrained}.**")
            lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text

"""Collect results.json files into rate-distortion plots and BD-rate tables.

    python scripts/collect_rd.py logs/eval compressai_results/*.json --anchor elic \\
        --metrics psnr-rgb lpips-alex --out rd

RESULTS are results.json files in CompressAI's format ({"name", "results": {"bpp": [...],
metric: [...]}}, as eval.py writes them per point), eval.py's dataset files ({"dataset",
"curves": [one such document per curve]}), folders, or glob patterns. A folder is searched
recursively for results.json, but not below a folder that has one: eval.py writes a dataset's
curves (<dataset>/results.json) above the results of its single points. Curves are grouped:

- by "dataset": one plot and one table per dataset. A file without "dataset" (CompressAI's
  published JSONs, typed-in numbers) belongs to --dataset if given, else to the one dataset the
  other inputs name, else to "default".
- by "name" within a dataset: files with the same name are one curve, their points concatenated,
  so a λ sweep evaluated checkpoint by checkpoint is one curve. --strip REGEX removes a pattern
  from every name first (e.g. --strip '_[lb][0-9.]+$' joins elic_l0.004 … elic_l0.45 as "elic").

null/NaN values are skipped per metric; MS-SSIM is also plotted and compared in dB
(ms-ssim-db = −10·log10(1 − MS-SSIM), of the mean MS-SSIM, as CompressAI plots it). Writes, per
dataset, into --out: one figure per metric, rd_<dataset>_<metric>.<format> for every --formats
(default pdf and png: axis labels with units, a marker and line style per curve, a legend),
an overview rd_<dataset>.png (one panel per metric), bd_rate_<dataset>.md and
bd_rate_<dataset>.csv (BD-rate in percent against --anchor, JVET piecewise cubic; negative =
fewer bits for the same quality; "—" where a curve has fewer than 2 points or no quality overlap
with the anchor; an "average" column over the metrics that every row has), and prints the
Markdown tables. Curves measured with an untrained metric backbone ("untrained_backbones") are
labelled "(untrained backbone)".

Errors (no input, unreadable JSON, no results/bpp, missing anchor) print one line on stderr,
naming the flag that fixes them where one does, and exit with 2.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from modules.evaluation import UNITS
from modules.metrics.bd_rate import NonMonotoneCurveError, bd_rate, higher_is_better

UNTRAINED_LABEL = " (untrained backbone)"
#: dataset of the files that name none when no input names one
DEFAULT_DATASET = "default"
#: axis labels of the results.json keys (units from modules.evaluation.UNITS)
NAMES = {
    "bpp": "Bit-rate",
    "psnr-rgb": "PSNR",
    "ms-ssim-rgb": "MS-SSIM",
    "ms-ssim-db": "MS-SSIM",
    "ssim-rgb": "SSIM",
    "lpips-alex": "LPIPS (AlexNet)",
    "lpips-vgg": "LPIPS (VGG)",
    "dists": "DISTS",
    "gmsd": "GMSD",
    "vif": "VIF",
    "fid": "FID",
    "kid": "KID",
    "encoding_time": "Encoding time",
    "decoding_time": "Decoding time",
}
#: one marker and one line style per curve: (marker i mod 8, style (i + i // 8) mod 4) differ
#: for the first 32 curves
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", "-.", ":")


class ResultsError(ValueError):
    """An input that cannot be read as results; the message names the file."""


@dataclass
class Curve:
    """The points of one named codec on one dataset: "bpp" and metric columns of equal length."""

    name: str
    columns: dict[str, list[float]] = field(default_factory=dict)
    untrained: bool = False

    @property
    def label(self) -> str:
        return self.name + (UNTRAINED_LABEL if self.untrained else "")

    def __len__(self) -> int:
        return len(self.columns.get("bpp", []))

    def add(self, results: dict[str, list[float]]) -> None:
        """Append the points of one file; metrics missing on either side are NaN."""
        size, added = len(self), len(results["bpp"])
        for key in {**self.columns, **results}:
            column = self.columns.setdefault(key, [math.nan] * size)
            column.extend(results.get(key, [math.nan] * added))

    def add_ms_ssim_db(self) -> None:
        """ms-ssim-db = −10·log10(1 − ms-ssim-rgb) (NaN where MS-SSIM is 1 or missing)."""
        if "ms-ssim-rgb" in self.columns:
            self.columns["ms-ssim-db"] = [
                -10 * math.log10(1 - v) if math.isfinite(v) and v < 1 else math.nan
                for v in self.columns["ms-ssim-rgb"]
            ]

    def points(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(bpp, metric) of the points where both are finite, sorted by bpp."""
        rate = np.asarray(self.columns["bpp"], dtype=float)
        quality = np.asarray(self.columns.get(metric, [math.nan] * len(self)), dtype=float)
        keep = np.isfinite(rate) & np.isfinite(quality)
        order = np.argsort(rate[keep], kind="stable")
        return rate[keep][order], quality[keep][order]


def _search_folder(folder: Path) -> list[Path]:
    """The topmost results.json files under `folder`: one found in a folder stands for the
    folders below it (eval.py writes a sweep's curve above its per-checkpoint points)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if "results.json" in files:
            found.append(Path(root) / "results.json")
            dirs.clear()
    return found


def find_results(inputs: list[str]) -> list[Path]:
    """results.json files named by files, folders and glob patterns, in order, each once."""
    files: dict[Path, None] = {}
    for item in inputs:
        is_pattern = any(char in item for char in "*?[")
        matches = sorted(glob.glob(item, recursive=True)) if is_pattern else [item]
        found = []
        for match in map(Path, matches):
            if match.is_dir():
                found += _search_folder(match)
            elif match.is_file():
                found.append(match)
        if not found:
            raise ResultsError(f"no results.json found at {item}")
        files.update(dict.fromkeys(path.resolve() for path in found))
    return list(files)


def _column(path: Path, key: str, values: Any) -> list[float]:
    values = values if isinstance(values, list) else [values]
    try:
        return [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        raise ResultsError(f"{path}: results[{key!r}] holds a non-number: {values}") from None


def _document(path: Path, doc: Any, dataset: str | None) -> dict[str, Any]:
    """One CompressAI-format curve as {"name", "dataset" (or None), "results", "untrained"}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        raise ResultsError(f"{path}: no 'results' object (CompressAI's results.json format)")
    if "bpp" not in doc["results"]:
        raise ResultsError(f"{path}: results have no 'bpp'")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise ResultsError(f"{path}: no 'name'")
    columns = {key: _column(path, key, values) for key, values in doc["results"].items()}
    lengths = {key: len(column) for key, column in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ResultsError(f"{path}: results columns differ in length: {lengths}")
    return {
        "name": doc["name"],
        "dataset": doc.get("dataset", dataset),
        "results": columns,
        "untrained": bool(doc.get("untrained_backbones")),
        "path": path,
    }


def load_results(path: Path) -> list[dict[str, Any]]:
    """The curves of one file: a CompressAI results.json (one curve) or an eval.py dataset
    file ({"dataset", "curves": [...]})."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("curves"), list):
        return [_document(path, curve, doc.get("dataset")) for curve in doc["curves"]]
    return [_document(path, doc, None)]


def group_curves(
    docs: list[dict[str, Any]], default_dataset: str | None = None, strip: str | None = None
) -> dict[str, dict[str, Curve]]:
    """{dataset: {name: Curve}} in input order (see the module docstring for the rules)."""
    if default_dataset is None:
        named = list(dict.fromkeys(str(d["dataset"]) for d in docs if d["dataset"]))
        unnamed = [d["path"].name for d in docs if not d["dataset"]]
        if len(named) > 1 and unnamed:
            raise ResultsError(
                f"{', '.join(dict.fromkeys(unnamed))} name no dataset and the other inputs "
                f"name several ({', '.join(named)}): pass --dataset <name> for them"
            )
        default_dataset = named[0] if named else DEFAULT_DATASET
        if named and unnamed:
            print(
                f"note: {', '.join(dict.fromkeys(unnamed))} name no dataset: taken as "
                f"{default_dataset!r} (--dataset changes it)",
                file=sys.stderr,
            )
    groups: dict[str, dict[str, Curve]] = {}
    for doc in docs:
        name = re.sub(strip, "", doc["name"]) if strip else doc["name"]
        curves = groups.setdefault(str(doc["dataset"] or default_dataset), {})
        curve = curves.setdefault(name, Curve(name))
        curve.add(doc["results"])
        curve.untrained |= doc["untrained"]
    for curves in groups.values():
        for curve in curves.values():
            curve.add_ms_ssim_db()
    return groups


def default_metrics(anchor: Curve) -> list[str]:
    """Quality columns of the anchor that hold a value: all but bpp, bpp_est and times."""
    return [
        key
        for key, values in anchor.columns.items()
        if not (key.startswith("bpp") or key.endswith(("_time", "_std")))
        and any(math.isfinite(v) for v in values)
    ]


def bd_rate_table(
    curves: dict[str, Curve], anchor: str, metrics: list[str]
) -> tuple[dict[str, dict[str, float | None]], list[str], list[str]]:
    """BD-rates (%) of every curve against `anchor` per metric plus their "average" over the
    metrics that every row has (None where not computable), anchor first; the reasons of the
    missing cells; and the metrics the average covers."""
    table, reasons = {}, []
    others = [curve for name, curve in curves.items() if name != anchor]
    for curve in [curves[anchor], *others]:
        row: dict[str, float | None] = {}
        for metric in metrics:
            try:
                row[metric] = bd_rate(
                    *curves[anchor].points(metric),
                    *curve.points(metric),
                    higher_is_better=higher_is_better(metric) is not False,
                    names=(curves[anchor].label, curve.label),
                    metric=metric,
                )
            except NonMonotoneCurveError as exc:  # names its curve and metric; once per curve
                row[metric] = None
                reasons.append(str(exc))
            except ValueError as exc:
                row[metric] = None
                reasons.append(f"{curve.label} / {metric}: {exc}")
        table[curve.label] = row
    common = [m for m in metrics if all(row[m] is not None for row in table.values())]
    for row in table.values():
        row["average"] = sum(row[m] for m in common) / len(common) if common else None
    return table, list(dict.fromkeys(reasons)), common


def format_cell(value: float | None) -> str:
    """BD-rate as the table shows it: signed, two decimals, "—" when missing."""
    if value is None:
        return "—"
    text = f"{value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def markdown_table(
    table: dict[str, dict[str, float | None]], heading: str, averaged: list[str]
) -> str:
    """The BD-rate table in Markdown under a heading."""
    columns = list(next(iter(table.values())))
    lines = [
        f"### {heading}",
        "",
        "| curve | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(format_cell(row[c]) for c in columns) + " |")
    lines += [
        "",
        "BD-rate in % (negative: fewer bits than the anchor for the same quality); average over "
        + (", ".join(averaged) if averaged else "no metric (none is available for every row)")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def write_csv(table: dict[str, dict[str, float | None]], path: Path) -> None:
    """The BD-rate table with full-precision numbers; empty cells where not computable."""
    columns = list(next(iter(table.values())))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", *columns])
        for label, row in table.items():
            writer.writerow([label, *("" if row[c] is None else row[c] for c in columns)])


def axis_label(key: str) -> str:
    """Axis label of a results key with its unit: "Bit-rate [bpp]", "PSNR [dB]"."""
    unit = "dB" if key == "ms-ssim-db" else UNITS.get(key)
    name = NAMES.get(key, key)
    return f"{name} [{unit}]" if unit else name


def _style(index: int, name: str, anchor: str) -> dict[str, Any]:
    style = {
        "marker": MARKERS[index % len(MARKERS)],
        "linestyle": LINE_STYLES[(index + index // len(MARKERS)) % len(LINE_STYLES)],
    }
    return {**style, "color": "black"} if name == anchor else style


def _panel(ax, curves: dict[str, Curve], anchor: str, metric: str, log_rate: bool) -> None:
    """One RD panel: every curve with its own marker and line style, labelled axes, a legend."""
    for index, (name, curve) in enumerate(curves.items()):
        rate, quality = curve.points(metric)
        ax.plot(rate, quality, markersize=5, label=curve.label, **_style(index, name, anchor))
    direction = higher_is_better(metric)
    ax.set_title(axis_label(metric) + {False: " (lower is better)"}.get(direction, ""))
    ax.set_xlabel(axis_label("bpp"))
    ax.set_ylabel(axis_label(metric))
    if log_rate:
        ax.set_xscale("log")
        # plain decimals at 1-2-5 steps (the default sci-notation minor labels overlap)
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_rd(
    curves: dict[str, Curve],
    anchor: str,
    metrics: list[str],
    stem: Path,
    title: str,
    log_rate: bool = False,
    formats: tuple[str, ...] = ("pdf", "png"),
) -> list[Path]:
    """One figure per metric (`<stem>_<metric>.<format>`) and an overview with one panel per
    metric (`<stem>.png`); returns the files written."""
    written = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(4.8, 3.8))
        _panel(ax, curves, anchor, metric, log_rate)
        fig.suptitle(title)
        fig.tight_layout()
        for fmt in formats:
            path = stem.with_name(f"{stem.name}_{re.sub(r'[^A-Za-z0-9._-]+', '_', metric)}.{fmt}")
            fig.savefig(path, dpi=300)
            written.append(path)
        plt.close(fig)
    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        _panel(ax, curves, anchor, metric, log_rate)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=150)
    plt.close(fig)
    return [*written, stem.with_suffix(".png")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="results.json files, folders or globs")
    parser.add_argument("--anchor", required=True, help="name of the reference curve")
    parser.add_argument("--metrics", nargs="+", help="default: every quality key of the anchor")
    parser.add_argument("--out", type=Path, default=Path("rd"), help="output folder")
    parser.add_argument("--title", help="title of the plots and tables")
    parser.add_argument(
        "--dataset",
        help="dataset of files that name none (default: the one dataset the others name)",
    )
    parser.add_argument(
        "--formats", nargs="+", default=["pdf", "png"], help="formats of the per-metric figures"
    )
    parser.add_argument("--strip", help="regex removed from every name before grouping")
    parser.add_argument("--log-rate", action="store_true", help="logarithmic bpp axis")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[str]:
    """Write the plot and tables of every dataset; returns the Markdown tables."""
    try:
        groups = group_curves(
            [doc for path in find_results(args.results) for doc in load_results(path)],
            args.dataset,
            args.strip,
        )
    except re.error as exc:
        raise ResultsError(f"--strip {args.strip!r} is not a valid regex ({exc})") from None
    for dataset, curves in groups.items():
        if args.anchor not in curves:
            fixes = "--anchor <one of them>, --strip <regex> to join names"
            if len(groups) > 1:
                fixes += ", or --dataset <name> for the files that name no dataset"
            raise ResultsError(
                f"anchor {args.anchor!r} not found in dataset {dataset!r}; curves there: "
                f"{', '.join(curves)} (fix: {fixes})"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    tables, unknown = [], set()
    for dataset, curves in groups.items():
        metrics = list(dict.fromkeys(args.metrics or default_metrics(curves[args.anchor])))
        absent = [m for m in metrics if not any(m in c.columns for c in curves.values())]
        if not metrics or absent:
            raise ResultsError(f"dataset {dataset!r} has no metric {absent or 'besides bpp'}")
        for metric in metrics:
            if higher_is_better(metric) is None and metric not in unknown:
                unknown.add(metric)
                print(
                    f"note: unknown metric {metric!r}, taken as higher-is-better", file=sys.stderr
                )
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset)
        title = f"{args.title} — {dataset}" if args.title else dataset
        table, reasons, averaged = bd_rate_table(curves, args.anchor, metrics)
        for reason in reasons:
            print(f"note: {dataset}: no BD-rate for {reason}", file=sys.stderr)
        anchor_label = curves[args.anchor].label
        heading = f"{title}: BD-rate (%) against {anchor_label}"
        markdown = markdown_table(table, heading, averaged)
        (args.out / f"bd_rate_{stem}.md").write_text(markdown)
        write_csv(table, args.out / f"bd_rate_{stem}.csv")
        plot_rd(
            curves,
            args.anchor,
            metrics,
            args.out / f"rd_{stem}",
            title,
            args.log_rate,
            tuple(args.formats),
        )
        tables.append(markdown)
    return tables


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tables = run(args)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(tables), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

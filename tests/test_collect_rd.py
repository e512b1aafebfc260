"""scripts/collect_rd.py with eval.py's dataset files and CompressAI's published JSON files, and
paper-ready plots: units on the axes, a style and legend per curve, one file per metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from modules.metrics.bd_rate import bd_rate
from tests.conftest import load_script

RATE = [0.1, 0.2, 0.4, 0.8]
PSNR = [28.0, 30.0, 32.5, 35.0]
MS_SSIM = [0.90, 0.94, 0.97, 0.985]


@pytest.fixture(scope="module")
def collect_rd():
    return load_script("collect_rd")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """Our Kodak results as eval.py writes them (two curves in one dataset file) and a
    CompressAI published file (no dataset key), in CompressAI's folder layout."""
    ours = {
        "dataset": "kodak",
        "curves": [
            {"name": "rdeic", "results": {"bpp": RATE, "psnr-rgb": PSNR, "ms-ssim-rgb": MS_SSIM}},
            {
                "name": "rdeic (steps=5)",
                "results": {"bpp": RATE, "psnr-rgb": [q + 0.2 for q in PSNR]},  # no MS-SSIM
            },
        ],
    }
    (tmp_path / "ours" / "kodak").mkdir(parents=True)
    (tmp_path / "ours" / "kodak" / "results.json").write_text(json.dumps(ours))
    compressai = {
        "name": "elic",
        "description": "published",
        "results": {"bpp": RATE, "psnr-rgb": [q - 1 for q in PSNR], "ms-ssim-rgb": MS_SSIM},
    }
    (tmp_path / "compressai" / "kodak").mkdir(parents=True)
    (tmp_path / "compressai" / "kodak" / "elic.json").write_text(json.dumps(compressai))
    return tmp_path


def test_compressai_files_without_dataset_join_ours(collect_rd, inputs, capsys):
    out = inputs / "out"
    argv = [str(inputs / "ours"), str(inputs / "compressai" / "kodak" / "elic.json")]
    metrics = ["--metrics", "psnr-rgb", "ms-ssim-db", "--formats", "pdf", "png"]
    assert collect_rd.main([*argv, "--anchor=elic", f"--out={out}", *metrics]) == 0
    captured = capsys.readouterr()
    assert "elic.json name no dataset: taken as 'kodak' (--dataset changes it)" in captured.err
    table = (out / "bd_rate_kodak.md").read_text()
    rdeic_psnr = bd_rate(RATE, [q - 1 for q in PSNR], RATE, PSNR)
    assert f"| rdeic | {rdeic_psnr:+.2f} |" in table
    # the average covers only the metrics every row has: "rdeic (steps=5)" has no MS-SSIM
    assert "| curve | psnr-rgb | ms-ssim-db | average |" in table
    assert "average over psnr-rgb." in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert rows["rdeic"].endswith(f"| {rdeic_psnr:+.2f} |")  # average = its PSNR BD-rate
    for metric in ("psnr-rgb", "ms-ssim-db"):
        for fmt in ("pdf", "png"):
            assert (out / f"rd_kodak_{metric}.{fmt}").stat().st_size > 1000
    assert (out / "rd_kodak.png").is_file()


def test_mismatched_datasets_name_the_flag_that_fixes_them(collect_rd, inputs, capsys):
    clic = {"dataset": "clic", "curves": [{"name": "x", "results": {"bpp": RATE, "psnr": PSNR}}]}
    (inputs / "ours" / "clic").mkdir()
    (inputs / "ours" / "clic" / "results.json").write_text(json.dumps(clic))
    argv = [
        str(inputs / "ours"),
        str(inputs / "compressai" / "kodak" / "elic.json"),
        "--anchor=elic",
    ]
    assert collect_rd.main([*argv, f"--out={inputs}/o"]) == 2
    error = capsys.readouterr().err.strip()
    assert "elic.json name no dataset" in error and "pass --dataset <name>" in error
    assert collect_rd.main([*argv, "--dataset=kodak", f"--out={inputs}/o"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "anchor 'elic' not found in dataset 'clic'" in error and "--dataset <name>" in error


def test_ms_ssim_in_db(collect_rd):
    curve = collect_rd.Curve("x", {"bpp": [0.1, 0.2], "ms-ssim-rgb": [0.9, 1.0]})
    curve.add_ms_ssim_db()
    assert curve.columns["ms-ssim-db"][0] == pytest.approx(10.0)  # −10·log10(0.1)
    assert math.isnan(curve.columns["ms-ssim-db"][1])  # MS-SSIM of 1: no finite dB value


def test_every_panel_has_units_a_legend_and_a_style_per_curve(collect_rd):
    curves = {
        name: collect_rd.Curve(name, {"bpp": RATE, "psnr-rgb": PSNR}) for name in "abcdefghij"
    }
    fig, ax = plt.subplots()
    collect_rd._panel(ax, curves, "a", "psnr-rgb", log_rate=False)
    assert ax.get_xlabel() == "Bit-rate [bpp]" and ax.get_ylabel() == "PSNR [dB]"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list("abcdefghij")
    styles = [(line.get_marker(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(set(styles)) == len(styles)
    assert len({marker for marker, _ in styles[:8]}) == 8
    plt.close(fig)
    assert collect_rd.axis_label("ms-ssim-db") == "MS-SSIM [dB]"
    assert collect_rd.axis_label("lpips-alex") == "LPIPS (AlexNet)"
    styles = [tuple(collect_rd._style(i, str(i), "").values()) for i in range(32)]
    assert len(set(styles)) == 32

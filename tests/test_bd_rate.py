"""BD-rate (JVET piecewise cubic) against closed forms and a hand-written PCHIP; the RD CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.metrics.bd_rate import NonMonotoneCurveError, bd_quality, bd_rate, higher_is_better
from tests.conftest import ROOT, run_script

RATE = [0.08, 0.15, 0.23, 0.45, 0.8]
PSNR = [27.9, 29.6, 31.0, 33.4, 35.2]
LPIPS = [0.31, 0.22, 0.17, 0.11, 0.07]


def test_curve_against_itself_is_exactly_zero():
    assert bd_rate(RATE, PSNR, RATE, PSNR) == 0.0
    assert bd_rate(RATE, LPIPS, RATE, LPIPS, higher_is_better=False) == 0.0


@pytest.mark.parametrize(
    ("factor", "expected"), [(1.1, 10.0), (1 / 1.1, 100 * (1 / 1.1 - 1)), (0.5, -50.0)]
)
def test_constant_rate_factor(factor, expected):
    scaled = [r * factor for r in RATE]
    assert bd_rate(RATE, PSNR, scaled, PSNR) == pytest.approx(expected, abs=1e-9)
    # lower-is-better metric, points given in another order
    order = [3, 0, 4, 2, 1]
    lpips = [LPIPS[i] for i in order]
    result = bd_rate(RATE, LPIPS, [scaled[i] for i in order], lpips, higher_is_better=False)
    assert result == pytest.approx(expected, abs=1e-9)


def test_rate_factor_of_minus_9_09_percent():
    scaled = [r / 1.1 for r in RATE]
    assert bd_rate(RATE, PSNR, scaled, PSNR) == pytest.approx(-9.090909090909, abs=1e-9)


def test_lower_is_better_sign():
    """Lower LPIPS at the same rates is a saving, higher LPIPS a cost; the direction flag only
    reflects the quality axis, which leaves the PCHIP mean unchanged."""
    better = [v - 0.01 for v in LPIPS]
    worse = [v + 0.01 for v in LPIPS]
    saving = bd_rate(RATE, LPIPS, RATE, better, higher_is_better=False)
    cost = bd_rate(RATE, LPIPS, RATE, worse, higher_is_better=False)
    assert saving < -1 and cost > 1
    negated = bd_rate(RATE, [-v for v in LPIPS], RATE, [-v for v in better])
    assert negated == pytest.approx(saving, abs=1e-12)
    with pytest.raises(NonMonotoneCurveError):  # LPIPS taken as higher-is-better: dips
        bd_rate(RATE, LPIPS, RATE, better)


def test_log_rate_linear_in_quality_matches_analytic_integral():
    # log10 R = a + b·q for the anchor, c + d·q for the test; PCHIP reproduces lines exactly,
    # so BD-rate = 10^(mean over the overlap of (c − a) + (d − b)·q) − 1
    a, b, c, d = -4.0, 0.1, -3.5, 0.085
    anchor_q = np.array([30.0, 31.0, 33.5, 36.0, 38.0])
    test_q = np.array([32.5, 34.0, 37.0, 39.0, 40.0])
    low, high = 32.5, 38.0
    expected = 100 * (10 ** ((c - a) + (d - b) * (low + high) / 2) - 1)
    result = bd_rate(10 ** (a + b * anchor_q), anchor_q, 10 ** (c + d * test_q), test_q)
    assert result == pytest.approx(expected, abs=1e-9)
    assert abs(expected) > 1  # a non-trivial value


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch–Butland PCHIP derivatives (Moler, Numerical Computing with MATLAB, §3.4)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    slopes = np.zeros_like(y)
    for k in range(1, len(x) - 1):
        if delta[k - 1] * delta[k] > 0:
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            slopes[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])

    def end(h0, h1, d0, d1):
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(s) != np.sign(d0):
            return 0.0
        if np.sign(d0) != np.sign(d1) and abs(s) > abs(3 * d0):
            return 3 * d0
        return s

    slopes[0] = end(h[0], h[1], delta[0], delta[1])
    slopes[-1] = end(h[-1], h[-2], delta[-1], delta[-2])
    return slopes


def _hermite_integral(x: np.ndarray, y: np.ndarray, low: float, high: float) -> float:
    """Integral of the cubic Hermite interpolant between two of its knots, interval by interval:
    ∫ = h·(y0 + y1)/2 + h²·(d0 − d1)/12."""
    slopes = _pchip_slopes(x, y)
    total = 0.0
    for k in range(len(x) - 1):
        if x[k] >= low and x[k + 1] <= high:
            h = x[k + 1] - x[k]
            total += h * (y[k] + y[k + 1]) / 2 + h**2 * (slopes[k] - slopes[k + 1]) / 12
    return total


def test_matches_hand_written_pchip():
    # the overlap [30.5, 37.5] starts and ends on knots of both curves; the test curve's slopes
    # vary strongly (a nearly flat stretch) and its first knot uses the end-point formula
    anchor_q = np.array([28.0, 30.5, 32.0, 35.0, 37.5])
    anchor_r = np.array([0.07, 0.16, 0.21, 0.52, 0.95])
    test_q = np.array([30.5, 32.0, 35.0, 37.5, 39.0])
    test_r = np.array([0.1, 0.16, 0.161, 0.5, 0.9])
    low, high = 30.5, 37.5
    mean = (
        _hermite_integral(test_q, np.log10(test_r), low, high)
        - _hermite_integral(anchor_q, np.log10(anchor_r), low, high)
    ) / (high - low)
    expected = 100 * (10**mean - 1)
    assert bd_rate(anchor_r, anchor_q, test_r, test_q) == pytest.approx(expected, abs=1e-9)


def test_non_monotone_curve_is_refused_naming_the_curve_and_the_point():
    """A dipping point made the old code return +0.04 %; the bjontegaard package refuses."""
    dip = [27.9, 29.6, 31.0, 30.9, 35.2]  # the 4th point (bpp 0.45) is worse than the 3rd
    with pytest.raises(NonMonotoneCurveError) as error:
        bd_rate(RATE, PSNR, RATE, dip, names=("elic", "cdc"), metric="psnr-rgb")
    assert str(error.value) == (
        "cdc curve is not monotone in psnr-rgb: point 4 of 5 (bpp 0.45, psnr-rgb 30.9) is no "
        "better than point 3 (bpp 0.23, psnr-rgb 31)"
    )
    with pytest.raises(NonMonotoneCurveError, match=r"anchor curve .* point 4 of 5"):
        bd_rate(RATE, dip, RATE, PSNR)
    # lower is better: LPIPS rising from bpp 0.15 to 0.23 is a dip, points in any order
    order = [4, 2, 0, 1, 3]
    lpips = [0.31, 0.22, 0.23, 0.11, 0.07]
    with pytest.raises(
        NonMonotoneCurveError,
        match=r"point 2 of 5 \(bpp 0.23, quality 0.23\) is no better than point 4 \(bpp 0.15,",
    ):
        rate = [RATE[i] for i in order]
        bd_rate(RATE, LPIPS, rate, [lpips[i] for i in order], higher_is_better=False)
    with pytest.raises(NonMonotoneCurveError):
        bd_quality(RATE, PSNR, RATE, dip)
    assert bd_rate(RATE, LPIPS, RATE, LPIPS, higher_is_better=False) == 0.0  # monotone: fine


def test_collect_rd_notes_a_non_monotone_curve_in_one_line(collect_rd, tmp_path, capsys):
    _write(tmp_path / "a.json", {"name": "anchor", "results": {"bpp": RATE, "psnr-rgb": PSNR}})
    dip = [27.9, 29.6, 31.0, 30.9, 35.2]
    _write(tmp_path / "b.json", {"name": "dipping", "results": {"bpp": RATE, "psnr-rgb": dip}})
    assert collect_rd.main([str(tmp_path / "*.json"), "--anchor=anchor", f"--out={tmp_path}"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "monotone" in line]
    assert notes == [
        "note: default: no BD-rate for dipping curve is not monotone in psnr-rgb: point 4 of 5 "
        "(bpp 0.45, psnr-rgb 30.9) is no better than point 3 (bpp 0.23, psnr-rgb 31)"
    ]
    assert _read_csv(tmp_path / "bd_rate_default.csv")["dipping"]["psnr-rgb"] == ""


def test_bd_quality_of_log_linear_curve():
    # PSNR = 10 + 8·log10(R): 1.1× the rate at equal PSNR is −8·log10(1.1) dB at equal rate
    psnr = [10 + 8 * math.log10(r) for r in RATE]
    scaled = [r * 1.1 for r in RATE]
    assert bd_quality(RATE, psnr, scaled, psnr) == pytest.approx(-8 * math.log10(1.1), abs=1e-9)
    assert bd_quality(RATE, psnr, RATE, psnr) == 0.0


@pytest.mark.parametrize(
    ("anchor_q", "test_q", "match"),
    [
        ([30.0, 32.0], [33.0, 35.0], "do not overlap"),
        ([30.0], [30.0, 31.0], "at least 2 points"),
        ([30.0, 30.0], [30.0, 31.0], "not monotone in quality: point 2 of 2"),
        ([30.0, math.nan], [30.0, 31.0], "finite"),
    ],
)
def test_invalid_curves_raise(anchor_q, test_q, match):
    with pytest.raises(ValueError, match=match):
        bd_rate([0.1, 0.2][: len(anchor_q)], anchor_q, [0.1, 0.2], test_q)


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("psnr-rgb", True),
        ("ms-ssim-rgb", True),
        ("vif", True),
        ("lpips-alex", False),
        ("LPIPS_vgg", False),
        ("dists", False),
        ("fid", False),
        ("kid", False),
        ("gmsd", False),
        ("niqe", False),
        ("pieapp", False),
        ("kidney", None),
        ("clip-score", None),
    ],
)
def test_metric_direction_table(metric, expected):
    assert higher_is_better(metric) is expected


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """An anchor curve and a 1.1×-rate curve as eval.py writes them (the latter checkpoint by
    checkpoint, one file per point), a better curve and a second dataset in loose JSON files."""
    null = [None] * len(RATE)
    _write(
        tmp_path / "runs" / "anchor" / "results.json",
        {
            "name": "anchor",
            "dataset": "kodak",
            "results": {
                "bpp": RATE,
                "psnr-rgb": PSNR,
                "lpips-alex": LPIPS,
                "fid": null,
                "encoding_time": [1.0] * len(RATE),
            },
        },
    )
    # a point below a curve (eval.py's layout) is not read again: it would duplicate a point
    _write(
        tmp_path / "runs" / "anchor" / "anchor-last" / "results.json",
        {"name": "anchor", "results": {"bpp": RATE[:1], "psnr-rgb": PSNR[:1]}},
    )
    for i, (rate, psnr, lpips) in enumerate(zip(RATE, PSNR, LPIPS, strict=True)):
        doc = {
            "name": f"more_l{i}",
            "dataset": "kodak",
            "results": {"bpp": [rate * 1.1], "psnr-rgb": [psnr], "lpips-alex": [lpips]},
        }
        if i == 0:
            doc["untrained_backbones"] = ["lpips-alex"]
        _write(tmp_path / "runs" / f"more_l{i}" / "results.json", doc)
    better = {
        "bpp": RATE,
        "psnr-rgb": [q + 0.5 for q in PSNR],
        "lpips-alex": [v - 0.01 for v in LPIPS],
    }
    _write(tmp_path / "extra" / "better.json", {"name": "better", "results": better})
    _write(
        tmp_path / "extra" / "clic.json",
        {
            "name": "anchor",
            "dataset": "clic",
            "results": {"bpp": [0.1, 0.3], "psnr-rgb": [30, 33]},
        },
    )
    return tmp_path


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["curve"]: row for row in csv.DictReader(f)}


def test_collect_rd_writes_plots_and_tables(results_dir: Path):
    out = results_dir / "out"
    result = run_script(
        "scripts/collect_rd.py",
        str(results_dir / "runs"),
        str(results_dir / "extra" / "*.json"),
        "--anchor=anchor",
        "--dataset=kodak",
        "--strip=_l[0-9]+$",
        f"--out={out}",
        "--log-rate",
    )
    assert result.returncode == 0, result.stderr
    for dataset in ("kodak", "clic"):
        with Image.open(out / f"rd_{dataset}.png") as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100

    table = _read_csv(out / "bd_rate_kodak.csv")
    assert list(next(iter(table.values()))) == ["curve", "psnr-rgb", "lpips-alex", "average"]
    assert list(table) == ["anchor", "more (untrained backbone)", "better"]
    assert {float(v) for k, v in table["anchor"].items() if k != "curve"} == {0.0}
    for column in ("psnr-rgb", "lpips-alex", "average"):
        assert float(table["more (untrained backbone)"][column]) == pytest.approx(10, abs=1e-9)
    better_psnr = bd_rate(RATE, PSNR, RATE, [q + 0.5 for q in PSNR])
    better_lpips = bd_rate(RATE, LPIPS, RATE, [v - 0.01 for v in LPIPS], higher_is_better=False)
    assert better_psnr < 0 and better_lpips < 0
    assert float(table["better"]["psnr-rgb"]) == pytest.approx(better_psnr, abs=1e-9)
    assert float(table["better"]["lpips-alex"]) == pytest.approx(better_lpips, abs=1e-9)
    assert float(table["better"]["average"]) == pytest.approx((better_psnr + better_lpips) / 2)

    markdown = (out / "bd_rate_kodak.md").read_text()
    assert "| anchor | 0.00 | 0.00 | 0.00 |" in markdown
    assert "| more (untrained backbone) | +10.00 | +10.00 | +10.00 |" in markdown
    assert f"| better | {better_psnr:+.2f} | {better_lpips:+.2f} |" in markdown
    assert markdown in result.stdout
    clic = _read_csv(out / "bd_rate_clic.csv")
    assert list(clic) == ["anchor"] and float(clic["anchor"]["psnr-rgb"]) == 0.0


def test_collect_rd_missing_anchor_is_one_line_error(results_dir: Path):
    out = results_dir / "out"
    result = run_script(
        "scripts/collect_rd.py", str(results_dir / "runs"), "--anchor=elic", f"--out={out}"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'elic'" in lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def collect_rd():
    """scripts/collect_rd.py imported in-process (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("collect_rd", ROOT / "scripts" / "collect_rd.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a readable JSON file"),
        (json.dumps({"name": "x", "results": {"psnr-rgb": [30]}}), "no 'bpp'"),
        (json.dumps({"name": "x", "bpp": [0.1]}), "no 'results'"),
        (json.dumps({"name": "x", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [1]}}), "length"),
    ],
)
def test_collect_rd_bad_results_exit_2(collect_rd, tmp_path, capsys, content, match):
    path = tmp_path / "results.json"
    path.write_text(content)
    assert collect_rd.main([str(path), "--anchor=x", f"--out={tmp_path / 'out'}"]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and match in stderr and str(path) in stderr


def test_collect_rd_no_input_exit_2(collect_rd, tmp_path, capsys):
    assert collect_rd.main([str(tmp_path / "nothing*.json"), "--anchor=x"]) == 2
    assert "no results.json found" in capsys.readouterr().err

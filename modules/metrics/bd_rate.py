"""Bjøntegaard delta rate and quality between two rate-distortion curves, the JVET way.

As in the JVET common-test-conditions tools (VTM spreadsheet, piecewise cubic variant): log10 of
the rate is interpolated as a function of quality with a monotone piecewise cubic Hermite
interpolant (PCHIP) and both curves are integrated exactly over the quality range they share.
BD-rate is the average rate difference in percent (negative: the test curve needs fewer bits for
the same quality); BD-quality is the average metric difference at the same rate. A curve whose
quality does not improve with every step up in rate is refused (`NonMonotoneCurveError`, naming
the curve and the point), as the `bjontegaard` package refuses it: its interpolant would be no
rate-quality trade-off, and the number it gives no saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from scipy.interpolate import PchipInterpolator

#: metrics where lower values are better, matched by name prefix ("lpips-alex", "fid_patches")
LOWER_IS_BETTER = ("lpips", "dists", "fid", "kid", "gmsd", "niqe", "pieapp")
#: metrics where higher values are better
HIGHER_IS_BETTER = ("psnr", "ms-ssim", "ms_ssim", "msssim", "ssim", "vif")


def _matches(metric: str, prefix: str) -> bool:
    return metric == prefix or (metric.startswith(prefix) and not metric[len(prefix)].isalpha())


def higher_is_better(metric: str) -> bool | None:
    """Whether higher values of `metric` are better; None for a metric in neither table."""
    name = metric.lower()
    if any(_matches(name, prefix) for prefix in LOWER_IS_BETTER):
        return False
    if any(_matches(name, prefix) for prefix in HIGHER_IS_BETTER):
        return True
    return None


class NonMonotoneCurveError(ValueError):
    """A rate-quality curve whose quality gets worse (or stays) as the rate grows."""


def _curve(
    rate: Sequence[float],
    quality: Sequence[float],
    which: str,
    higher_is_better: bool = True,
    metric: str = "quality",
) -> tuple[np.ndarray, ...]:
    """Validated (log10 rate, quality) arrays of one curve; refused unless its quality improves
    strictly from each point to the next higher rate."""
    rate, quality = np.asarray(rate, dtype=float), np.asarray(quality, dtype=float)
    if rate.ndim != 1 or rate.shape != quality.shape:
        raise ValueError(
            f"{which} curve: rate and quality must be 1-D of equal length, "
            f"got shapes {rate.shape} and {quality.shape}"
        )
    if len(rate) < 2:
        raise ValueError(f"{which} curve: BD metrics need at least 2 points, got {len(rate)}")
    if not (np.isfinite(rate).all() and np.isfinite(quality).all()):
        raise ValueError(f"{which} curve: rates and qualities must be finite")
    if (rate <= 0).any():
        raise ValueError(f"{which} curve: rates must be positive, got {rate.tolist()}")
    sign = 1.0 if higher_is_better else -1.0
    for lower, point in pairwise(np.argsort(rate, kind="stable").tolist()):
        if not sign * quality[point] > sign * quality[lower]:
            raise NonMonotoneCurveError(
                f"{which} curve is not monotone in {metric}: point {point + 1} of {len(rate)} "
                f"(bpp {rate[point]:g}, {metric} {quality[point]:g}) is no better than point "
                f"{lower + 1} (bpp {rate[lower]:g}, {metric} {quality[lower]:g})"
            )
    return np.log10(rate), quality


def _interpolant(x: np.ndarray, y: np.ndarray, which: str, axis: str) -> PchipInterpolator:
    """PCHIP of y over x, points sorted by x; equal x values are an error."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if (np.diff(x) == 0).any():
        raise ValueError(
            f"{which} curve has duplicate {axis} values {x.tolist()}; "
            f"interpolating over {axis} needs distinct points"
        )
    return PchipInterpolator(x, y)


def _mean_difference(anchor: PchipInterpolator, test: PchipInterpolator, axis: str) -> float:
    """Mean of test − anchor over the overlap of the two interpolants' domains."""
    low = max(anchor.x[0], test.x[0])
    high = min(anchor.x[-1], test.x[-1])
    if low >= high:
        raise ValueError(
            f"the curves' {axis} ranges do not overlap: anchor [{anchor.x[0]:g}, "
            f"{anchor.x[-1]:g}], test [{test.x[0]:g}, {test.x[-1]:g}]"
        )
    difference = test.integrate(low, high) - anchor.integrate(low, high)
    return float(difference / (high - low))


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    higher_is_better: bool = True,
    names: tuple[str, str] = ("anchor", "test"),
    metric: str = "quality",
) -> float:
    """BD-rate of the test curve against the anchor in percent (JVET, piecewise cubic).

    For a lower-is-better metric (LPIPS, DISTS, FID, ...) pass `higher_is_better=False`: the
    quality is negated so that it increases with rate, as the JVET tools expect (PCHIP and the
    mean over the overlap are symmetric under that reflection, so the value does not change).
    Raises ValueError for a curve of fewer than 2 points, non-positive rates, non-finite values,
    duplicate qualities, or quality ranges that do not overlap, and NonMonotoneCurveError for a
    curve not monotone in the metric; messages name the curve by `names` and the `metric`.
    """
    sign, axis = (1.0, "quality") if higher_is_better else (-1.0, "negated quality")
    anchor_name, test_name = names
    anchor_log_rate, anchor_q = _curve(
        anchor_rate, anchor_quality, anchor_name, higher_is_better, metric
    )
    test_log_rate, test_q = _curve(test_rate, test_quality, test_name, higher_is_better, metric)
    anchor = _interpolant(sign * anchor_q, anchor_log_rate, "anchor", axis)
    test = _interpolant(sign * test_q, test_log_rate, "test", axis)
    return (10 ** _mean_difference(anchor, test, axis) - 1) * 100


def bd_quality(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    higher_is_better: bool = True,
) -> float:
    """BD-quality (BD-PSNR for PSNR): mean test − anchor metric value at equal rate.

    The metric is interpolated over log10(rate) with the same piecewise cubic interpolant and
    averaged over the shared rate range; the result is in the metric's units (for LPIPS a
    negative value is an improvement). Raises ValueError like `bd_rate`, for duplicate rates.
    """
    anchor_log_rate, anchor_q = _curve(anchor_rate, anchor_quality, "anchor", higher_is_better)
    test_log_rate, test_q = _curve(test_rate, test_quality, "test", higher_is_better)
    anchor = _interpolant(anchor_log_rate, anchor_q, "anchor", "log10(rate)")
    test = _interpolant(test_log_rate, test_q, "test", "log10(rate)")
    return _mean_difference(anchor, test, "log10(rate)")

"""Statistics over subjects (issue 30 §4): a bootstrap 95 % interval on a mean, and a paired test for "A beats B".

A benchmark scores each model on the same test subjects, so two models' scores are paired by subject. Subjects are
the independent units (voxels of one head are not), so both tools work on per-subject values: one number per
subject and model, as ``evaluate mri2ct`` writes them in its ``patients`` rows.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # 95 % intervals; "A beats B" at p < 0.05


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """The bootstrap ``confidence`` interval of the mean of per-subject ``values`` (scipy's ``stats.bootstrap``,
    BCa; percentile when BCa cannot be formed). NaN values (a subject without the class) are left out; fewer than
    two values give ``(nan, nan)``, as do values that are all equal."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size < 2 or np.all(x == x[0]):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    result = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="BCa",
                             random_state=rng)
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa's acceleration is undefined for some small samples
        result = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples,
                                 method="percentile", random_state=np.random.default_rng(seed))
        low, high = result.confidence_interval
    return float(low), float(high)


def mean_with_interval(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``{"mean", "low", "high", "n"}``: the mean of the finite per-subject values and its bootstrap interval."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    low, high = bootstrap_interval(x, confidence, seed=seed)
    return {"mean": float(x.mean()) if x.size else float("nan"), "low": low, "high": high, "n": int(x.size)}


def paired_comparison(a: Sequence[float], b: Sequence[float], lower_is_better: bool = True,
                      alpha: float = ALPHA, seed: int = 0) -> dict:
    """Does A beat B on the same subjects? The Wilcoxon signed-rank test of the per-subject differences ``a - b``
    (scipy's ``stats.wilcoxon``, two-sided, exact for small n without ties), with the mean difference and its
    bootstrap interval.

    Args:
        a, b: per-subject scores of the two models, in the same subject order (same length).
        lower_is_better: True for errors (MAE, CRPS), False for scores (PSNR, SSIM).
        alpha: the test's level: A beats B when p < alpha and A's side of the mean difference is the better one.

    Returns:
        ``{"n", "mean_difference" (a - b), "difference_interval": [low, high], "statistic", "p_value",
        "a_beats_b", "b_beats_a"}``.

    Raises:
        ValueError: different lengths, or fewer than 2 pairs.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two 1-D sequences of one length, got {a.shape} and {b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if d.size < 2:
        raise ValueError(f"a paired test needs at least 2 subjects scored by both, got {d.size}.")
    if np.all(d == 0):
        statistic, p = float("nan"), 1.0
    else:
        statistic, p = stats.wilcoxon(d, alternative="two-sided")
    better = -1.0 if lower_is_better else 1.0
    significant = bool(p < alpha)
    return {"n": int(d.size), "mean_difference": float(d.mean()),
            "difference_interval": list(bootstrap_interval(d, 1.0 - alpha, seed=seed)),
            "statistic": float(statistic), "p_value": float(p),
            "a_beats_b": significant and better * d.mean() > 0, "b_beats_a": significant and better * d.mean() < 0}

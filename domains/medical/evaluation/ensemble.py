"""Distribution-free checks of K samples against the truth (issue 30 §2), beside the Gaussian ones of ``metrics.py``.

For K samples that are exchangeable with the truth (what a calibrated sampler draws), whatever their law:

- the **rank** of the truth among the samples (how many samples lie below it) is uniform on 0..K, so the rank
  histogram is flat (``rank_histogram``, with Pearson's chi-square against flat);
- the interval **[min, max]** of the samples covers the truth with probability (K - 1) / (K + 1)
  (``minmax_coverage``, ``expected_minmax_coverage``);
- the **CRPS** (continuous ranked probability score, Gneiting & Raftery 2007) scores the sample ensemble as a
  forecast distribution: E|X - y| - E|X - X'| / 2, in the truth's units (HU), lower is better; for one sample
  it is the absolute error (``crps``).

And ``calibrated_reference``: what a calibrated sampler would show for the K it was given, the line ``evaluate
mri2ct`` prints beside the measured figures.

Samples are ``(K, ...)`` arrays, the truth the trailing shape ``(...)``; voxels outside a mask are left out by the
caller (``samples[:, mask]``, ``truth[mask]``). Voxels of one volume are correlated, so the chi-square's p-value
over voxels is far too small to read as a test; compare statistics between models, or use the frequencies.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from .metrics import calibrated_coverage


def _pair(samples: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    samples, truth = np.asarray(samples, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if samples.ndim < 1 or samples.shape[1:] != truth.shape:
        raise ValueError(f"samples {samples.shape} must be (K, *truth.shape) with truth {truth.shape}.")
    return samples.reshape(samples.shape[0], -1), truth.ravel()


def truth_ranks(samples: np.ndarray, truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """The rank of the truth among the K samples at each position, ``(N,)`` int in 0..K: the number of samples
    below the truth, ties with it broken uniformly at random (``seed``), as the rank histogram needs when samples
    take the truth's value exactly (clipped HU, voxels where all samples agree)."""
    x, y = _pair(samples, truth)
    below = (x < y).sum(axis=0)
    ties = (x == y).sum(axis=0)
    extra = np.floor(np.random.default_rng(seed).random(y.shape) * (ties + 1)).astype(np.int64)
    return below + extra


def rank_histogram(samples: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    """The histogram of the truth's rank among K samples and its chi-square against flat.

    Args:
        samples: (K, ...) draws, in the truth's units.
        truth: (...) the true values.
        seed: the tie-breaking draws (``truth_ranks``).

    Returns:
        ``{"samples": K, "counts": [K + 1], "frequencies": [K + 1] (sum 1), "chi2": Pearson's statistic,
        "chi2_per_count": chi2 / N (comparable between volumes of different sizes), "dof": K, "p_value":
        against flat for independent positions}``. A flat histogram (calibrated) gives chi2 near K; a U shape
        (samples too close together) or a slope (biased samples) gives far more.
    """
    k = np.asarray(samples).shape[0]
    counts = np.bincount(truth_ranks(samples, truth, seed), minlength=k + 1)
    n = int(counts.sum())
    chi2, p = stats.chisquare(counts) if n else (float("nan"), float("nan"))
    return {"samples": int(k), "counts": counts.tolist(), "frequencies": (counts / max(n, 1)).tolist(),
            "chi2": float(chi2), "chi2_per_count": float(chi2) / n if n else float("nan"), "dof": int(k),
            "p_value": float(p)}


def minmax_coverage(samples: np.ndarray, truth: np.ndarray) -> float:
    """The fraction of positions where the truth lies in [min, max] of the K samples (NaN when empty)."""
    x, y = _pair(samples, truth)
    if y.size == 0:
        return float("nan")
    return float(((x.min(axis=0) <= y) & (y <= x.max(axis=0))).mean())


def expected_minmax_coverage(samples: int) -> float:
    """(K - 1) / (K + 1): how often [min, max] of K samples exchangeable with the truth covers it (0 for K = 1)."""
    return (samples - 1) / (samples + 1)


def crps(samples: np.ndarray, truth: np.ndarray, fair: bool = True) -> np.ndarray:
    """The CRPS of the K-sample ensemble at each position, ``(...)`` in the truth's units.

    ``mean_i |x_i - y| - sum_{i, j} |x_i - x_j| / (2 K (K - 1))`` with ``fair`` (Ferro 2014: an unbiased estimate
    of the CRPS of the distribution the samples come from, for any K), else ``/ (2 K^2)`` (the CRPS of the
    empirical distribution of the K samples, which favours small K). The pair sum comes from the sorted samples,
    ``sum_i x_(i) (2 i - K - 1)``, in O(K log K) per position. For K = 1 both are the absolute error.
    """
    x, y = _pair(samples, truth)
    k = x.shape[0]
    spread_sum = (np.sort(x, axis=0) * (2.0 * np.arange(1, k + 1) - k - 1)[:, None]).sum(axis=0)  # sum_{i<j} |xi-xj|
    denominator = k * (k - 1) if fair and k > 1 else k * k
    score = np.abs(x - y).mean(axis=0) - spread_sum / denominator
    return score.reshape(np.asarray(truth).shape)


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The closed-form CRPS of a normal forecast N(mean, std^2) at the truth (Gneiting et al. 2005):
    ``std (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))``, ``z = (truth - mean) / std``."""
    mean, std, truth = (np.asarray(a, dtype=np.float64) for a in (mean, std, truth))
    z = (truth - mean) / std
    return std * (z * (2.0 * stats.norm.cdf(z) - 1.0) + 2.0 * stats.norm.pdf(z) - 1.0 / np.sqrt(np.pi))


def calibrated_reference(samples: int, widths: tuple[float, ...] = (1.0, 2.0)) -> dict[str, float]:
    """What a calibrated sampler shows with K = ``samples``: the Gaussian coverage of the K-mean within w of the
    samples' std (``metrics.calibrated_coverage``: 56.3 / 82.8 % at K = 4, not 68 / 95 %), the [min, max]
    coverage (K - 1) / (K + 1), and a flat rank histogram (each of the K + 1 ranks at 1 / (K + 1)).

    Returns:
        ``{"samples": K, "coverage_1sigma": .., "coverage_2sigma": .., "minmax_coverage": .., "rank_frequency": ..}``
        (NaN coverages for K < 2).
    """
    return {"samples": int(samples), **calibrated_coverage(samples, widths),
            "minmax_coverage": expected_minmax_coverage(samples), "rank_frequency": 1.0 / (samples + 1)}


def ensemble_scores(samples: np.ndarray, truth: np.ndarray, seed: int = 0) -> dict:
    """Every distribution-free check of one volume's K samples in one dict: ``rank_histogram``, ``minmax_coverage``
    (with its calibrated ``minmax_expected``), the mean ``crps`` (HU, fair) and, for comparison, the mean absolute
    error of the K-mean (``mae_of_mean``; the CRPS of a single sample)."""
    x, y = _pair(samples, truth)
    return {"rank_histogram": rank_histogram(x, y, seed), "minmax_coverage": minmax_coverage(x, y),
            "minmax_expected": expected_minmax_coverage(x.shape[0]), "crps": float(crps(x, y).mean()) if y.size else
            float("nan"), "mae_of_mean": float(np.abs(x.mean(axis=0) - y).mean()) if y.size else float("nan")}

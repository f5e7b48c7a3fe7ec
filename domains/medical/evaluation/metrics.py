"""SynthRAD2023 Task 1 image metrics (MAE, PSNR, SSIM) and sCT diagnostics, one volume at a time
(``directory.evaluate_directory`` scores a folder with them).

`mae`, `psnr` and `ssim` follow the official challenge code (SynthRAD2023/metrics,
functions/image_metrics.py, class ImageMetrics) and docs/protocols.md §2:

- MAE: sum(|ref * mask - pred * mask|) / sum(mask); no clipping.
- PSNR: both clipped to [-1024, 3000] HU, voxels in the mask kept, skimage
  `peak_signal_noise_ratio` with data_range 4024.
- SSIM: both clipped, voxels outside the mask set to -1024, both shifted by +1024, 3-D
  skimage `structural_similarity` with its defaults (7-voxel uniform window, K1 0.01,
  K2 0.03, sample covariance), data_range 4024, full=True; the SSIM map and the mask are
  cropped by 3 voxels on every border and the map is averaged over the mask voxels left.

The mask is binarised as mask > 0.5 (``io.masks.binary_mask``, the rule of training and ``translate``;
SynthRAD's masks are 0/1, so nothing changes for them). The official script casts images to float32 before
computing; here they are float64, which changes SSIM by about 1e-6 and nothing else.
Arrays are (X, Y, Z) in HU on the same grid; SSIM's result does not depend on axis order.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.util import crop

from ..data.transforms import SYNTHRAD_HU_RANGE
from ..io.masks import binary_mask

SYNTHRAD_DATA_RANGE = SYNTHRAD_HU_RANGE[1] - SYNTHRAD_HU_RANGE[0]  # 4024 HU
SSIM_CROP = 3  # half of skimage's default 7-voxel window

# Tissue classes for `tissue_mae`: from phantom labels (see phantom.TISSUE_LABELS) or, for
# real data, from the reference CT: air < -200 HU, bone > 200 HU, soft tissue in between.
AIR_BELOW_HU = -200.0
BONE_ABOVE_HU = 200.0
# Phantom labels (head_anatomy.TISSUE_LABELS; v2 adds 10 teeth, 11 eye, 12 mastoid air: head_anatomy_v2).
_LABEL_CLASSES = {"air": (0, 9, 12), "soft_tissue": (1, 2, 5, 6, 7, 8, 11), "bone": (3, 4, 10)}


def _binary(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {shape}.")
    return binary_mask(mask)


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}.")
    return pred, ref


def mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD2023 MAE in HU: sum(|ref*mask - pred*mask|) / sum(mask), no clipping.

    Args:
        pred, ref: (X, Y, Z) synthetic and real CT in HU.
        mask: (X, Y, Z), voxels > 0.5 count; None counts every voxel.
    """
    pred, ref = _pair(pred, ref)
    m = _binary(mask, ref.shape).astype(np.float64)
    return float(np.sum(np.abs(ref * m - pred * m)) / m.sum())


def psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD2023 PSNR in dB: clip to [-1024, 3000] HU, keep mask voxels, data range 4024.

    Returns inf when the clipped images agree on every mask voxel.
    """
    pred, ref = _pair(pred, ref)
    m = _binary(mask, ref.shape)
    lo, hi = SYNTHRAD_HU_RANGE
    ref_in, pred_in = np.clip(ref, lo, hi)[m], np.clip(pred, lo, hi)[m]
    if np.array_equal(ref_in, pred_in):
        return float("inf")
    return float(peak_signal_noise_ratio(ref_in, pred_in, data_range=SYNTHRAD_DATA_RANGE))


def ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SynthRAD2023 SSIM: masked, shifted 3-D SSIM averaged over mask voxels 3 voxels from the border.

    Args:
        pred, ref: (X, Y, Z) CT in HU, every side at least 7 voxels.
        mask: (X, Y, Z); None gives skimage's own mean SSIM of the clipped, shifted images.
    """
    pred, ref = _pair(pred, ref)
    lo, hi = SYNTHRAD_HU_RANGE
    ref, pred = np.clip(ref, lo, hi), np.clip(pred, lo, hi)
    if mask is not None:
        m = _binary(mask, ref.shape)
        ref, pred = np.where(m, ref, lo), np.where(m, pred, lo)
    ref, pred = ref - lo, pred - lo  # non-negative, as the official code does
    value, ssim_map = structural_similarity(ref, pred, data_range=SYNTHRAD_DATA_RANGE, full=True)
    if mask is None:
        return float(value)
    inside = crop(m, SSIM_CROP)
    if not inside.any():
        return float("nan")
    return float(crop(ssim_map, SSIM_CROP)[inside].mean(dtype=np.float64))


def score_patient(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The three official metrics of one patient: {"mae": HU, "psnr": dB, "ssim": 1}."""
    return {"mae": mae(pred, ref, mask), "psnr": psnr(pred, ref, mask), "ssim": ssim(pred, ref, mask)}


def tissue_classes(labels_or_ct: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (X, Y, Z) masks for air, soft_tissue and bone.

    An array whose values are all integers in 0..12 is read as phantom labels (air, sinus and mastoid
    air -> air; cortical bone, diploe and teeth -> bone; the rest -> soft tissue). Anything else is
    read as a reference CT in HU: air < -200, bone > 200, soft tissue in between. (A CT
    always holds negative HU in air, so the two cannot be confused on a head or pelvis.)
    """
    a = np.asarray(labels_or_ct)
    largest_label = max(max(v) for v in _LABEL_CLASSES.values())
    is_labels = a.size > 0 and a.min() >= 0 and a.max() <= largest_label and np.all(a == np.round(a))
    if is_labels:
        return {name: np.isin(a, values) for name, values in _LABEL_CLASSES.items()}
    return {"air": a < AIR_BELOW_HU, "soft_tissue": (a >= AIR_BELOW_HU) & (a <= BONE_ABOVE_HU), "bone": a > BONE_ABOVE_HU}


def tissue_mae(
    pred: np.ndarray, ref: np.ndarray, labels_or_ct: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, float]:
    """MAE in HU per tissue class ({"air", "soft_tissue", "bone"}), within the mask if given.

    Args:
        pred, ref: (X, Y, Z) CT in HU.
        labels_or_ct: phantom labels or the reference CT; see `tissue_classes`.
        mask: (X, Y, Z) body mask; voxels > 0.5 count.

    Returns:
        MAE per class; NaN for a class with no voxels.
    """
    pred, ref = _pair(pred, ref)
    m = _binary(mask, ref.shape)
    out = {}
    for name, cls in tissue_classes(labels_or_ct).items():
        sel = cls & m
        out[name] = float(np.abs(pred[sel] - ref[sel]).mean()) if sel.any() else float("nan")
    return out


def uncertainty_error_correlation(std: np.ndarray, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson r between the predicted std (HU) and the absolute error |pred - ref| (HU) in the mask.

    A calibrated sampler puts its spread where its errors are: r > 0. NaN when either is constant.
    """
    pred, ref = _pair(pred, ref)
    std = np.asarray(std, dtype=np.float64)
    m = _binary(mask, ref.shape)
    s, e = std[m], np.abs(pred - ref)[m]
    if s.size < 2 or s.std() == 0 or e.std() == 0:
        return float("nan")
    return float(np.corrcoef(s, e)[0, 1])


def uncertainty_coverage(std: np.ndarray, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                         widths: tuple[float, ...] = (1.0, 2.0)) -> dict[str, float]:
    """The fraction of voxels in the mask whose absolute error ``|pred - ref|`` (HU) lies within
    ``w`` predicted standard deviations ``std`` (HU), for each ``w`` in ``widths``.

    With Gaussian errors of the stated std, a calibrated model covers 68.3 % at 1 sigma and 95.4 %
    at 2 sigma; less means overconfident, more underconfident. When ``pred`` and ``std`` are the
    mean and std of K samples, a calibrated sampler covers less than that (``calibrated_coverage``).

    Returns:
        ``{"coverage_1sigma": .., "coverage_2sigma": ..}`` (keys ``coverage_<w>sigma``); NaN for an empty mask.
    """
    pred, ref = _pair(pred, ref)
    m = _binary(mask, ref.shape)
    s, e = np.asarray(std, dtype=np.float64)[m], np.abs(pred - ref)[m]
    return {f"coverage_{w:g}sigma": float((e <= w * s).mean()) if s.size else float("nan") for w in widths}


def calibrated_coverage(samples: int, widths: tuple[float, ...] = (1.0, 2.0)) -> dict[str, float]:
    """The coverage (``uncertainty_coverage``) that a *calibrated* sampler gets from K = ``samples`` samples.

    Let the truth and the K samples be independent draws from one Gaussian. The error of the
    K-mean has variance ``sigma^2 (1 + 1/K)``, and the samples' std (ddof 1) estimates sigma with
    K - 1 degrees of freedom. So ``error / std`` is ``sqrt(1 + 1/K)`` times a Student t with K - 1
    degrees of freedom. For K = 4 that covers 56.3 % at 1 sigma and 82.8 % at 2 sigma. It tends to
    68.3 % and 95.4 % only as K grows.

    Returns:
        ``{"coverage_1sigma": .., ...}`` as ``uncertainty_coverage``; NaN for K < 2 (no std).
    """
    if samples < 2:
        return {f"coverage_{w:g}sigma": float("nan") for w in widths}
    inflation = np.sqrt(1.0 + 1.0 / samples)
    return {f"coverage_{w:g}sigma": float(2.0 * stats.t.cdf(w / inflation, samples - 1) - 1.0) for w in widths}


def reliability_curve(std: np.ndarray, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None,
                      bins: int = 10) -> dict[str, list[float]]:
    """A reliability diagram's points: voxels in the mask binned by predicted std (equal-count bins),
    and in each bin the root of the mean predicted variance against the root-mean-square error (both
    HU), as in Levi et al. 2022 ("Evaluating and calibrating uncertainty prediction in regression
    tasks"). A calibrated model's points lie on the diagonal; with the mean std instead of the root
    mean variance, a bin whose std varies would sit above it even when calibrated.

    Returns:
        ``{"predicted_std": [bins] (root mean variance), "rmse": [bins], "voxels": [bins]}``.
    """
    pred, ref = _pair(pred, ref)
    m = _binary(mask, ref.shape)
    s, e = np.asarray(std, dtype=np.float64)[m], (pred - ref)[m]
    order = np.argsort(s, kind="stable")
    out: dict[str, list[float]] = {"predicted_std": [], "rmse": [], "voxels": []}
    for part in np.array_split(order, bins):
        if part.size:
            out["predicted_std"].append(float(np.sqrt(np.mean(s[part] ** 2))))
            out["rmse"].append(float(np.sqrt(np.mean(e[part] ** 2))))
            out["voxels"].append(int(part.size))
    return out


def neighbour_slice_difference(volume: np.ndarray, mask: np.ndarray, axis: int = 2) -> float:
    """Mean absolute difference (volume's units, e.g. HU) between neighbouring slices along ``axis``.

    Taken over voxel pairs whose two voxels are both inside ``mask``. On a synthetic CT, compare it
    with the same figure on the real CT: a larger value means slices that disagree with each other
    (stripes across slices), since each slice of a 2.5-D model is sampled on its own.
    """
    volume, inside = np.moveaxis(np.asarray(volume, np.float64), axis, 0), np.moveaxis(binary_mask(mask), axis, 0)
    both = inside[1:] & inside[:-1]
    if not both.any():
        return float("nan")
    return float(np.abs(volume[1:] - volume[:-1])[both].mean())

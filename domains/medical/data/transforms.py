"""MONAI dictionary transforms that turn SynthRAD files into network-ready MR/CT volumes.

Conventions (the one place they are defined):
- CT: HU clipped to [-1024, 3000] (the official SynthRAD2023 metric window) and mapped
  linearly to [-1, 1] by `ct_to_unit`; `unit_to_ct` maps back.
- MR: scaled so that its 0.5th and 99.5th percentiles *inside the body mask* land on -1 and
  +1, clipped to [-1, 1], and set to -1 outside the mask, so that neither the noise floor
  outside the body nor the scanner's arbitrary gain reaches the network.
- Geometry: channel first, RAS orientation, optional resampling to a given spacing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Lambdad,
    MapTransform,
    RandAdjustContrast,
    RandBiasField,
    RandGibbsNoise,
    RandHistogramShift,
    RandRicianNoise,
    ScaleIntensityRange,
    ScaleIntensityRanged,
)
from monai.utils import convert_to_dst_type

from ..io.images import LoadAnyImaged, model_grid_transform
from ..io.masks import binary_mask
from ..io.nifti import MedicalInputError

# The official SynthRAD2023 metric window (HU); ``evaluation.metrics`` clips to it for PSNR and SSIM.
SYNTHRAD_HU_RANGE: tuple[float, float] = (-1024.0, 3000.0)
CT_RANGE_HU: tuple[float, float] = SYNTHRAD_HU_RANGE  # model window = official metric window
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


CT_SCALING = {"a_min": CT_RANGE_HU[0], "a_max": CT_RANGE_HU[1], "b_min": -1.0, "b_max": 1.0, "clip": True}


def ct_to_unit(hu: Array) -> Array:
    """HU -> [-1, 1]: map linearly (-1024 -> -1, 3000 -> 1) and clip: MONAI's ``ScaleIntensityRange`` with the
    settings (``CT_SCALING``) that ``mri2ct_transforms`` gives its ``ScaleIntensityRanged`` for the CT.

    Works elementwise on numpy arrays and torch tensors of any shape; returns the input's type and dtype.
    """
    scaled = ScaleIntensityRange(**CT_SCALING, dtype=None)(hu)  # a MetaTensor, whatever came in
    return convert_to_dst_type(scaled, dst=hu)[0]


def unit_to_ct(x: Array) -> Array:
    """[-1, 1] -> HU, the inverse of `ct_to_unit` on [-1, 1]; values outside are not clipped."""
    lo, hi = CT_RANGE_HU
    return (x + 1.0) * ((hi - lo) / 2.0) + lo


def mask_as_float(mask: torch.Tensor) -> torch.Tensor:
    """A mask of any shape as 0.0 / 1.0 float32 by ``io.masks.binary_mask`` (a MetaTensor keeps its metadata)."""
    return binary_mask(mask).to(torch.float32)


def normalise_mr(
    mr: Array,
    mask: Array,
    percentiles: Sequence[float] = MR_PERCENTILES,
    clip: bool = True,
    background: float = -1.0,
) -> Array:
    """Robust MR intensity normalisation with percentiles taken inside the body mask.

    Args:
        mr: MR volume of any shape, e.g. (X, Y, Z) or (1, X, Y, Z); numpy or torch.
        mask: same shape; voxels > 0.5 are the body (``io.masks.binary_mask``).
        percentiles: (lower, upper) percentiles mapped to -1 and +1.
        clip: clip the result to [-1, 1].
        background: value given to voxels outside the mask.

    Returns:
        Same type and shape as `mr`, float32, in [-1, 1] when clip is True.

    Raises:
        MedicalInputError: the mask is empty.
    """
    is_torch = isinstance(mr, torch.Tensor)
    inside = binary_mask(mask)
    values = (mr[inside].detach().cpu().numpy() if is_torch else np.asarray(mr)[np.asarray(inside)]).astype(np.float64)
    if values.size == 0:
        raise MedicalInputError("MR normalisation needs a mask with at least one voxel > 0.5, and this mask is empty.")
    lo, hi = np.percentile(values, percentiles)
    scale = 2.0 / (hi - lo) if hi > lo else 1.0
    if is_torch:
        out = (mr.float() - float(lo)) * float(scale) - 1.0
        if clip:
            out = out.clamp(-1.0, 1.0)
        return torch.where(inside, out, torch.as_tensor(background, dtype=out.dtype, device=out.device))
    out = (np.asarray(mr, dtype=np.float32) - np.float32(lo)) * np.float32(scale) - np.float32(1.0)
    if clip:
        out = np.clip(out, -1.0, 1.0)
    return np.where(inside, out, np.float32(background)).astype(np.float32)


class NormaliseMRInMaskd(MapTransform):
    """Dictionary transform around `normalise_mr`: percentiles inside `data[mask_key]`.

    MONAI's `ScaleIntensityRangePercentilesd` takes percentiles over the whole image and
    `NormalizeIntensityd(nonzero=True)` is a z-score over non-zero voxels; neither restricts
    robust percentiles to a body mask, hence this transform.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        mask_key: Hashable = "mask",
        percentiles: Sequence[float] = MR_PERCENTILES,
        clip: bool = True,
        background: float = -1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.percentiles = tuple(percentiles)
        self.clip = clip
        self.background = background

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = normalise_mr(d[key], d[self.mask_key], self.percentiles, self.clip, self.background)
        return d


def mri2ct_transforms(
    keys: Sequence[str] = ("mr", "ct", "mask"),
    spacing_mm: Sequence[float] | float | None = None,
    mr_percentiles: Sequence[float] = MR_PERCENTILES,
) -> Compose:
    """Load-and-normalise pipeline for dicts of file paths {"mr": .., "ct": .., "mask": ..}.

    ``images.LoadAnyImaged`` (NIfTI, MetaImage, NRRD or DICOM folder; channel first) ->
    ``images.model_grid_transform`` (Orientationd to RAS, [Spacingd]: the steps ``translate`` uses) ->
    mask binarised (> 0.5, ``io.masks.binary_mask``) -> CT to [-1, 1] (ScaleIntensityRanged, clip) -> MR normalised in mask.

    Args:
        keys: which of "mr", "ct", "mask", "labels" to load; "mr" needs "mask". Leave out "ct" at
            inference. A tissue label map ("labels") is only reoriented and resampled (nearest).
        spacing_mm: resample to this voxel size (mm) when given; linear for images, nearest
            for the mask.
        mr_percentiles: percentiles inside the mask mapped to -1 and +1.

    Returns:
        A Compose producing MetaTensors of shape (1, X, Y, Z), float32, affines kept in meta.
    """
    keys = list(keys)
    unknown = set(keys) - {"mr", "ct", "mask", "labels"}
    if unknown:
        raise ValueError(f"Unknown keys {sorted(unknown)}; expected a subset of mr, ct, mask, labels.")
    if "mr" in keys and "mask" not in keys:
        raise ValueError("MR normalisation needs the body mask: add 'mask' to keys.")
    # The geometric half is inference's own (images.load_for_model): the same reading, RAS and resampling.
    steps: list = [LoadAnyImaged(keys), *model_grid_transform(keys, spacing_mm).transforms]
    if "mask" in keys:  # the package's one rule (io.masks): AsDiscreted's threshold keeps >= 0.5, this > 0.5
        steps.append(Lambdad("mask", mask_as_float))
    if "ct" in keys:
        steps.append(ScaleIntensityRanged("ct", **CT_SCALING))
    if "mr" in keys:
        steps.append(NormaliseMRInMaskd("mr", mask_key="mask", percentiles=mr_percentiles))
    return Compose(steps)


def mr_intensity_augmentation(prob: float = 0.5, seed: int = 0) -> Compose:
    """Random MR "scanners" for training: MONAI's intensity transforms on a (k, H, W) MR stack.

    Each transform fires with probability ``prob``: a smooth multiplicative bias field (degree 3,
    log-coefficients up to 0.3), a gamma change of contrast (0.7 to 1.5), Gibbs ringing (alpha up to
    0.4), a histogram shift (a random monotone remapping of intensities, 5 to 10 control points) and
    Rician noise (std up to 0.03 of the intensity range). The k slices of a stack get the same
    field, gamma and remapping. Apply it through ``augment_mr``, which keeps the MR's conventions.
    """
    augment = Compose([
        RandBiasField(degree=3, coeff_range=(0.0, 0.3), prob=prob),
        RandAdjustContrast(gamma=(0.7, 1.5), prob=prob),
        RandHistogramShift(num_control_points=(5, 10), prob=prob),
        RandGibbsNoise(alpha=(0.0, 0.4), prob=prob),
        RandRicianNoise(std=0.03, prob=prob, relative=True, sample_std=True),
    ])
    augment.set_random_state(seed)
    return augment


def augment_mr(stack: torch.Tensor, augment: Compose) -> torch.Tensor:
    """A normalised MR stack ``(k, H, W)`` in [-1, 1] with ``augment`` applied to its signal.

    The transforms act on the signal ``stack + 1`` (0 where there is no signal), the result is
    clipped to [-1, 1], and voxels outside the body (exactly -1, the ``normalise_mr`` background)
    stay -1, as the model sees them at inference.
    """
    background = stack <= -1.0
    signal = augment(stack + 1.0)
    signal = torch.as_tensor(signal.as_tensor() if hasattr(signal, "as_tensor") else signal, dtype=stack.dtype)
    return torch.where(background, stack, (signal - 1.0).clamp(-1.0, 1.0))

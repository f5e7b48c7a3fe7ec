"""Whole paired MR / CT / label volumes, the training data of the 3-D latent generator (issue 31).

``load_paired_volumes`` reads subjects through the translation pipeline (``transforms.mri2ct_transforms``:
RAS, optional resampling, CT and MR in [-1, 1]) and pads every volume to one shape, a multiple of ``divisible``
voxels along each axis, with each channel's background (MR and CT -1, label 0), so that a 3-D autoencoder that
downsamples by 4 and a latent U-Net that downsamples by 4 again both fit. ``augmented_copy`` draws a
randomly mirrored, rotated, shifted and scaled copy of one subject (MONAI ``Affine``), the augmentation the
latent models learn from; ``random_crop`` cuts the patches the autoencoders train on.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Affine
from torch import Tensor

from ..io.nifti import MedicalInputError
from .paired_slices import plain_tensor
from .transforms import mri2ct_transforms

IMAGE_BACKGROUND = -1.0  # MR and CT in [-1, 1] outside the body


@dataclass
class PairedVolumes:
    """Subjects on one padded grid.

    Attributes:
        images: ``(N, 2, X, Y, Z)`` float32: MR and CT in [-1, 1] (-1 outside the body and in the padding).
        labels: ``(N, X, Y, Z)`` int64 tissue labels in ``[0, classes)`` (0 in the padding).
        ids: the subjects' ids.
        grid: ``{"shape": (X, Y, Z), "affine": (4, 4), "pad": [[before, after]] * 3, "classes": classes}``: the
            grid a sampler writes subjects on (the first subject's, padded: every subject is written whole on it;
            ``pad`` is kept for grids with a margin the writer drops, here none).
    """

    images: Tensor
    labels: Tensor
    ids: list[str]
    grid: dict[str, Any]

    def subset(self, ids: Sequence[str]) -> PairedVolumes:
        """The subjects ``ids`` (in that order) on the same grid."""
        index = [self.ids.index(i) for i in ids]
        return PairedVolumes(self.images[index], self.labels[index], list(ids), self.grid)


def load_paired_volumes(pairs: Sequence[dict[str, str]], classes: int, spacing_mm: float | None = 4.0,
                        divisible: int = 16, shape: Sequence[int] | None = None) -> PairedVolumes:
    """Read ``pairs`` (``pairs.find_synthrad_pairs``, with labels) onto one padded grid.

    Heads differ in height (phantom v2: 50 to 62 slices at 4 mm), so every subject is padded to one ``shape``
    (default: the largest subject's, each axis rounded up to a multiple of ``divisible``): centred left-right and
    front-back, at the top along the head's axis, so that every neck starts on the bottom slice.

    Raises:
        MedicalInputError: a subject without labels, labels outside ``[0, classes)``, or a subject larger
            than ``shape``.
    """
    load = mri2ct_transforms(("mr", "ct", "mask", "labels"), spacing_mm=spacing_mm)
    subjects = []
    for pair in pairs:
        if "labels" not in pair:
            raise MedicalInputError(f"Subject {pair.get('id', pair.get('mr'))} has no labels.nii.gz; the latent "
                                    "generator learns MR, CT and tissue labels together.")
        data = load({key: pair[key] for key in ("mr", "ct", "mask", "labels")})
        label = plain_tensor(data["labels"]).round().long()[0]
        if int(label.min()) < 0 or int(label.max()) >= classes:
            raise MedicalInputError(f"Subject {pair.get('id')} has labels outside 0..{classes - 1}; give the model "
                                    f"classes={int(label.max()) + 1} or more.")
        image = torch.cat([plain_tensor(data[k]) for k in ("mr", "ct")]).float()
        subjects.append((image, label, np.asarray(data["mr"].affine, dtype=np.float64)))
    if not subjects:
        raise MedicalInputError("No subjects to learn from.")
    if shape is None:
        largest = np.max([s[1].shape for s in subjects], axis=0)
        shape = [int(-(-n // divisible) * divisible) for n in largest]
    images, labels = [], []
    for (image, label, _), pair in zip(subjects, pairs):
        widths = padding_to(label.shape, shape, pair.get("id", pair.get("mr")))
        flat = [w for before_after in reversed(widths) for w in before_after]  # F.pad wants the last axis first
        images.append(F.pad(image, flat, value=IMAGE_BACKGROUND))
        labels.append(F.pad(label, flat, value=0))
    widths = padding_to(subjects[0][1].shape, shape, "")
    affine = subjects[0][2].copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array([w[0] for w in widths], dtype=np.float64)
    grid = {"shape": list(shape), "affine": affine.tolist(), "pad": [[0, 0]] * 3, "classes": classes}
    return PairedVolumes(torch.stack(images), torch.stack(labels), [p.get("id", str(i)) for i, p in enumerate(pairs)],
                         grid)


def padding_to(shape: Sequence[int], target: Sequence[int], subject: str) -> list[list[int]]:
    """``[[before, after]] * 3`` that pad a volume of ``shape`` to ``target``: centred along the first two axes, at
    the end of the third (the top of a RAS head).

    Raises:
        MedicalInputError: the volume is larger than ``target`` along some axis.
    """
    if any(n > t for n, t in zip(shape, target)):
        raise MedicalInputError(f"Subject {subject} ({tuple(shape)} voxels) does not fit the model's grid "
                                f"{tuple(target)}.")
    extra = [t - n for n, t in zip(shape, target)]
    return [[extra[0] // 2, extra[0] - extra[0] // 2], [extra[1] // 2, extra[1] - extra[1] // 2], [0, extra[2]]]


def unpadded_region(pad: Sequence[Sequence[int]], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The index of the subject's own voxels in a padded volume of spatial ``shape`` (``[[before, after]] * 3``
    of ``load_paired_volumes``)."""
    return tuple(slice(before, n - after) for (before, after), n in zip(pad, shape))


def unpad(volume: Tensor, pad: Sequence[Sequence[int]]) -> Tensor:
    """``volume (..., X', Y', Z')`` without the padding ``[[before, after]] * 3`` of ``load_paired_volumes``."""
    return volume[(..., *unpadded_region(pad, volume.shape[-3:]))]


def augmented_copy(image: Tensor, labels: Tensor, rng: np.random.Generator, degrees: float = 6.0,
                   shift_voxels: float = 2.0, scale: float = 0.05) -> tuple[Tensor, Tensor]:
    """A random copy of one subject: mirrored left-right with probability 0.5, rotated by up to ``degrees``
    about each axis, shifted by up to ``shift_voxels`` and scaled by up to ``1 +- scale`` (MONAI ``Affine``;
    bilinear for the images, nearest for the labels; the images' background stays -1).

    Args:
        image: ``(2, X, Y, Z)``; labels: ``(X, Y, Z)`` int64.

    Returns:
        ``(image, labels)`` of the same shapes and dtypes.
    """
    if rng.random() < 0.5:  # X is the left-right axis of a RAS volume
        image, labels = image.flip(-3), labels.flip(-3)
    params = dict(rotate_params=[math.radians(float(a)) for a in rng.uniform(-degrees, degrees, 3)],
                  translate_params=[float(d) for d in rng.uniform(-shift_voxels, shift_voxels, 3)],
                  scale_params=[1.0 + float(s) for s in rng.uniform(-scale, scale, 3)], padding_mode="zeros",
                  image_only=True)
    moved = plain_tensor(Affine(mode="bilinear", **params)(image - IMAGE_BACKGROUND)) + IMAGE_BACKGROUND
    moved_labels = plain_tensor(Affine(mode="nearest", **params)(labels[None].float()))[0].round().long()
    return moved.float(), moved_labels


def random_crop(volumes: Sequence[Tensor], size: int, rng: np.random.Generator) -> list[Tensor]:
    """The same random ``size``-voxel cube (``(..., size, size, size)``) cut from each of ``volumes``, which
    share their last three dimensions (each at least ``size``)."""
    shape = volumes[0].shape[-3:]
    start = [int(rng.integers(0, n - size + 1)) for n in shape]
    return [v[..., start[0]:start[0] + size, start[1]:start[1] + size, start[2]:start[2] + size] for v in volumes]

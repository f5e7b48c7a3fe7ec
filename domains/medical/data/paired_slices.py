"""Joint MR / CT / label slices of paired volumes: the training data of ``models.synthesis.PairedSliceSynthesis``.

A slice's state is ``(2 + B, H, W)``: the MR (``transforms.normalise_mr``, [-1, 1]), the CT in [-1, 1]
(``transforms.ct_to_unit``) and the tissue label as B analog bits (``label_bits``); its height in the
volume (``slice_heights``) is the model's condition.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import DivisiblePad
from torch import Tensor
from torch.utils.data import Dataset

from ..io.nifti import MedicalInputError
from .label_bits import labels_to_bits
from .transforms import mri2ct_transforms


def plain_tensor(x: Tensor) -> Tensor:
    """A MONAI MetaTensor's data as a plain tensor (batches of plain tensors collate without metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def slice_heights(count: int) -> Tensor:
    """``(count,)`` float32: the height of each axial slice of a volume, -1 (bottom) .. +1 (top)."""
    return torch.linspace(-1.0, 1.0, count) if count > 1 else torch.zeros(1)


class PairedVolumeSlices(Dataset):
    """Every axial slice of paired MR / CT / label volumes, as joint states.

    Items: ``{"x": (2 + B, H, W) float32, "height": () float32 in [-1, 1]}``; the volumes are loaded
    once through ``transforms.mri2ct_transforms`` (RAS, CT and MR in [-1, 1], optional resampling
    with nearest neighbours for the labels) and padded in-plane to a multiple of ``divisible`` with
    each channel's background (MR and CT -1, label 0).

    Args:
        pairs: dicts with mr, ct, mask and labels paths (``pairs.find_synthrad_pairs``).
        classes: number of tissue classes (``phantom.TISSUE_LABELS``: 10).
        spacing_mm: resample every volume to this voxel size (mm); None keeps the files' grid.
        divisible: in-plane padding multiple (a multiple of the U-Net's ``size_multiple``).
        flip: mirror a slice left-right with probability 0.5 (heads are nearly symmetric).

    Raises:
        MedicalInputError: a subject without a label map, labels outside ``[0, classes)``, or
            volumes on different grids (slices of one model must share one shape).
    """

    def __init__(self, pairs: Sequence[dict[str, str]], classes: int = 10, spacing_mm: float | None = None,
                 divisible: int = 8, flip: bool = False) -> None:
        self.classes, self.flip = classes, flip
        load = mri2ct_transforms(("mr", "ct", "mask", "labels"), spacing_mm=spacing_mm)
        self.states: list[Tensor] = []  # (Z, C, H, W) per volume
        self.shape: tuple[int, int, int] | None = None
        self.affine: np.ndarray | None = None
        self.pad: list[list[int]] = []
        for pair in pairs:
            if "labels" not in pair:
                raise MedicalInputError(f"Subject {pair.get('id', pair.get('mr'))} has no labels.nii.gz; the paired "
                                        "synthesis model learns MR, CT and tissue labels together.")
            data = load({key: pair[key] for key in ("mr", "ct", "mask", "labels")})
            labels = plain_tensor(data["labels"]).round().long()
            if int(labels.min()) < 0 or int(labels.max()) >= classes:
                raise MedicalInputError(f"Subject {pair.get('id')} has labels outside 0..{classes - 1}.")
            shape = tuple(int(n) for n in data["mr"].shape[1:])
            if self.shape is None:
                self.shape, self.affine = shape, np.asarray(data["mr"].affine, dtype=np.float64)
            elif shape != self.shape:
                raise MedicalInputError(f"Subject {pair.get('id')} lies on a {shape} grid, the others on {self.shape}; "
                                        "resample them to one grid (spacing_mm) first.")
            pad = DivisiblePad(k=(divisible, divisible, 1), mode="constant")
            self.pad = [list(map(int, w)) for w in pad.compute_pad_width(shape)[1:3]]
            channels = [pad(data["mr"], value=-1.0), pad(data["ct"], value=-1.0)]
            bits = labels_to_bits(pad(labels.float(), value=0.0).long()[0].movedim(-1, 0), classes)  # (Z, B, H, W)
            image = torch.cat([plain_tensor(c).float() for c in channels]).movedim(-1, 0)  # (Z, 2, H, W)
            self.states.append(plain_tensor(torch.cat([image, bits], dim=1)).contiguous())
        self.index = [(v, z) for v, states in enumerate(self.states) for z in range(states.shape[0])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        v, z = self.index[i]
        x = self.states[v][z]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-2)  # H is the left-right axis of a RAS axial slice
        return {"x": x, "height": slice_heights(self.states[v].shape[0])[z]}

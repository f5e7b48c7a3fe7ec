"""The data modules, split by patient: ``MRItoCTDataModule`` (2.5-D MR->CT slices, ``slices.SliceDataset``) and
``PairedSynthesisDataModule`` (joint MR / CT / label slices, ``paired_slices.PairedVolumeSlices``).

If the folder does not exist it is filled with head phantoms first (``phantom.write_phantom_dataset``),
so ``sci-diffusion fit --config configs/medical/mri2ct_phantom.yaml`` runs on a fresh checkout.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.data import DataLoader, partition_dataset

from ..io.nifti import MedicalInputError
from .paired_slices import PairedVolumeSlices
from .pairs import find_synthrad_pairs
from .phantom import write_phantom_dataset
from .phantom_v2 import write_phantom_dataset_v2
from .slices import SliceDataset
from .transforms import mr_intensity_augmentation


def split_patients(ids: Sequence[str], val_subjects: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """A patient-level split: ``(train_ids, val_ids)``, each in id order, ``val_subjects`` drawn with ``seed``
    (MONAI's ``partition_dataset`` over the sorted ids, shuffled).

    Every slice of a patient lands on one side, so validation never sees a training head.
    At least one patient always stays in training.
    """
    ids = sorted(ids)
    n_val = min(max(int(val_subjects), 0), len(ids) - 1)
    train, val = partition_dataset(ids, ratios=[len(ids) - n_val, n_val], shuffle=True, seed=seed)
    return sorted(train), sorted(val)


def split_subject_folder(root: str, val_subjects: int, split_seed: int) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """``(pairs, train_ids, val_ids)`` of a SynthRAD-layout folder (``find_synthrad_pairs``, ``split_patients``).

    Raises:
        MedicalInputError: too few subjects to hold ``val_subjects`` out.
    """
    pairs = find_synthrad_pairs(root)
    if len(pairs) <= val_subjects:
        raise MedicalInputError(f"{root} holds {len(pairs)} subjects, too few to hold out {val_subjects}.")
    train_ids, val_ids = split_patients([p["id"] for p in pairs], val_subjects, split_seed)
    return pairs, train_ids, val_ids


def write_phantoms_if_missing(root: str, subjects: int, spacing_mm: float, seed: int, version: int = 1,
                              contrast: str = "t1") -> None:
    """Fill ``root`` with ``subjects`` head phantoms of ``version`` (1, or 2 with its ``contrast`` family) when it does
    not exist (a fresh checkout's data)."""
    if not Path(root).exists():
        print(f"Writing {subjects} head phantoms (version {version}) to {root} ...", flush=True)
        if version == 2:
            write_phantom_dataset_v2(root, subjects, spacing_mm, seed, contrast)
        else:
            write_phantom_dataset(root, subjects, spacing_mm, seed)


class MRItoCTDataModule(L.LightningDataModule):
    """MR->CT slices (``slices.SliceDataset``) for training and validation.

    Args:
        root: SynthRAD-layout folder (``<id>/{mr,ct,mask}.nii.gz`` at any depth).
        phantom_subjects, phantom_spacing_mm, phantom_seed, phantom_version, phantom_contrast: when ``root`` does not
            exist, write this many head phantoms there first (version 1, or 2 with a contrast family:
            ``phantom_v2.py``).
        val_subjects: patients held out for validation (patient-level split, drawn with ``split_seed``).
        k: odd number of MR slices per item (must equal the model's ``k``).
        axis: slicing axis, ``axial``, ``coronal`` or ``sagittal``.
        crop_size: training crops ``(h, w)`` centred on a random body voxel; None for whole slices.
            Validation always uses whole slices.
        divisible: whole-slice padding multiple (a multiple of the U-Net's ``size_multiple``).
        spacing_mm: resample volumes to this voxel size (mm) on loading; None keeps the files' grid.
        mr_augmentation: probability of each of MONAI's random MR intensity transforms (bias field,
            gamma, histogram shift, Gibbs ringing, Rician noise; ``transforms.mr_intensity_augmentation``)
            on every training slice, so the model sees many "scanners"; 0 turns augmentation off.
            Validation slices are never augmented.
        cache_dir: memory-map the prepared volumes from files in this folder (``slices.memory_mapped``)
            instead of holding them all in memory; None keeps them in memory.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(
        self,
        root: str = "data/phantom_2mm",
        phantom_subjects: int = 20,
        phantom_spacing_mm: float = 2.0,
        phantom_seed: int = 0,
        phantom_version: int = 1,
        phantom_contrast: str = "t1",
        val_subjects: int = 2,
        split_seed: int = 0,
        k: int = 3,
        axis: str = "axial",
        crop_size: Sequence[int] | None = (64, 64),
        divisible: int = 16,
        spacing_mm: float | None = None,
        mr_augmentation: float = 0.0,
        cache_dir: str | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= mr_augmentation <= 1.0:
            raise ValueError(f"mr_augmentation is a probability in [0, 1], got {mr_augmentation}.")
        self.save_hyperparameters()
        self.train_ids: list[str] = []
        self.val_ids: list[str] = []
        self.voxel_mm: list[float] | None = None

    def prepare_data(self) -> None:
        h = self.hparams
        write_phantoms_if_missing(h.root, h.phantom_subjects, h.phantom_spacing_mm, h.phantom_seed, h.phantom_version,
                                  h.phantom_contrast)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "train_set", None) is not None:
            return
        pairs = find_synthrad_pairs(self.hparams.root)
        if len(pairs) < 2 and self.hparams.val_subjects > 0:
            raise MedicalInputError(f"{self.hparams.root} holds {len(pairs)} patient; a train/validation split needs at least 2.")
        self.train_ids, self.val_ids = split_patients([p["id"] for p in pairs], self.hparams.val_subjects,
                                                      self.hparams.split_seed)
        h = self.hparams
        common = dict(k=h.k, axis=h.axis, divisible=h.divisible, spacing_mm=h.spacing_mm, cache_dir=h.cache_dir)
        augment = None
        seed = torch.initial_seed() % 2**32  # MONAI's DataLoader reseeds both from torch's in each worker
        if h.mr_augmentation > 0:
            augment = mr_intensity_augmentation(h.mr_augmentation, seed=seed)
        self.train_set = SliceDataset([p for p in pairs if p["id"] in self.train_ids],
                                      crop_size=None if h.crop_size is None else tuple(h.crop_size), augment=augment,
                                      seed=seed, **common)
        self.val_set = SliceDataset([p for p in pairs if p["id"] in self.val_ids], **common) if self.val_ids else None
        # The voxel size the model learns at (median over training volumes, RAS order), for the checkpoint.
        zooms = [np.sqrt((a[:3, :3].numpy() ** 2).sum(axis=0)) for a in self.train_set.affines]
        self.voxel_mm = [round(float(z), 4) for z in np.median(np.stack(zooms), axis=0)]

    def _batch_size(self, dataset, cropped: bool) -> int:
        """Whole slices of differently sized volumes cannot share a batch: one slice at a time then. Only the slices'
        own size counts (phantom v2's heads differ in height, not in their axial slices)."""
        shapes = {tuple(n for a, n in enumerate(v["mr"].shape[1:]) if a != dataset.axis) for v in dataset.volumes}
        return self.hparams.batch_size if cropped or len(shapes) == 1 else 1

    def train_dataloader(self) -> DataLoader:
        """MONAI's ``DataLoader``: each worker (and the main process, with no workers) reseeds the random crops and
        MR augmentation of its copy of the data set, so that workers do not all draw the same augmentations."""
        batch_size = self._batch_size(self.train_set, self.hparams.crop_size is not None)
        return DataLoader(self.train_set, batch_size=batch_size, shuffle=True, drop_last=len(self.train_set) > batch_size,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        # Shuffled once with a fixed seed so that limit_val_batches sees slices from every height.
        order = torch.randperm(len(self.val_set), generator=torch.Generator().manual_seed(0)).tolist()
        return DataLoader(torch.utils.data.Subset(self.val_set, order), batch_size=self._batch_size(self.val_set, False),
                          num_workers=self.hparams.num_workers)

    def state_dict(self) -> dict:
        return {"train_ids": self.train_ids, "val_ids": self.val_ids}


class PairedSynthesisDataModule(L.LightningDataModule):
    """Slices of paired MR / CT / label volumes for ``PairedSliceSynthesis``, split by subject.

    Args:
        root: SynthRAD-layout folder with ``labels`` per subject; filled with head phantoms first when
            it does not exist (``phantom_*``), as ``MRItoCTDataModule`` does.
        val_subjects: subjects held out for the validation loss (0: no validation).
        spacing_mm: the model's voxel size; every volume is resampled to it on loading.
        divisible: in-plane padding multiple.
        flip: left-right mirroring of training slices.
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, root: str = "data/phantom_2mm", phantom_subjects: int = 20, phantom_spacing_mm: float = 2.0,
                 phantom_seed: int = 0, val_subjects: int = 2, split_seed: int = 0, spacing_mm: float | None = 4.0,
                 divisible: int = 8, flip: bool = True, batch_size: int = 16, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_set: PairedVolumeSlices | None = None
        self.val_set: PairedVolumeSlices | None = None

    def prepare_data(self) -> None:
        h = self.hparams
        write_phantoms_if_missing(h.root, h.phantom_subjects, h.phantom_spacing_mm, h.phantom_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        pairs, train_ids, val_ids = split_subject_folder(h.root, h.val_subjects, h.split_seed)
        common = dict(spacing_mm=h.spacing_mm, divisible=h.divisible)
        self.train_set = PairedVolumeSlices([p for p in pairs if p["id"] in train_ids], flip=h.flip, **common)
        self.val_set = PairedVolumeSlices([p for p in pairs if p["id"] in val_ids], **common) if val_ids else None

    @property
    def grid(self) -> dict[str, Any]:
        """What a sampler needs to write volumes like the training ones: shape, affine and in-plane padding."""
        s = self.train_set
        return {"shape": list(s.shape), "affine": s.affine.tolist(), "pad": s.pad}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          drop_last=len(self.train_set) > self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

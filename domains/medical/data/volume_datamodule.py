"""``PairedVolumeDataModule``: whole MR / CT / label volumes, split by subject, for the 3-D latent generator.

It serves three things:

- to a ``VolumeAutoencoder``: random ``crop``-voxel cubes of training volumes, mirrored left-right at random
  (``crops_per_epoch`` per epoch), and the whole validation volumes;
- to ``LatentVolumeSynthesis``: ``train_volumes`` (and ``grid``), which the model encodes once into latents of
  augmented copies and hands back through :meth:`use_latents`; the loader then serves those latents.

The folder is filled with head phantoms first when it does not exist (phantom v2 by default, at
``phantom_spacing_mm``), as the other medical data modules do.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .datamodule import split_subject_folder, write_phantoms_if_missing
from .volumes import PairedVolumes, load_paired_volumes, random_crop


class RandomCubes(Dataset):
    """``length`` random cubes of ``volumes`` per epoch: items ``{"image": (2, c, c, c), "labels": (c, c, c)}``,
    mirrored left-right with probability 0.5. The n-th item drawn (over all epochs, in one process: no loader
    workers) comes from the seed sequence ``(seed, n)``, so every epoch cuts new cubes."""

    def __init__(self, volumes: PairedVolumes, crop: int, length: int, seed: int = 0) -> None:
        self.volumes, self.crop, self.length, self.seed, self.drawn = volumes, crop, length, seed, 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.drawn])
        self.drawn += 1
        v = int(rng.integers(len(self.volumes.ids)))
        image, labels = self.volumes.images[v], self.volumes.labels[v]
        if rng.random() < 0.5:
            image, labels = image.flip(-3), labels.flip(-3)
        image, labels = random_crop([image, labels], self.crop, rng)
        return {"image": image.contiguous(), "labels": labels.contiguous()}


class PairedVolumeDataModule(L.LightningDataModule):
    """Paired volumes split by subject (module docstring).

    Args:
        root: SynthRAD-layout folder with ``labels`` per subject.
        phantom_subjects, phantom_spacing_mm, phantom_seed, phantom_version: the phantoms written to ``root`` when
            it does not exist.
        val_subjects: subjects held out for validation; split_seed: the split's seed.
        spacing_mm: the voxel size every volume is resampled to (the model's grid).
        classes: tissue classes (13 for phantom v2).
        divisible: pad each axis to a multiple of this (16: an autoencoder and a latent U-Net that each
            downsample by 4).
        crop: the autoencoders' training cube (voxels); 0 serves whole volumes.
        crops_per_epoch: cubes per training epoch.
        batch_size: cubes, volumes or latents per batch.
    """

    def __init__(self, root: str = "data/phantom_v2_4mm", phantom_subjects: int = 40, phantom_spacing_mm: float = 4.0,
                 phantom_seed: int = 0, phantom_version: int = 2, val_subjects: int = 2, split_seed: int = 0,
                 spacing_mm: float | None = 4.0, classes: int = 13, divisible: int = 16, crop: int = 32,
                 crops_per_epoch: int = 512, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_volumes: PairedVolumes | None = None
        self.val_volumes: PairedVolumes | None = None
        self.latents: TensorDataset | None = None

    def prepare_data(self) -> None:
        h = self.hparams
        write_phantoms_if_missing(h.root, h.phantom_subjects, h.phantom_spacing_mm, h.phantom_seed, h.phantom_version)

    def setup(self, stage: str | None = None) -> None:
        if self.train_volumes is not None:
            return
        h = self.hparams
        pairs, train_ids, val_ids = split_subject_folder(h.root, h.val_subjects, h.split_seed)
        volumes = load_paired_volumes(pairs, classes=h.classes, spacing_mm=h.spacing_mm, divisible=h.divisible)
        self.train_volumes = volumes.subset(train_ids)
        self.val_volumes = volumes.subset(val_ids) if val_ids else None

    @property
    def grid(self) -> dict[str, Any]:
        """The training volumes' grid (``volumes.PairedVolumes.grid``)."""
        return self.train_volumes.grid

    def use_latents(self, latents: TensorDataset) -> None:
        """Serve ``latents`` (a latent model's encoded training copies) as the training data from now on."""
        self.latents = latents

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        if self.latents is not None:
            return DataLoader(self.latents, batch_size=h.batch_size, shuffle=True, drop_last=len(self.latents) > h.batch_size)
        if h.crop:
            cubes = RandomCubes(self.train_volumes, h.crop, h.crops_per_epoch, seed=h.split_seed)
            return DataLoader(cubes, batch_size=h.batch_size, shuffle=False)
        whole = TensorDataset(self.train_volumes.images, self.train_volumes.labels)
        return DataLoader(whole, batch_size=h.batch_size, shuffle=True, collate_fn=volume_batch)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_volumes is None or self.latents is not None:
            return []
        whole = TensorDataset(self.val_volumes.images, self.val_volumes.labels)
        return DataLoader(whole, batch_size=1, collate_fn=volume_batch)


def volume_batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"image": (B, 2, X, Y, Z), "labels": (B, X, Y, Z)}`` of ``TensorDataset`` items of whole volumes."""
    return {"image": torch.stack([i[0] for i in items]), "labels": torch.stack([i[1] for i in items])}

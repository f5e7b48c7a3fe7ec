"""``PairedSliceSynthesis``: a generative model of paired MR, CT and tissue labels, slice by slice.

Design (issue 13; ``docs/protocols.md`` §2): one MONAI ``DiffusionModelUNet`` diffuses the *joint*
state of an axial slice, ``(2 + B, H, W)``:

- channel 0: the MR, normalised as for translation (``transforms.normalise_mr``, [-1, 1]);
- channel 1: the CT in [-1, 1] (``transforms.ct_to_unit``);
- channels 2..: the tissue label as *analog bits* (Chen et al. 2022, "Analog Bits"): class c is
  written as the B = ceil(log2(classes)) bits of c, each as -1 or +1, and read back as the nearest
  valid codeword (``bits_to_labels``).

Because MR, CT and labels are one sample of one network, they are aligned by construction: no
second model has to agree with the first. The network is conditioned on the slice's height in the
volume (a constant channel in [-1, 1], concatenated to ``x_t``). A synthetic subject is the stack of
its slices at every height, sampled together with ancestral DDPM from noise that is **correlated
along the slices** (``correlated_slice_noise``, for the start and for every step): neighbouring slices
draw nearly the same noise and come out alike, slices a few centimetres apart draw independent
noise. ``benchmarks/augmentation_utility.py`` measures how well the slices agree, against the real
volumes' neighbouring-slice difference. This is a 2.5-D answer, not a 3-D model: on 2 CPU cores a
3-D network over whole heads would see a handful of volumes in its budget, where a slice model sees
every slice of them. (The deterministic DDIM from one shared noise gave noise-like slices on a
generator trained for 0.4 CPU-hours, all alike along the volume; the ancestral sampler gave heads.)

The model works on the voxel grid it was trained on (recorded in the checkpoint, ``grid``): the
bundled one at 4 mm, 48 x 56 x 48 voxels, a quarter of the 2 mm cost per slice and an eighth per
volume. Users who need 2 mm resample it, as ``MRItoCTDataModule(spacing_mm=2)`` does on loading.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.samplers import get_sampler, resolve_spacing
from sci_diffusion.state_spaces import EuclideanSpace

from ..io.nifti import MedicalInputError

MR_ARBITRARY_UNITS = 1000.0  # a synthetic MR is written as (x + 1) / 2 * this: [0, 1000] a.u.


# ----- labels as analog bits -------------------------------------------------------------------------
def label_bit_count(classes: int) -> int:
    """Bits needed for ``classes`` labels (10 tissue classes: 4)."""
    if classes < 2:
        raise ValueError(f"A label map needs at least 2 classes, got {classes}.")
    return max(1, math.ceil(math.log2(classes)))


def label_codewords(classes: int) -> Tensor:
    """``(classes, B)`` float32: row c holds the bits of c (least significant first) as -1 / +1."""
    bits = label_bit_count(classes)
    c = torch.arange(classes).unsqueeze(1)
    return ((c >> torch.arange(bits)) & 1).float() * 2.0 - 1.0


def labels_to_bits(labels: Tensor, classes: int) -> Tensor:
    """Integer labels ``(..., H, W)`` in ``[0, classes)`` -> analog bits ``(..., B, H, W)`` in {-1, +1}."""
    codes = label_codewords(classes).to(labels.device)
    return codes[labels.long()].movedim(-1, -3)


def bits_to_labels(bits: Tensor, classes: int) -> Tensor:
    """Analog bits ``(..., B, H, W)`` -> labels ``(..., H, W)`` int64: the nearest valid codeword.

    All codewords have the same length, so the nearest one has the largest dot product; a bit pattern
    of no class (10..15 for 10 classes) goes to its nearest class instead of out of range.
    """
    codes = label_codewords(classes).to(bits)
    return torch.einsum("...bhw,cb->...chw", bits, codes).argmax(dim=-3)


def slice_heights(count: int) -> Tensor:
    """``(count,)`` float32: the height of each axial slice of a volume, -1 (bottom) .. +1 (top)."""
    return torch.linspace(-1.0, 1.0, count) if count > 1 else torch.zeros(1)


def correlated_slice_noise(count: int, shape: Sequence[int], generator: torch.Generator | None,
                           correlation_slices: float = 4.0) -> Tensor:
    """Standard normal noise ``(count, *shape)`` for the slices of one volume, correlated along the slices.

    Independent anchor fields sit every ``correlation_slices`` slices; a slice's noise is the linear
    interpolation of its two anchors, rescaled to unit variance. Neighbouring slices then share most of
    their noise (correlation above 0.9 at 4 slices between anchors) and slices two anchors apart none.
    """
    anchors = int(math.ceil((count - 1) / correlation_slices)) + 1 if count > 1 else 1
    fields = torch.randn((anchors, *shape), generator=generator)
    position = torch.arange(count, dtype=torch.float32) / correlation_slices
    left = position.floor().long().clamp(max=anchors - 1)
    right = (left + 1).clamp(max=anchors - 1)
    w = (position - left.float()).view(-1, *([1] * len(shape)))
    mixed = (1.0 - w) * fields[left] + w * fields[right]
    return mixed / ((1.0 - w) ** 2 + w**2).sqrt()


class SliceCorrelatedSpace(EuclideanSpace):
    """Euclidean states of the slices of one volume ``(Z, C, H, W)``, whose noise is ``correlated_slice_noise``."""

    def __init__(self, correlation_slices: float = 4.0) -> None:
        super().__init__()
        self.correlation_slices = correlation_slices

    def noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return correlated_slice_noise(like.shape[0], like.shape[1:], generator, self.correlation_slices).to(like)


# ----- data -----------------------------------------------------------------------------------------
def plain_tensor(x: Tensor) -> Tensor:
    """A MONAI MetaTensor's data as a plain tensor (batches of plain tensors collate without metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


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
        from monai.transforms import DivisiblePad

        from ..data.transforms import mri2ct_transforms

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
        from ..data.datamodule import write_phantoms_if_missing

        h = self.hparams
        write_phantoms_if_missing(h.root, h.phantom_subjects, h.phantom_spacing_mm, h.phantom_seed)

    def setup(self, stage: str | None = None) -> None:
        from ..data.datamodule import split_patients
        from ..data.pairs import find_synthrad_pairs

        if self.train_set is not None:
            return
        h = self.hparams
        pairs = find_synthrad_pairs(h.root)
        if len(pairs) <= h.val_subjects:
            raise MedicalInputError(f"{h.root} holds {len(pairs)} subjects, too few to hold out {h.val_subjects}.")
        train_ids, val_ids = split_patients([p["id"] for p in pairs], h.val_subjects, h.split_seed)
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


# ----- the model --------------------------------------------------------------------------------
class PairedSliceSynthesis(DiffusionModule):
    """Joint diffusion of MR, CT and tissue-label slices, conditioned on the slice height.

    Args:
        classes: tissue classes in the label maps (10 for the phantoms).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: the size of
            MONAI's ``DiffusionModelUNet``.
        grid: the training volumes' grid (``PairedSynthesisDataModule.grid``); filled in when
            training starts and stored in the checkpoint, so a trained model knows what to write.
        **kwargs: the core DiffusionModule's arguments; defaults here v-prediction, cosine schedule,
            T = 1000.
    """

    domain = "medical"

    def __init__(self, classes: int = 10, channels: Sequence[int] = (16, 32, 64),
                 attention_levels: Sequence[bool] = (False, False, True), num_res_blocks: int = 1,
                 num_head_channels: int = 16, norm_num_groups: int = 8, grid: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        if len(channels) != len(attention_levels):
            raise ValueError("channels and attention_levels must have the same length.")
        kwargs.setdefault("schedule", "cosine")
        kwargs.setdefault("prediction", "v")
        kwargs.setdefault("sample_every_n_epochs", 0)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    @property
    def state_channels(self) -> int:
        """MR, CT and the label bits."""
        return 2 + label_bit_count(self.hparams.classes)

    def build_network(self) -> torch.nn.Module:
        from monai.networks.nets import DiffusionModelUNet

        h = self.hparams
        return DiffusionModelUNet(
            spatial_dims=2, in_channels=self.state_channels + 1, out_channels=self.state_channels,
            channels=tuple(h.channels), attention_levels=tuple(h.attention_levels), num_res_blocks=h.num_res_blocks,
            num_head_channels=h.num_head_channels, norm_num_groups=h.norm_num_groups,
        )

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "train_set", None) is not None:
            self.hparams["grid"] = datamodule.grid  # saved with the checkpoint

    def prepare_batch(self, batch: dict[str, Tensor]) -> DiffusionBatch:
        x = batch["x"].float()
        return DiffusionBatch(x0=x, space=EuclideanSpace(), cond=None, context=batch["height"].float())

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, context: Tensor | None = None) -> Tensor:
        """Network output (v or eps) for ``x_t (B, C, H, W)``, ``t`` in [0, 1], slice heights ``context (B,)``."""
        t = t.to(x_t.device, torch.float32)
        timesteps = (t.expand(x_t.shape[0]) if t.dim() == 0 else t) * self.schedule.T
        height = context.to(x_t).view(-1, 1, 1, 1).expand(-1, 1, *x_t.shape[2:])
        return self.net(torch.cat([x_t, height], dim=1), timesteps=timesteps)

    # ----- sampling -----------------------------------------------------------------------------
    def _require_grid(self) -> dict[str, Any]:
        grid = self.hparams.get("grid")
        if not grid:
            raise MedicalInputError("This synthesis model has no training grid recorded; it was never trained.")
        return grid

    @torch.no_grad()
    def sample_volume(self, generator: torch.Generator, steps: int = 50, sampler: str = "ddpm",
                      correlation_slices: float = 4.0) -> dict[str, np.ndarray]:
        """One synthetic subject on the training grid: all its slices in one batch, their noise correlated
        along the volume (``SliceCorrelatedSpace``; ``correlation_slices``: anchor spacing in slices).

        Returns:
            ``{"mr": (X, Y, Z) float32 in [-1, 1] (background -1), "ct": (X, Y, Z) float32 HU,
            "labels": (X, Y, Z) uint8, "mask": (X, Y, Z) uint8}``; the CT is -1000 HU outside the body
            (labels > 0), as SynthRAD's are.
        """
        from ..data.phantom import CT_BACKGROUND_HU
        from ..data.transforms import unit_to_ct

        grid = self._require_grid()
        (top, bottom), (left, right) = grid["pad"]
        x_size, y_size, z_size = grid["shape"]
        space = SliceCorrelatedSpace(correlation_slices)
        noise = space.noise(torch.empty(z_size, self.state_channels, x_size + top + bottom, y_size + left + right),
                            generator).to(self.device)
        denoiser = self.denoiser(context=slice_heights(z_size).to(self.device), clip=(-1.0, 1.0))
        x = get_sampler(sampler)(denoiser, noise, self.schedule, steps, space, generator=generator,
                                 spacing=resolve_spacing(sampler, None)).cpu()
        x = x[:, :, top:top + x_size, left:left + y_size]  # (Z, C, X, Y)
        labels = bits_to_labels(x[:, 2:], self.hparams.classes).movedim(0, -1).numpy().astype(np.uint8)
        mask = labels > 0
        ct = unit_to_ct(x[:, 1].movedim(0, -1).numpy())
        mr = x[:, 0].movedim(0, -1).numpy()
        return {"mr": np.where(mask, mr, -1.0).astype(np.float32),
                "ct": np.where(mask, np.round(ct), CT_BACKGROUND_HU).astype(np.float32),
                "labels": labels, "mask": mask.astype(np.uint8)}


def subject_generator(seed: int, index: int) -> torch.Generator:
    """The generator of synthetic subject ``index`` (1-based) of ``seed``: independent of how many are drawn."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))


def iterate_subjects(model: PairedSliceSynthesis, num: int, seed: int = 0, steps: int = 50,
                     sampler: str = "ddpm") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(index, volumes)`` for subjects 1..num (``PairedSliceSynthesis.sample_volume``)."""
    for index in range(1, num + 1):
        yield index, model.sample_volume(subject_generator(seed, index), steps=steps, sampler=sampler)

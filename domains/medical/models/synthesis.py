"""``PairedSliceSynthesis``: a generative model of paired MR, CT and tissue labels, slice by slice.

Design (issue 13; ``docs/protocols.md`` §2): one MONAI ``DiffusionModelUNet`` diffuses the *joint*
state of an axial slice, ``(2 + B, H, W)``:

- channel 0: the MR, normalised as for translation (``data.transforms.normalise_mr``, [-1, 1]);
- channel 1: the CT in [-1, 1] (``data.transforms.ct_to_unit``);
- channels 2..: the tissue label as *analog bits* (Chen et al. 2022, "Analog Bits"): class c is
  written as the B = ceil(log2(classes)) bits of c, each as -1 or +1, and read back as the nearest
  valid codeword (``data.label_bits``).

Because MR, CT and labels are one sample of one network, they are aligned by construction: no
second model has to agree with the first. The network is conditioned on the slice's height in the
volume (a constant channel in [-1, 1], concatenated to ``x_t``). A synthetic subject is the stack of
its slices at every height, sampled together with ancestral DDPM from noise that is **correlated
along the slices** (``slice_space.SliceCorrelatedSpace``, for the start and for every step): neighbouring slices
draw nearly the same noise and come out alike, slices a few centimetres apart draw independent
noise. ``benchmarks/augmentation_utility.py`` measures how well the slices agree, against the real
volumes' neighbouring-slice difference. This is a 2.5-D answer, not a 3-D model: on 2 CPU cores a
3-D network over whole heads would see a handful of volumes in its budget, where a slice model sees
every slice of them. (The deterministic DDIM from one shared noise gave noise-like slices on a
generator trained for 0.4 CPU-hours, all alike along the volume; the ancestral sampler gave heads.)

The model works on the voxel grid it was trained on (recorded in the checkpoint, ``grid``): the
bundled one at 4 mm, 48 x 56 x 48 voxels, a quarter of the 2 mm cost per slice and an eighth per
volume. Users who need 2 mm resample it, as ``MRItoCTDataModule(spacing_mm=2)`` does on loading.

Its training data are ``data.paired_slices.PairedVolumeSlices`` through ``data.datamodule.PairedSynthesisDataModule``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sci_diffusion.distillation import distilled_times
from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.samplers import get_sampler
from sci_diffusion.state_spaces import EuclideanSpace

from ..data.label_bits import bits_to_labels, label_bit_count
from ..data.paired_slices import slice_heights
from ..data.phantom import CT_BACKGROUND_HU
from ..data.transforms import unit_to_ct
from ..io.nifti import MedicalInputError
from .slice_space import SliceCorrelatedSpace
from .unet import DiffusionUNet


class PairedSliceSynthesis(DiffusionUNet, DiffusionModule):
    """Joint diffusion of MR, CT and tissue-label slices, conditioned on the slice height.

    Args:
        classes: tissue classes in the label maps (10 for the phantoms).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: the size of
            MONAI's ``DiffusionModelUNet`` (``unet.DiffusionUNet``).
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
        kwargs.setdefault("schedule", "cosine")
        kwargs.setdefault("prediction", "v")
        kwargs.setdefault("sample_every_n_epochs", 0)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    @property
    def state_channels(self) -> int:
        """MR, CT and the label bits."""
        return 2 + label_bit_count(self.hparams.classes)

    @property
    def unet_channels(self) -> tuple[int, int]:
        """The state and the height channel in, the state out."""
        return self.state_channels + 1, self.state_channels

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "train_set", None) is not None:
            self.hparams["grid"] = datamodule.grid  # saved with the checkpoint

    def prepare_batch(self, batch: dict[str, Tensor]) -> DiffusionBatch:
        x = batch["x"].float()
        return DiffusionBatch(x0=x, space=EuclideanSpace(), cond=None, context=batch["height"].float())

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, context: Tensor | None = None) -> Tensor:
        """Network output (v or eps) for ``x_t (B, C, H, W)``, ``t`` in [0, 1], slice heights ``context (B,)``."""
        timesteps = self.unet_timesteps(t, x_t)
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
        grid = self._require_grid()
        (top, bottom), (left, right) = grid["pad"]
        x_size, y_size, z_size = grid["shape"]
        space = SliceCorrelatedSpace(correlation_slices)
        noise = space.noise(torch.empty(z_size, self.state_channels, x_size + top + bottom, y_size + left + right),
                            generator).to(self.device)
        denoiser = self.denoiser(context=slice_heights(z_size).to(self.device), clip=(-1.0, 1.0))
        times = distilled_times(self, sampler, steps)
        x = get_sampler(sampler)(denoiser, noise, self.schedule, times, space, generator=generator).cpu()
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
                     sampler: str = "ddpm", first: int = 1) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """``(index, volumes)`` for subjects ``first .. first + num - 1`` (``PairedSliceSynthesis.sample_volume``); each
    from its own generator ``(seed, index)``, so part of a run draws the run's own subjects."""
    for index in range(first, first + num):
        yield index, model.sample_volume(subject_generator(seed, index), steps=steps, sampler=sampler)

"""``MRItoCTDiffusion``: conditional diffusion of a CT slice given k neighbouring MR slices.

The state is one CT slice ``(B, 1, H, W)`` in [-1, 1] (``transforms.ct_to_unit``); the
condition is the stack of k MR slices ``(B, k, H, W)`` centred on it (2.5-D, ``slices.SliceDataset``),
concatenated to ``x_t`` on the channel axis before MONAI's ``DiffusionModelUNet`` ("concat"
conditioning, ``in_channels = 1 + k``; ``unet.DiffusionUNet``). Training, EMA, schedules and samplers are
the core's. ``SliceTranslation`` holds what it shares with the regression baseline (``regression.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from torch import Tensor

from sci_diffusion.distillation import distilled_times
from sci_diffusion.generators import PerSampleGenerator
from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.samplers import get_sampler
from sci_diffusion.state_spaces import EuclideanSpace

from ..data.transforms import unit_to_ct
from .unet import DiffusionUNet


def check_mr_slices(k: int) -> None:
    """Refuse a number of MR slices per stack that has no centre slice."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be a positive odd number, got {k}.")


def slice_batch(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
    """``(ct (B, 1, H, W), mr (B, k, H, W), mask (B, 1, H, W))`` from a collated SliceDataset batch."""
    return batch["ct"].float(), batch["mr"].float(), batch["mask"].float()


def check_data_matches(module: torch.nn.Module) -> None:
    """Fail early when the datamodule's k differs from the model's (the U-Net's input width)."""
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    k_data = dict(getattr(datamodule, "hparams", None) or {}).get("k")
    if k_data is not None and int(k_data) != int(module.hparams.k):
        raise ValueError(f"The data gives k={k_data} MR slices but the model was built for k={module.hparams.k}; "
                         "set model and data k to the same value.")


def record_training_data(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Add the training data's voxel size (mm, RAS) to the checkpoint's sci_diffusion record."""
    trainer = getattr(module, "_trainer", None)
    datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
    voxel_mm = getattr(datamodule, "voxel_mm", None)
    if voxel_mm is not None:
        checkpoint["sci_diffusion"]["voxel_mm"] = list(voxel_mm)


class SliceTranslation:
    """What the diffusion model and the regression baseline share (a mixin before DiffusionModule):
    2.5-D slice batches, the check that data and model agree on k, the training voxel size in the
    checkpoint, a validation MAE in HU on the first validation batch, and sliding-window inference
    for models trained on crops (``sliding_window``)."""

    _val_example: tuple[Tensor, Tensor, Tensor] | None = None
    window: tuple[int, int] | None = None  # set by ``sliding_window``: the training crop (h, w)
    _window_overlap: float = 0.25

    @contextmanager
    def sliding_window(self, roi: Sequence[int] | None, overlap: float = 0.25):
        """Within this block, slices larger than ``roi`` go through the network in ``roi``-sized
        windows (MONAI's ``SlidingWindowInferer``, Gaussian blending, ``overlap``), as a model trained
        on crops of that size saw them; None leaves whole slices whole."""
        previous = self.window, self._window_overlap
        self.window, self._window_overlap = (None if roi is None else (int(roi[0]), int(roi[1]))), overlap
        try:
            yield self
        finally:
            self.window, self._window_overlap = previous

    def run_network(self, inputs: Tensor, timesteps: Tensor | None = None, net: torch.nn.Module | None = None) -> Tensor:
        """``net(inputs[, timesteps=...])`` (default ``self.net``) on ``(B, C, H, W)``, in windows when
        ``window`` is set and the slice is larger than it. The time of each slice rides along as an
        extra channel, so each window is called with its own slice's time."""
        net = self.net if net is None else net
        call = net if timesteps is None else (lambda x: net(x[:, :-1], timesteps=x[:, -1, 0, 0]))  # noqa: E731
        if timesteps is not None:
            inputs = torch.cat([inputs, timesteps.to(inputs.dtype).view(-1, 1, 1, 1).expand(-1, 1, *inputs.shape[2:])], 1)
        if self.window is None or all(n <= w for n, w in zip(inputs.shape[2:], self.window)):
            return call(inputs)
        inferer = SlidingWindowInferer(self.window, sw_batch_size=max(1, inputs.shape[0]), overlap=self._window_overlap,
                                       mode="gaussian")
        return inferer(inputs, call)

    @property
    def size_multiple(self) -> int:
        """Slice sides must be multiples of this (one halving per U-Net level)."""
        return 2 ** (len(self.hparams.channels) - 1)

    def prepare_batch(self, batch: dict[str, Any]) -> DiffusionBatch:
        ct, mr, mask = slice_batch(batch)
        return DiffusionBatch(x0=ct, space=EuclideanSpace(), cond=None, context=mr, mask=mask)

    def setup(self, stage: str) -> None:
        check_data_matches(self)
        super().setup(stage)  # DiffusionModule's: the warm start from ``init_from``

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record_training_data(self, checkpoint)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        n = self.hparams.get("val_slices")  # None: the whole batch; 0: no sampling at validation
        if batch_idx == 0 and n != 0:
            ct, mr, mask = slice_batch(batch)
            self._val_example = (ct[:n], mr[:n], mask[:n])
        return super().validation_step(batch, batch_idx)

    def validation_metrics(self) -> dict[str, float]:
        """MAE in HU inside the body mask of the kept validation slices (sampled with ``val_sampler``)."""
        if self._val_example is None:
            return {}
        ct, mr, mask = self._val_example
        pred = self.synthesise(mr, sampler=self.hparams.val_sampler, steps=self.hparams.val_steps,
                               generator=torch.Generator().manual_seed(0), mask=mask)
        err = (unit_to_ct(pred) - unit_to_ct(ct)).abs() * mask
        return {"mae_hu": float(err.sum() / mask.sum().clamp(min=1))}


class MRItoCTDiffusion(SliceTranslation, DiffusionUNet, DiffusionModule):
    """MRI-to-CT translation by conditional diffusion (2.5-D, slice by slice).

    Args:
        k: odd number of MR slices in the condition (the data module's ``k``).
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: the
            ``monai.networks.nets.DiffusionModelUNet`` size (``unet.DiffusionUNet``); every channel count
            must be divisible by ``norm_num_groups``. The default (about 1.1 M parameters) is sized so that a 2 mm
            head (96 x 112 x 96) translates in under a minute with 20 DDIM steps on one CPU thread.
        val_slices: slices sampled at validation for an HU error (0: none).
        **kwargs: the core DiffusionModule's arguments (``init_from``, a warm start from a checkpoint of
            this same model, among them); here the defaults are v-prediction,
            the cosine schedule and T = 1000.
    """

    domain = "medical"
    deterministic = False

    def __init__(
        self,
        k: int = 3,
        channels: Sequence[int] = (16, 32, 64, 64),
        attention_levels: Sequence[bool] = (False, False, False, True),
        num_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 8,
        val_slices: int = 8,
        **kwargs: Any,
    ) -> None:
        check_mr_slices(k)
        kwargs.setdefault("schedule", "cosine")
        kwargs.setdefault("prediction", "v")
        kwargs.setdefault("timesteps", 1000)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    @property
    def context_channels(self) -> int:
        """Channels concatenated to ``x_t``: the k MR slices."""
        return int(self.hparams.k)

    @property
    def unet_channels(self) -> tuple[int, int]:
        """The CT state and its context in, one CT channel out."""
        return 1 + self.context_channels, 1

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, context: Tensor | None = None) -> Tensor:
        """Network output (v or eps) for ``x_t (B, 1, H, W)``, ``t`` in [0, 1] (0-d or ``(B,)``), MR ``context (B, k, H, W)``."""
        return self.run_network(torch.cat([x_t, context.to(x_t.dtype)], dim=1), self.unet_timesteps(t, x_t))

    # ----- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def synthesise(self, mr: Tensor, noise: Tensor | None = None, sampler: str = "ddim", steps: int = 20,
                   generator: torch.Generator | PerSampleGenerator | None = None, spacing: str | None = None,
                   callback=None, mask: Tensor | None = None) -> Tensor:
        """One sample of CT slices ``(B, 1, H, W)`` in [-1, 1] given MR slices ``(B, k, H, W)``.

        Args:
            mr: normalised MR stacks; H and W multiples of ``size_multiple``.
            noise: the starting noise ``x_T (B, 1, H, W)``; drawn from ``generator`` when None.
            sampler, steps: a core sampler name and its step count.
            generator: for the starting noise and any noise the sampler draws; a
                :class:`~sci_diffusion.generators.PerSampleGenerator` (one generator per slice) makes
                each slice's draws independent of the batch it is in.
            spacing: the sampler's time grid (``sci_diffusion.time_grids.SPACINGS``); None: its default.
            callback: the core samplers' ``callback(i, s, x_s, x0_estimate)`` after every step, states in
                the CT's [-1, 1] units (``translate --trajectory-png``).
            mask: the body ``(B, 1, H, W)``; unused here (the state is the CT, -1 outside the body, which the
                model learns), taken so that every MRI-to-CT model is called alike (the residual model uses it).
        """
        space = EuclideanSpace()
        if noise is None:
            noise = space.noise(mr[:, :1], generator)
        denoiser = self.denoiser(context=mr, clip=(-1.0, 1.0))
        times = distilled_times(self, sampler, steps, spacing)
        return get_sampler(sampler)(denoiser, noise.to(mr), self.schedule, times, space, generator=generator,
                                    callback=callback)

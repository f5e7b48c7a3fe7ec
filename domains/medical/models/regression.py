"""The deterministic baseline: a MONAI ``UNet`` mapping the k MR slices straight to the CT slice.

docs/protocols.md §2: one-step regression matches or beats diffusion sampling on paired
MRI-CT, so every diffusion result is reported next to this baseline, trained on the same
slices with the same optimiser, EMA and wall-clock budget.

It subclasses the core's ``DiffusionModule`` only to share its plumbing: ``fit --config`` through
the CLI (whose LightningCLI takes DiffusionModule subclasses), AdamW with warm-up, EMA, the loss
curve, and the ``checkpoint["sci_diffusion"]`` record that ``load_module`` reads. The noise
schedule it inherits is never used: the loss is an L1 between ``net(mr)`` and the CT in the body mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import Tensor

from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.parameterisation import masked_mean_error

from .diffusion import SliceTranslation, check_mr_slices


def regression_unet(k: int, channels: Sequence[int], num_res_units: int) -> torch.nn.Module:
    """The regression network: a 2-D MONAI ``UNet`` from k MR slices to one CT slice (strides of 2)."""
    return UNet(spatial_dims=2, in_channels=k, out_channels=1, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units)


@dataclass
class RegressionLoss:
    """The regression's training loss (``losses.py``'s interface): the mean error (``kind``: ``l1`` or ``l2``)
    between ``model(mr)`` and the CT inside the body mask. No noise and no time: the batch's ``context`` is the
    MR stack and its ``x0`` the CT slice."""

    kind: str = "l1"

    def __call__(self, model: MRItoCTRegression, batch: DiffusionBatch, generator: torch.Generator | None = None) -> Tensor:
        return masked_mean_error(model(batch.context), batch.x0, mask=batch.mask, kind=self.kind)


class MRItoCTRegression(SliceTranslation, DiffusionModule):
    """Deterministic MRI-to-CT U-Net (2.5-D): ``(B, k, H, W)`` MR -> ``(B, 1, H, W)`` CT in [-1, 1].

    Args:
        k: odd number of MR slices in (the data module's ``k``).
        channels, num_res_units: ``monai.networks.nets.UNet`` size (strides of 2 between levels);
            the default has about 1.1 M parameters, like ``MRItoCTDiffusion``'s default.
        **kwargs: the core's optimiser, EMA and warm-start arguments (``lr``, ``ema_decay``, ``lr_warmup_steps``,
            ``init_from``, ...);
            ``loss_type`` defaults to ``l1``.
    """

    domain = "medical"
    deterministic = True

    def __init__(self, k: int = 3, channels: Sequence[int] = (32, 64, 128, 160), num_res_units: int = 2,
                 **kwargs: Any) -> None:
        check_mr_slices(k)
        kwargs.setdefault("loss_type", "l1")
        kwargs.setdefault("prediction", "x0")
        kwargs.setdefault("sample_every_n_epochs", 1)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_network(self) -> torch.nn.Module:
        h = self.hparams
        return regression_unet(h.k, h.channels, h.num_res_units)

    def forward(self, mr: Tensor) -> Tensor:  # type: ignore[override]
        """CT estimate ``(B, 1, H, W)`` (unclipped, [-1, 1] scale) from MR stacks ``(B, k, H, W)``."""
        return self.run_network(mr)

    def denoiser(self, context: Any = None, clip: tuple[float, float] | None = None):
        raise TypeError("MRItoCTRegression is deterministic and has no denoiser; use synthesise().")

    def build_loss(self) -> RegressionLoss:
        return RegressionLoss(self.hparams.loss_type)

    @torch.no_grad()
    def synthesise(self, mr: Tensor, noise: Tensor | None = None, sampler: str = "ddim", steps: int = 20,
                   generator: object = None, spacing: str | None = None, mask: Tensor | None = None) -> Tensor:
        """CT slices ``(B, 1, H, W)`` in [-1, 1]; the sampling arguments and the body ``mask`` are accepted and ignored."""
        return self(mr).clamp(-1.0, 1.0)

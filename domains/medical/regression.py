"""The deterministic baseline: a MONAI ``UNet`` mapping the k MR slices straight to the CT slice.

REFERENCE.md section 2: one-step regression matches or beats diffusion sampling on paired
MRI-CT, so every diffusion result is reported next to this baseline, trained on the same
slices with the same optimiser, EMA and wall-clock budget.

It subclasses the core's ``DiffusionModule`` only to share its plumbing: ``fit --config`` through
the CLI (whose LightningCLI takes DiffusionModule subclasses), AdamW with warm-up, EMA, the loss
curve, and the ``checkpoint["sci_diffusion"]`` record that ``load_module`` reads. The noise
schedule it inherits is never used: the loss is an L1 between ``net(mr)`` and the CT in the body mask.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.parameterisation import diffusion_loss
from sci_diffusion.state_spaces import EuclideanSpace

from .module import check_data_matches, record_training_data, slice_batch


class MRItoCTRegression(DiffusionModule):
    """Deterministic MRI-to-CT U-Net (2.5-D): ``(B, k, H, W)`` MR -> ``(B, 1, H, W)`` CT in [-1, 1].

    Args:
        k: odd number of MR slices in (the data module's ``k``).
        channels, num_res_units: ``monai.networks.nets.UNet`` size (strides of 2 between levels);
            the default has about 1.1 M parameters, like ``MRItoCTDiffusion``'s default.
        **kwargs: the core's optimiser and EMA arguments (``lr``, ``ema_decay``, ``lr_warmup_steps``, ...);
            ``loss_type`` defaults to ``l1``.
    """

    domain = "medical"
    deterministic = True

    def __init__(self, k: int = 3, channels: Sequence[int] = (32, 64, 128, 160), num_res_units: int = 2,
                 **kwargs: Any) -> None:
        if k < 1 or k % 2 == 0:
            raise ValueError(f"k must be a positive odd number, got {k}.")
        kwargs.setdefault("loss_type", "l1")
        kwargs.setdefault("prediction", "x0")
        kwargs.setdefault("sample_every_n_epochs", 1)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self._val_example: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.hparams.channels) - 1)

    def build_network(self) -> torch.nn.Module:
        from monai.networks.nets import UNet

        h = self.hparams
        return UNet(spatial_dims=2, in_channels=h.k, out_channels=1, channels=tuple(h.channels),
                    strides=(2,) * (len(h.channels) - 1), num_res_units=h.num_res_units)

    def forward(self, mr: Tensor) -> Tensor:  # type: ignore[override]
        """CT estimate ``(B, 1, H, W)`` (unclipped, [-1, 1] scale) from MR stacks ``(B, k, H, W)``."""
        return self.net(mr)

    def denoiser(self, context: Any = None, clip: tuple[float, float] | None = None):
        raise TypeError("MRItoCTRegression is deterministic and has no denoiser; use synthesise().")

    def prepare_batch(self, batch: dict[str, Any]) -> DiffusionBatch:
        ct, mr, mask = slice_batch(batch)
        return DiffusionBatch(x0=ct, space=EuclideanSpace(), cond=None, context=mr, mask=mask)

    def diffusion_loss(self, b: DiffusionBatch, generator: torch.Generator | None = None) -> Tensor:
        """The regression loss (L1 by default) between ``net(mr)`` and the CT, inside the body mask."""
        return diffusion_loss(self(b.context), b.x0, mask=b.mask, kind=self.hparams.loss_type)

    def setup(self, stage: str) -> None:
        check_data_matches(self)


    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record_training_data(self, checkpoint)

    @torch.no_grad()
    def synthesise(self, mr: Tensor, noise: Tensor | None = None, sampler: str = "ddim", steps: int = 20,
                   generator: torch.Generator | None = None) -> Tensor:
        """CT slices ``(B, 1, H, W)`` in [-1, 1]; the sampling arguments are accepted and ignored."""
        return self(mr).clamp(-1.0, 1.0)

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        if batch_idx == 0:
            self._val_example = slice_batch(batch)
        return super().validation_step(batch, batch_idx)

    def validation_metrics(self) -> dict[str, float]:
        """MAE in HU inside the body mask of the first validation batch."""
        if self._val_example is None:
            return {}
        from .transforms import unit_to_ct

        ct, mr, mask = self._val_example
        err = (unit_to_ct(self.synthesise(mr)) - unit_to_ct(ct)).abs() * mask
        return {"mae_hu": float(err.sum() / mask.sum().clamp(min=1))}

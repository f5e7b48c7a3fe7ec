"""``TissueSegmentation``: tissue labels from MR alone, the downstream segmentation model of issue 31 §2.

A 3-D MONAI ``UNet`` (``monai.networks.nets.UNet``) maps the normalised MR ``(1, X, Y, Z)`` (in [-1, 1], as the
translation pipeline reads it) to class logits ``(classes, X, Y, Z)``; it trains with MONAI's ``DiceCELoss`` (soft
Dice and cross-entropy, so thin tissues count as much as the brain) on random cubes of whole heads
(``data.volume_datamodule.PairedVolumeDataModule`` with ``crop``: its cubes carry MR, CT and labels; only the MR
is read here), mirrored left-right at random. A whole head is segmented with MONAI's
``sliding_window_inference`` over cubes of the training size (Gaussian-weighted overlap), so any head size goes.

Scores are MONAI's ``DiceMetric`` per tissue (background left out): :func:`dice_per_tissue`. A tissue absent
from the reference gives NaN (MONAI's ``ignore_empty``), which the mean over tissues skips.

Trained with ``sci-diffusion fit --config configs/medical/tissue_segmentation.yaml``; the utility study
(``benchmarks/medical_synthetic_utility.py``) trains it on real, real + synthetic and synthetic heads.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from torch import Tensor

from sci_diffusion.checkpoints import training_record


def dice_per_tissue(predicted: Tensor, reference: Tensor, classes: int) -> np.ndarray:
    """MONAI ``DiceMetric`` of each tissue label ``1 .. classes - 1`` (background 0 left out).

    Args:
        predicted, reference: integer label maps ``(X, Y, Z)`` (or ``(B, X, Y, Z)``), values in ``[0, classes)``.
        classes: label classes, background included.

    Returns:
        ``(classes - 1,)`` float64 Dice in [0, 1] (the mean over the batch); NaN where the reference lacks the
        tissue (MONAI's ``ignore_empty``).
    """
    if predicted.shape != reference.shape:
        raise ValueError(f"Label maps of different shapes: {tuple(predicted.shape)} and {tuple(reference.shape)}.")
    if predicted.dim() == 3:
        predicted, reference = predicted[None], reference[None]

    def one_hot(labels: Tensor) -> Tensor:
        return F.one_hot(labels.long(), classes).movedim(-1, 1).float()

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(one_hot(predicted), one_hot(reference))  # (B, classes - 1), NaN where the reference is empty
    return torch.nanmean(scores.double(), dim=0).numpy()


class TissueSegmentation(L.LightningModule):
    """MR -> tissue labels, a 3-D MONAI U-Net (module docstring).

    Args:
        classes: label classes, background included (13 for phantom v2).
        channels: the U-Net's channels per level (strides of 2 between levels).
        num_res_units: residual units per level.
        roi: the sliding window's cube (voxels) when a whole head is segmented (the training crop).
        lr: Adam's learning rate.
    """

    domain = "medical"

    def __init__(self, classes: int = 13, channels: Sequence[int] = (16, 32, 64, 128), num_res_units: int = 1,
                 roi: int = 32, lr: float = 1e-3) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"A segmentation needs at least 2 classes (background and one tissue), got {classes}.")
        self.save_hyperparameters()
        self.net = UNet(spatial_dims=3, in_channels=1, out_channels=classes, channels=tuple(channels),
                        strides=(2,) * (len(channels) - 1), num_res_units=num_res_units)
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, mr: Tensor) -> Tensor:
        """Class logits ``(B, classes, X, Y, Z)`` of MR ``(B, 1, X, Y, Z)`` (each axis a multiple of the U-Net's
        downsampling, ``2 ** (len(channels) - 1)``)."""
        return self.net(mr)

    @torch.no_grad()
    def segment(self, mr: Tensor) -> Tensor:
        """Labels ``(B, X, Y, Z)`` int64 of MR ``(B, 1, X, Y, Z)`` of any size (sliding windows of ``roi`` voxels,
        Gaussian-weighted, a quarter overlapping; MR background -1 pads the edges)."""
        roi = (self.hparams.roi,) * 3
        logits = sliding_window_inference(mr.float(), roi, sw_batch_size=4, predictor=self.net, overlap=0.25,
                                          mode="gaussian", padding_mode="constant", cval=-1.0)
        return logits.argmax(1)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(self(batch["image"][:, :1].float()), batch["labels"].long()[:, None])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        predicted = self.segment(batch["image"][:, :1])
        scores = dice_per_tissue(predicted, batch["labels"], self.hparams.classes)
        self.log("val/mean_dice", float(np.nanmean(scores)), prog_bar=True, batch_size=len(predicted))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sci_diffusion"] = training_record(self, self.domain)

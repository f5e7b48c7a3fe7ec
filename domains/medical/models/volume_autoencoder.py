"""``VolumeAutoencoder``: a 3-D MONAI ``AutoencoderKL`` for the latent generator (issue 31; MAISI's first stage).

Two kinds, one class:

- ``kind="labels"``: the tissue label map, in as one-hot ``(classes, X, Y, Z)``, out as class logits; trained
  with MONAI's ``DiceCELoss`` (soft Dice and cross-entropy: the thin tissues, teeth, eyes and mastoid air, count
  as much as the brain) and a small KL term.
- ``kind="images"``: MR and CT in [-1, 1], ``(2, X, Y, Z)``; trained with L1 and the small KL term (MAISI adds a
  perceptual and an adversarial loss, which cost more than a CPU budget gives; left out). With ``label_guided``,
  the decoder also sees the one-hot label map at full resolution: a small convolutional head (three 3x3x3
  convolutions, SPADE-like in spirit) corrects the decoder's output from ``[output, labels]``, so that tissue edges
  come from the labels and the latent only has to carry what varies between subjects (contrast, texture, fields).
  At 4 mm a latent voxel spans 16 mm of head, too coarse for a 4 mm skull or a grey-matter ribbon (measured: an
  unguided decoder left 300 HU of CT error inside white matter after 0.4 CPU-hours).

The encoder downsamples by ``2 ** (len(channels) - 1)`` along each axis (4 with the default three levels): a
4 mm head padded to 48 x 64 x 64 voxels becomes a ``(latent_channels, 12, 16, 16)`` latent. Being convolutional
only (no attention), it trains on random cubes (the data module's ``crop``) and encodes whole volumes. The latent
of a volume is the encoder's mean (:meth:`encode`); ``LatentVolumeSynthesis`` scales it to unit variance for diffusion.

Trained with ``fit --config configs/medical/volume_autoencoder_{labels,images}.yaml`` on
``data.volume_datamodule.PairedVolumeDataModule``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import AutoencoderKL
from torch import Tensor

from sci_diffusion.checkpoints import training_record

KINDS = ("labels", "images")


def kl_divergence(mu: Tensor, sigma: Tensor) -> Tensor:
    """Mean over the batch of ``KL(N(mu, sigma^2) || N(0, 1))`` summed over the latent ``(B, C, x, y, z)``."""
    return (0.5 * (mu.square() + sigma.square() - torch.log(sigma.square()) - 1)).flatten(1).sum(1).mean()


class VolumeAutoencoder(L.LightningModule):
    """A 3-D ``AutoencoderKL`` of label maps or of MR / CT pairs (module docstring).

    Args:
        kind: ``labels`` or ``images``.
        classes: tissue classes (13 for phantom v2); the channels of a labels autoencoder.
        channels, latent_channels, num_res_blocks, norm_num_groups: MONAI ``AutoencoderKL``'s sizes (no attention).
        kl_weight: the KL term's weight (1e-6, as MONAI's latent diffusion tutorials).
        lr: Adam's learning rate.
        label_guided: an images autoencoder whose decoder also sees the label map (module docstring).
    """

    domain = "medical"

    def __init__(self, kind: str = "labels", classes: int = 13, channels: Sequence[int] = (16, 32, 64),
                 latent_channels: int = 8, num_res_blocks: int = 1, norm_num_groups: int = 8, kl_weight: float = 1e-6,
                 lr: float = 1e-3, label_guided: bool = False) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        self.save_hyperparameters()
        self.classes = classes  # a plain attribute: nested in a model LightningCLI builds, hparams come back empty
        width = classes if kind == "labels" else 2
        self.net = AutoencoderKL(spatial_dims=3, in_channels=width, out_channels=width, channels=tuple(channels),
                                 latent_channels=latent_channels, num_res_blocks=(num_res_blocks,) * len(channels),
                                 attention_levels=(False,) * len(channels), norm_num_groups=norm_num_groups,
                                 with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        self.refine = None
        if label_guided:
            if kind != "images":
                raise ValueError("Only an images autoencoder can be label_guided.")
            hidden = channels[0] * 2
            self.refine = torch.nn.Sequential(
                torch.nn.Conv3d(2 + classes, hidden, 3, padding=1), torch.nn.SiLU(),
                torch.nn.Conv3d(hidden, hidden, 3, padding=1), torch.nn.SiLU(),
                torch.nn.Conv3d(hidden, 2, 3, padding=1))

    @property
    def downsampling(self) -> int:
        """How many voxels of a volume one latent voxel spans along each axis."""
        return 2 ** (len(self.hparams.channels) - 1)

    def network_input(self, batch: dict[str, Tensor]) -> Tensor:
        """What the encoder sees: one-hot labels ``(B, classes, X, Y, Z)`` or the images ``(B, 2, X, Y, Z)``."""
        if self.hparams.kind == "labels":
            return self.one_hot(batch["labels"])
        return batch["image"].float()

    def encode(self, x: Tensor) -> Tensor:
        """The latent mean ``(B, latent_channels, X / f, Y / f, Z / f)`` of a network input ``x``."""
        return self.net.encode(x)[0]

    def one_hot(self, labels: Tensor) -> Tensor:
        """``(B, classes, X, Y, Z)`` float one-hot of label maps ``(B, X, Y, Z)``."""
        return F.one_hot(labels.long(), self.classes).movedim(-1, 1).float()

    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Class logits ``(B, classes, X, Y, Z)`` or images ``(B, 2, X, Y, Z)`` (clamped to [-1, 1]) of latents; a
        label-guided decoder also takes the label maps ``(B, X, Y, Z)``."""
        out = self.net.decode(z)
        if self.hparams.kind == "labels":
            return out
        if self.refine is not None:
            if labels is None:
                raise ValueError("A label-guided decoder needs the label maps of what it decodes.")
            out = out + self.refine(torch.cat([out, self.one_hot(labels)], dim=1))
        return out.clamp(-1.0, 1.0)

    def reconstruction_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(reconstruction term, KL)`` of one batch."""
        x = self.network_input(batch)
        mu, sigma = self.net.encode(x)
        z = self.net.sampling(mu, sigma)
        if self.hparams.kind == "labels":
            rec = self.dice_ce(self.decode(z), batch["labels"].long()[:, None])
        else:
            rec = (self.decode(z, batch["labels"]) - x).abs().mean()
        return rec, kl_divergence(mu, sigma)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        rec, kl = self.reconstruction_loss(batch)
        self.log("train/reconstruction", rec, prog_bar=True)
        return rec + self.hparams.kl_weight * kl

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        x = self.network_input(batch)
        out = self.decode(self.encode(x), batch["labels"])
        if self.hparams.kind == "labels":
            self.log("val/label_agreement", (out.argmax(1) == batch["labels"]).float().mean(), prog_bar=True)
        else:
            self.log("val/l1", (out - x).abs().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sci_diffusion"] = training_record(self, self.domain)

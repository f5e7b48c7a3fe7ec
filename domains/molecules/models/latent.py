"""GeoLDM (Xu et al. 2023): molecule diffusion in the latent space of an equivariant autoencoder.

An atom's state ``cat[pos (3), one-hot x0.25 (5), charge x0.1 (1)]`` is encoded by a 1-layer EGNN
into a latent ``cat[z_pos (3), z_h (k)]``: zero-CoM coordinates, which rotate with the molecule,
and ``k`` invariant features. A deeper EGNN decodes a latent back into positions, atom-type
logits and the charge. The diffusion itself is the core's, unchanged, on
``ProductSpace([ZeroCoM (3), Euclidean (k)])``: only the state width differs from EDM's.

Two recipes, as GeoLDM's released code has them (MinkaiXu/GeoLDM, ``equivariant_diffusion/en_diffusion.py``):

- **joint** (GeoLDM's released recipe, the default): the encoder keeps its random initial weights
  and is never trained; a latent is a draw from ``N(encoder mean, sigma_0^2)``, with
  ``sigma_0 = sigma(t = 0)`` of the schedule (0.0032 for ``polynomial_2``), and the decoder learns
  jointly with the latent diffusion through a reconstruction loss added to the diffusion loss;
- **two-stage** (``autoencoder_ckpt``): a variational autoencoder trained first
  (:class:`MoleculeAutoencoder`, reconstruction + ``kl_weight`` x KL), then frozen, encoder and
  decoder both; latents are drawn around its encoder mean with the same ``sigma_0``.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sci_diffusion.callbacks import CheckpointAtTrainEnd, LossCurvePlot
from sci_diffusion.checkpoints import read_checkpoint, training_record
from sci_diffusion.module import DiffusionBatch

from ..chem.elements import ATOM_TYPES
from ..data.atom_state import FEATURE_DIM, centred_atom_state, molecule_space
from .diffusion import MoleculeDiffusion
from .egnn import EGNN

NUM_TYPES = len(ATOM_TYPES)


class EquivariantAutoencoder(nn.Module):
    """GeoLDM's autoencoder: a 1-layer EGNN encoder and a ``decoder_layers``-layer EGNN decoder.

    Args:
        latent_features: k, the invariant latent features per atom (GeoLDM: 1; its released
            checkpoints 2).
        encoder_hidden, decoder_hidden: EGNN widths (GeoLDM: 256 both).
        decoder_layers: the decoder's equivariant blocks (GeoLDM: 9).
        attention: attention on edges, as in EDM.

    The encoder also outputs log standard deviations (one for an atom's three coordinates, one per
    invariant feature), which only the two-stage variational recipe uses.
    """

    def __init__(self, latent_features: int = 1, encoder_hidden: int = 256, decoder_hidden: int = 256,
                 decoder_layers: int = 9, attention: bool = True) -> None:
        super().__init__()
        self.latent_features = latent_features
        self.encoder = EGNN(FEATURE_DIM, encoder_hidden, 1, attention=attention, time_input=False,
                            out_features=2 * latent_features + 1)
        self.decoder = EGNN(latent_features, decoder_hidden, decoder_layers, attention=attention, time_input=False,
                            out_features=FEATURE_DIM)

    def encode(self, x: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        """Latent mean and log standard deviation of atoms ``x`` ``(N, 3 + 6)`` (positions zero-CoM).

        Returns:
            ``mean (N, 3 + k)``: zero-CoM coordinates (Angstrom) and k invariants;
            ``log_sigma (N, 1 + k)``: for the coordinates (one, isotropic) and for each invariant.
        """
        out = self.encoder(x, None, None, batch, num_graphs)
        k = self.latent_features
        mean = torch.cat([x[:, :3] + out[:, :3], out[:, 3:3 + k]], dim=1)
        return mean, out[:, 3 + k:]

    def decode(self, z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Atoms ``(N, 3 + 6)`` from latents ``z`` ``(N, 3 + k)``: zero-CoM positions (Angstrom),
        5 atom-type logits (H, C, N, O, F) and the charge x0.1 (the atom state's scaling)."""
        out = self.decoder(z, None, None, batch, num_graphs)
        return torch.cat([z[:, :3] + out[:, :3], out[:, 3:]], dim=1)


def reconstruction_loss(decoded: Tensor, x0: Tensor) -> Tensor:
    """GeoLDM's reconstruction error, per atom and per state column: squared position error
    (summed over x, y, z), cross-entropy of the type logits and squared charge error, divided by
    the 3 + 6 columns of the state, averaged over atoms.

    Args:
        decoded: ``(N, 3 + 6)`` from :meth:`EquivariantAutoencoder.decode`.
        x0: ``(N, 3 + 6)`` the atom state (``data/atom_state.py``, positions zero-CoM).
    """
    pos_err = (decoded[:, :3] - x0[:, :3]).float().pow(2).sum(1)
    type_err = F.cross_entropy(decoded[:, 3:3 + NUM_TYPES].float(), x0[:, 3:3 + NUM_TYPES].argmax(1), reduction="none")
    charge_err = (decoded[:, -1] - x0[:, -1]).float().pow(2)
    return ((pos_err + type_err + charge_err) / (3 + FEATURE_DIM)).mean()


def per_column(log_sigma: Tensor) -> Tensor:
    """The encoder's log-sigmas ``(N, 1 + k)`` (one for an atom's three coordinates, one per invariant)
    spread over the latent's ``3 + k`` columns, in float32."""
    return torch.cat([log_sigma[:, :1].expand(-1, 3), log_sigma[:, 1:]], dim=1).float()


def gaussian_kl(mean: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mean, sigma^2) || N(0, 1)) per atom and latent column, averaged: ``log_sigma`` ``(N, 1 + k)``
    as the encoder gives it (see :func:`per_column`)."""
    log_sigma = per_column(log_sigma)
    return 0.5 * (torch.exp(2 * log_sigma) + mean.float().pow(2) - 1 - 2 * log_sigma).mean()


@torch.no_grad()
def reconstruction_quality(decoded: Tensor, x0: Tensor, batch: Tensor, num_graphs: int) -> dict[str, float]:
    """Atom-type accuracy (fraction of atoms) and the coordinate RMSD (Angstrom; per molecule, then
    averaged over molecules) of a reconstruction. The decoder is equivariant and works in the
    encoder's frame, so no alignment is needed."""
    types_right = (decoded[:, 3:3 + NUM_TYPES].argmax(1) == x0[:, 3:3 + NUM_TYPES].argmax(1)).double()
    sq = (decoded[:, :3] - x0[:, :3]).double().pow(2).sum(1)
    counts = torch.bincount(batch, minlength=num_graphs).double()
    per_molecule = torch.zeros(num_graphs, dtype=torch.float64).index_add_(0, batch, sq) / counts
    return {"atom_type_accuracy": float(types_right.mean()), "coordinate_rmsd": float(per_molecule.sqrt().mean()),
            "molecules": num_graphs, "atoms": int(batch.numel())}


class LatentMoleculeDiffusion(MoleculeDiffusion):
    """GeoLDM on PyG batches: the latent diffusion (an EGNN like EDM's, on ``3 + k`` columns) and
    the autoencoder, trained through the core's DiffusionModule. See the module docstring.

    Args:
        latent_features: k invariant latents per atom (GeoLDM: 1).
        encoder_hidden, decoder_hidden, decoder_layers: the autoencoder's size (default: the
            denoiser's width and depth, as GeoLDM's QM9 command has it).
        autoencoder_ckpt: a trained :class:`MoleculeAutoencoder` checkpoint (the two-stage
            recipe): its weights are loaded when training starts and stay frozen. None (default):
            GeoLDM's joint recipe.
        recon_weight: the reconstruction loss's weight beside the diffusion loss (GeoLDM: 1).
        **kwargs: :class:`~.diffusion.MoleculeDiffusion`'s (the denoiser, conditioning, schedule, ...).
    """

    model_kind = "latent"

    def __init__(self, latent_features: int = 1, encoder_hidden: int | None = None, decoder_hidden: int | None = None,
                 decoder_layers: int | None = None, autoencoder_ckpt: str | None = None, recon_weight: float = 1.0,
                 **kwargs: Any) -> None:
        self._latent_features = latent_features  # build_network, called by the parent, needs it
        if kwargs.get("elements") is not None or kwargs.get("formal_charges"):
            raise ValueError("The latent model's autoencoder knows QM9's elements only (H, C, N, O, F, no formal "
                             "charges); train a custom element set with the EDM model.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        hidden, layers = self.hparams.hidden, self.hparams.layers
        self.autoencoder = EquivariantAutoencoder(latent_features, encoder_hidden or hidden, decoder_hidden or hidden,
                                                  decoder_layers or layers, self.hparams.attention)
        self.autoencoder.encoder.requires_grad_(False)  # "Always keep the encoder fixed" (GeoLDM)
        if autoencoder_ckpt:
            self.autoencoder.decoder.requires_grad_(False)
        self.sigma_0 = float(self.schedule.sigma(torch.zeros((), dtype=torch.float64)))

    @property
    def state_features(self) -> int:  # type: ignore[override]
        return self._latent_features

    def decode_state(self, x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return self.autoencoder.decode(x, batch, num_graphs)

    @torch.no_grad()
    def encode(self, x0: Tensor, batch: Tensor, num_graphs: int, generator: torch.Generator | None = None) -> Tensor:
        """A latent ``(N, 3 + k)`` for atoms ``x0`` ``(N, 3 + 6)``: the encoder's mean plus
        ``sigma_0`` Gaussian noise in the latent space (coordinates kept zero-CoM)."""
        mean, _ = self.autoencoder.encode(x0, batch, num_graphs)
        mean = mean.float()
        return mean + self.sigma_0 * self.state_space(batch, num_graphs).noise(mean, generator)

    def _latent_batch(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, DiffusionBatch]:
        """The centred atom state ``(N, 3 + 6)`` of a PyG batch and its latent DiffusionBatch."""
        x0 = centred_atom_state(batch)
        z = self.encode(x0, batch.batch, batch.num_graphs, generator)
        cond = self.condition_from_properties(batch.y) if self.conditioning else None
        return x0, DiffusionBatch(z, self.state_space(batch.batch, batch.num_graphs), cond,
                                  (batch.batch, batch.num_graphs))

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        return self._latent_batch(batch)[1]

    def _losses(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The latent diffusion loss and the decoder's reconstruction loss on one PyG batch."""
        x0, b = self._latent_batch(batch, generator)
        diffusion = self.loss_fn(self, b, generator)
        recon = reconstruction_loss(self.autoencoder.decode(b.x0, batch.batch, batch.num_graphs), x0)
        return diffusion, recon

    def _total(self, diffusion: Tensor, recon: Tensor) -> Tensor:
        trains_decoder = not self.hparams.autoencoder_ckpt
        return diffusion + self.hparams.recon_weight * recon if trains_decoder else diffusion

    def training_loss(self, batch: Any) -> Tensor:
        return self._total(*self._losses(batch))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        diffusion, recon = self._losses(batch)
        loss = self._total(diffusion, recon)
        n = batch.num_graphs
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/recon", recon.detach(), batch_size=n)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        diffusion, recon = self._losses(batch, torch.Generator().manual_seed(batch_idx))
        n = batch.num_graphs
        self.log("val/loss", self._total(diffusion, recon), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/diffusion", diffusion, batch_size=n, sync_dist=True)
        self.log("val/recon", recon, batch_size=n, sync_dist=True)
        return diffusion

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.autoencoder_ckpt and not getattr(self, "_autoencoder_loaded", None):
            state = read_checkpoint(self.hparams.autoencoder_ckpt)["state_dict"]
            self.autoencoder.load_state_dict({k[len("autoencoder."):]: v for k, v in state.items()
                                              if k.startswith("autoencoder.")})
            self._autoencoder_loaded = True
        super().setup(stage)


class MoleculeAutoencoder(L.LightningModule):
    """The first stage of the two-stage recipe: GeoLDM's autoencoder trained as a VAE, with the
    reconstruction loss plus ``kl_weight`` x KL to N(0, I) (GeoLDM: 0.01), on latents drawn from
    the encoder's own Gaussian. Its checkpoint feeds ``LatentMoleculeDiffusion(autoencoder_ckpt=...)``.

    Args:
        latent_features, encoder_hidden, decoder_hidden, decoder_layers, attention: as
            :class:`EquivariantAutoencoder` (they must match the latent model's).
        kl_weight: weight of the KL term.
        lr, weight_decay: AdamW.
    """

    domain = "molecules"

    def __init__(self, latent_features: int = 1, encoder_hidden: int = 256, decoder_hidden: int = 256,
                 decoder_layers: int = 9, attention: bool = True, kl_weight: float = 0.01, lr: float = 1e-4,
                 weight_decay: float = 1e-12) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.autoencoder = EquivariantAutoencoder(latent_features, encoder_hidden, decoder_hidden, decoder_layers,
                                                  attention)

    def _step(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reconstruction loss, KL, the decoded atoms and the centred atom state ``x0`` of one batch."""
        x0 = centred_atom_state(batch)
        mean, log_sigma = self.autoencoder.encode(x0, batch.batch, batch.num_graphs)
        log_sigma = log_sigma.float().clamp(-10, 4)
        space = molecule_space(batch.batch, batch.num_graphs, self.hparams.latent_features)
        sigma = per_column(log_sigma).exp()
        z = mean.float() + sigma * space.noise(mean.float(), generator)
        decoded = self.autoencoder.decode(z, batch.batch, batch.num_graphs)
        return reconstruction_loss(decoded, x0), gaussian_kl(mean, log_sigma), decoded, x0

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        recon, kl, _, _ = self._step(batch)
        loss = recon + self.hparams.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/recon": recon, "train/kl": kl}, batch_size=batch.num_graphs)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        recon, kl, decoded, x0 = self._step(batch, torch.Generator().manual_seed(batch_idx))
        quality = reconstruction_quality(decoded, x0, batch.batch, batch.num_graphs)
        self.log_dict({"val/loss": recon + self.hparams.kl_weight * kl, "val/recon": recon, "val/kl": kl,
                       "val/atom_type_accuracy": quality["atom_type_accuracy"],
                       "val/coordinate_rmsd": quality["coordinate_rmsd"]}, batch_size=batch.num_graphs, sync_dist=True)
        return recon

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def configure_callbacks(self):
        return [CheckpointAtTrainEnd(), LossCurvePlot()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sci_diffusion"] = {**training_record(self, self.domain), "role": "autoencoder"}

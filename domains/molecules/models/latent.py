"""GeoLDM (Xu et al. 2023): molecule diffusion in the latent space of an equivariant autoencoder.

A 1-layer EGNN encodes an atom's state ``cat[pos (3), one-hot (5), nuclear charge (1)]`` into a latent
``cat[z_pos (3), z_h (k)]``: zero-CoM coordinates, which rotate with the molecule, and ``k`` invariant
features. A deeper EGNN decodes a latent back into positions, atom-type logits and the charge. The
diffusion itself is the core's, unchanged, on ``ProductSpace([ZeroCoM (3), Euclidean (k)])``: only the
state width differs from EDM's.

Two recipes, as GeoLDM's released code has them (MinkaiXu/GeoLDM: ``equivariant_diffusion/en_diffusion.py``
``EnLatentDiffusion`` and ``EnHierarchicalVAE``, ``egnn/models.py``, ``qm9/models.py``):

- **joint** (``--trainable_ae``, GeoLDM's QM9 command, the default): the encoder keeps its random initial
  weights and is never trained (its latents are detached); a latent is a draw from
  ``N(encoder mean, sigma_0^2)``, with ``sigma_0 = sigma(t = 0)`` of the schedule (0.0032 for
  ``polynomial_2``), and the decoder learns jointly with the latent diffusion through a reconstruction
  loss added to the diffusion loss;
- **two-stage** (``autoencoder_ckpt``): a VAE trained first (:class:`MoleculeAutoencoder`), then frozen,
  encoder and decoder both; latents are drawn around its encoder mean with the same ``sigma_0``.

``geoldm_code=True`` (every config's) does each step as that code does (issue 28, section 3):

1. the encoder reads GeoLDM's raw atom features, the one-hot (0/1) and the nuclear charge Z (1..9), not
   the diffusion's scaled ones (x0.25, x0.1): ``EnLatentDiffusion.forward`` hands ``x, h`` to the VAE
   before any normalisation. The decoder gives them back on that scale, and the reconstruction loss is
   GeoLDM's ``compute_reconstruction_error`` (:func:`geoldm_reconstruction_loss`);
2. the encoder's head is ``EGNN_encoder_QM9``'s: the EGNN's output layer ``Linear(h, h)``, then
   ``final_mlp = Linear(h, h), SiLU, Linear(h, 2k + 1)`` (:class:`GeoLDMEncoder`);
3. the loss is GeoLDM's training loss, ``0.5 x`` the l2 diffusion error ``+ 1 x`` the reconstruction
   loss, each summed per molecule, divided by its columns and by ``N_max`` (the batch's largest
   molecule: GeoLDM pads every molecule to it) and averaged over molecules: the reconstruction weighs
   twice as much beside the diffusion as in this package's first version;
4. the two-stage VAE draws its latents at GeoLDM's fixed sigma 0.0032 (its encoder's sigma outputs are
   computed and never used), and its KL is to N(0, I) from N(mean, 1), summed per molecule
   (:func:`geoldm_kl`);
5. a conditional model conditions the encoder and the decoder too, with GeoLDM's ``context`` (the
   normalised properties appended to every atom's input), always the true one: the denoiser's condition
   alone is dropped for classifier-free guidance, which GeoLDM does not have.

Left out of GeoLDM's training loss, as none of them has a gradient: the prior KL of the latents (they are
detached), ``-log p(N)``, and the ``log 5`` that GeoLDM's type cross-entropy adds for every padding row.
GeoLDM draws t from ``{0..T}`` (t = 0 scored by the same l2 error), the core from ``{1..T}``.

``geoldm_code=False`` is this package's first version, which every checkpoint saved before the option loads
as (the bundled ``qm9_geoldm_small.ckpt``): the encoder reads the scaled atom state and its head is one
``Linear(h, 2k + 1)``; the loss is ``diffusion + recon_weight x recon``, the diffusion error averaged over
atoms and columns, the reconstruction error per atom over its 9 columns, averaged over atoms; the VAE
learns its sigma and averages its KL per atom and column; a conditional model's autoencoder does not see
the condition.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sci_diffusion.callbacks import CheckpointAtTrainEnd, LossCurvePlot
from sci_diffusion.checkpoints import read_checkpoint, training_record
from sci_diffusion.errors import UserError
from sci_diffusion.module import DiffusionBatch

from ..chem.elements import ATOM_TYPES
from ..data.atom_state import CHARGE_SCALE, FEATURE_DIM, ONE_HOT_SCALE, centred_atom_state, molecule_space
from .diffusion import MoleculeDiffusion
from .egnn import EGNN

NUM_TYPES = len(ATOM_TYPES)
RECONSTRUCTED_COLUMNS = 3 + FEATURE_DIM  # GeoLDM's n_dims + in_node_nf: positions, 5 types, the charge
GEOLDM_VAE_SIGMA = 0.0032  # EnHierarchicalVAE.encode: every latent's sigma, whatever the encoder outputs
GEOLDM_DIFFUSION_WEIGHT = 0.5  # EnVariationalDiffusion.compute_loss: 0.5 x SNR_weight x error, SNR_weight 1 for l2


def geoldm_atom_features(x0: Tensor) -> Tensor:
    """The atoms as GeoLDM's autoencoder reads and rebuilds them, from the atom state ``x0`` ``(N, 3 + 6)``
    (``data/atom_state.py``): positions (Angstrom) as they are, the one-hot back to 0/1 and the nuclear
    charge back to Z (1, 6, 7, 8, 9; rounded, so that float rounding of ``Z x 0.1`` leaves none)."""
    one_hot = x0[:, 3:3 + NUM_TYPES] / ONE_HOT_SCALE
    charge = torch.round(x0[:, 3 + NUM_TYPES:] / CHARGE_SCALE)
    return torch.cat([x0[:, :3], one_hot, charge], dim=1)


def largest_molecule(batch: Tensor, num_graphs: int) -> Tensor:
    """``N_max``, the atom count of a batch's largest molecule (0-d): the rows GeoLDM pads every molecule to."""
    return torch.bincount(batch, minlength=num_graphs).max()


def geoldm_molecule_mean(atom_mean: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """A loss averaged over a batch's N atoms, averaged as GeoLDM averages it instead: summed per molecule,
    divided by ``N_max`` (:func:`largest_molecule`) rather than the molecule's own atom count, then
    averaged over the G molecules; that is ``atom_mean x N / (G N_max)``.

    GeoLDM's ``compute_error`` divides a molecule's summed l2 error by ``(n_dims + in_node_nf) x N_max``
    in training; the core's diffusion loss (the mean over atoms and columns) turns into it by this.
    """
    return atom_mean * batch.numel() / (num_graphs * largest_molecule(batch, num_graphs))


class GeoLDMEncoder(nn.Module):
    """GeoLDM's ``EGNN_encoder_QM9``: a 1-layer EGNN whose output layer is ``Linear(h, h)`` (its
    ``embedding_out``), then ``final_mlp = Linear(h, h), SiLU, Linear(h, 2k + 1)``.

    Args:
        hidden: the EGNN's width h (GeoLDM: the denoiser's).
        latent_features: k.
        cond_dim: the condition's width (0: unconditional), appended to every atom's input.
        attention: attention on edges.
    """

    def __init__(self, hidden: int, latent_features: int, cond_dim: int = 0, attention: bool = True) -> None:
        super().__init__()
        self.egnn = EGNN(FEATURE_DIM, hidden, 1, cond_dim, attention=attention, time_input=False, out_features=hidden)
        self.final_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent_features + 1))

    def forward(self, x: Tensor, t: None, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        """``(N, 3 + 2k + 1)`` for atoms ``x`` ``(N, 3 + 6)``: the coordinate displacement (zero CoM per
        molecule) and, in GeoLDM's order, a coordinate log-variance, the k latent means and k
        log-variances (both variances unused: :data:`GEOLDM_VAE_SIGMA`). ``t`` is None: no time input."""
        out = self.egnn(x, None, cond, batch, num_graphs)
        return torch.cat([out[:, :3], self.final_mlp(out[:, 3:])], dim=1)


class EquivariantAutoencoder(nn.Module):
    """GeoLDM's autoencoder: a 1-layer EGNN encoder and a ``decoder_layers``-layer EGNN decoder.

    Args:
        latent_features: k, the invariant latent features per atom (GeoLDM: 1; its released
            checkpoints 2).
        encoder_hidden, decoder_hidden: EGNN widths (GeoLDM: 256 both).
        decoder_layers: the decoder's equivariant blocks (GeoLDM: 9).
        attention: attention on edges, as in EDM.
        cond_dim: the width of the condition the encoder and decoder see (GeoLDM's ``context``, the P
            normalised properties of a conditional model); 0: unconditional.
        geoldm_code: the encoder is :class:`GeoLDMEncoder` and its sigma GeoLDM's fixed 0.0032 (the
            module docstring); False: the first version's EGNN with one ``Linear(h, 2k + 1)`` head
            and a learned sigma.

    The encoder also outputs log standard deviations (one for an atom's three coordinates, one per
    invariant feature), which only the two-stage variational recipe uses.
    """

    def __init__(self, latent_features: int = 1, encoder_hidden: int = 256, decoder_hidden: int = 256,
                 decoder_layers: int = 9, attention: bool = True, cond_dim: int = 0, geoldm_code: bool = False) -> None:
        super().__init__()
        self.latent_features, self.cond_dim, self.geoldm_code = latent_features, cond_dim, geoldm_code
        if geoldm_code:
            self.encoder = GeoLDMEncoder(encoder_hidden, latent_features, cond_dim, attention)
        else:
            self.encoder = EGNN(FEATURE_DIM, encoder_hidden, 1, cond_dim, attention=attention, time_input=False,
                                out_features=2 * latent_features + 1)
        self.decoder = EGNN(latent_features, decoder_hidden, decoder_layers, cond_dim, attention=attention,
                            time_input=False, out_features=FEATURE_DIM)

    def encode(self, x: Tensor, batch: Tensor, num_graphs: int, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent mean and log standard deviation of atoms ``x`` ``(N, 3 + 6)`` (positions zero-CoM; the
        features raw, :func:`geoldm_atom_features`, with ``geoldm_code``, else the atom state's).

        Args:
            cond: ``(G, cond_dim)`` the condition, or None (zeros; ignored without ``cond_dim``).
        Returns:
            ``mean (N, 3 + k)``: zero-CoM coordinates (Angstrom) and k invariants;
            ``log_sigma (N, 1 + k)``: for the coordinates (one, isotropic) and for each invariant.
        """
        out = self.encoder(x, None, cond, batch, num_graphs)
        k = self.latent_features
        if self.geoldm_code:  # columns: displacement (3), coordinate log-variance (1), means (k), log-variances (k)
            invariants = out[:, 4:4 + k]
            log_sigma = torch.full((x.shape[0], 1 + k), math.log(GEOLDM_VAE_SIGMA), dtype=out.dtype, device=out.device)
        else:  # displacement (3), means (k), log-sigmas (1 + k)
            invariants, log_sigma = out[:, 3:3 + k], out[:, 3 + k:]
        return torch.cat([x[:, :3] + out[:, :3], invariants], dim=1), log_sigma

    def decode(self, z: Tensor, batch: Tensor, num_graphs: int, cond: Tensor | None = None) -> Tensor:
        """Atoms ``(N, 3 + 6)`` from latents ``z`` ``(N, 3 + k)``: zero-CoM positions (Angstrom), 5 atom-type
        logits (H, C, N, O, F) and the charge, on the scale the encoder reads (Z with ``geoldm_code``,
        else Z x 0.1). ``cond``: as :meth:`encode`."""
        out = self.decoder(z, None, cond, batch, num_graphs)
        return torch.cat([z[:, :3] + out[:, :3], out[:, 3:]], dim=1)


def atom_reconstruction_error(decoded: Tensor, target: Tensor) -> Tensor:
    """Per atom ``(N,)`` float32: the squared position error (summed over x, y, z), the cross-entropy of
    the type logits against the target's type and the squared charge error.

    Args:
        decoded: ``(N, 3 + 6)`` from :meth:`EquivariantAutoencoder.decode`.
        target: ``(N, 3 + 6)`` the atoms on the scale the decoder gives them back.
    """
    pos_err = (decoded[:, :3] - target[:, :3]).float().pow(2).sum(1)
    type_err = F.cross_entropy(decoded[:, 3:3 + NUM_TYPES].float(), target[:, 3:3 + NUM_TYPES].argmax(1),
                               reduction="none")
    charge_err = (decoded[:, -1] - target[:, -1]).float().pow(2)
    return pos_err + type_err + charge_err


def geoldm_reconstruction_loss(decoded: Tensor, target: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """GeoLDM's reconstruction loss (``EnHierarchicalVAE.compute_reconstruction_error`` in training),
    averaged over molecules: a molecule's :func:`atom_reconstruction_error` summed over its atoms and
    divided by ``(3 + 6) x N_max``, ``N_max`` the batch's largest molecule (GeoLDM pads to it).

    Args:
        decoded: ``(N, 3 + 6)`` from :meth:`EquivariantAutoencoder.decode`: positions, logits, Z.
        target: ``(N, 3 + 6)`` :func:`geoldm_atom_features` of the atom state.
        batch: ``(N,)`` the molecule of every atom; num_graphs: G.
    """
    per_molecule = torch.zeros(num_graphs, device=decoded.device).index_add_(
        0, batch, atom_reconstruction_error(decoded, target))
    return (per_molecule / (RECONSTRUCTED_COLUMNS * largest_molecule(batch, num_graphs))).mean()


def geoldm_kl(mean: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """GeoLDM's VAE KL per molecule ``(G,)`` float32: ``KL(N(mean, 1) || N(0, I)) = 0.5 |mean|^2`` summed
    over a molecule's atoms and its ``3 + k`` latent columns, the encoder's ``mean`` ``(N, 3 + k)``.

    ``EnHierarchicalVAE.compute_loss`` scores the means with sigma 1 on both sides: ``gaussian_KL`` for
    the invariants and ``gaussian_KL_for_dimension`` over the ``(n - 1) x 3`` dimensions of the zero-CoM
    coordinates, whose log-sigma and ``-0.5 d`` terms cancel the ``+0.5 d`` of ``q_sigma^2``.
    """
    return 0.5 * torch.zeros(num_graphs, device=mean.device).index_add_(0, batch, mean.float().pow(2).sum(1))


def reconstruction_loss(decoded: Tensor, x0: Tensor) -> Tensor:
    """The first version's reconstruction loss (``geoldm_code=False``): :func:`atom_reconstruction_error`
    per atom and per state column (divided by the 3 + 6 columns), averaged over atoms, on the atom
    state's scale (charge x 0.1).

    Args:
        decoded: ``(N, 3 + 6)`` from :meth:`EquivariantAutoencoder.decode`.
        x0: ``(N, 3 + 6)`` the atom state (``data/atom_state.py``, positions zero-CoM).
    """
    return (atom_reconstruction_error(decoded, x0) / RECONSTRUCTED_COLUMNS).mean()


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
        geoldm_code: every step as GeoLDM's released code does it (the module docstring, points 1-5; every
            config sets it); False, the default, is this package's first version, which checkpoints saved
            before the option (the bundled ``qm9_geoldm_small.ckpt``) were trained with and load as.
        **kwargs: :class:`~.diffusion.MoleculeDiffusion`'s (the denoiser, conditioning, schedule, ...).
    """

    model_kind = "latent"

    def __init__(self, latent_features: int = 1, encoder_hidden: int | None = None, decoder_hidden: int | None = None,
                 decoder_layers: int | None = None, autoencoder_ckpt: str | None = None, recon_weight: float = 1.0,
                 geoldm_code: bool = False, **kwargs: Any) -> None:
        self._latent_features = latent_features  # build_network, called by the parent, needs it
        if kwargs.get("elements") is not None or kwargs.get("formal_charges"):
            raise ValueError("The latent model's autoencoder knows QM9's elements only (H, C, N, O, F, no formal "
                             "charges); train a custom element set with the EDM model.")
        if geoldm_code and autoencoder_ckpt and kwargs.get("conditioning"):
            raise ValueError("A conditional latent model conditions its autoencoder, which MoleculeAutoencoder "
                             "trains unconditioned: train a conditional latent model with the joint recipe "
                             "(no autoencoder_ckpt), as GeoLDM does.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.geoldm_code = geoldm_code
        hidden, layers = self.hparams.hidden, self.hparams.layers
        self.autoencoder = EquivariantAutoencoder(latent_features, encoder_hidden or hidden, decoder_hidden or hidden,
                                                  decoder_layers or layers, self.hparams.attention,
                                                  cond_dim=len(self.conditioning) if geoldm_code else 0,
                                                  geoldm_code=geoldm_code)
        self.autoencoder.encoder.requires_grad_(False)  # "Always keep the encoder fixed" (GeoLDM)
        if autoencoder_ckpt:
            self.autoencoder.decoder.requires_grad_(False)
        self.sigma_0 = float(self.schedule.sigma(torch.zeros((), dtype=torch.float64)))
        self.diffusion_weight = GEOLDM_DIFFUSION_WEIGHT if geoldm_code else 1.0

    @property
    def state_features(self) -> int:  # type: ignore[override]
        return self._latent_features

    def autoencoder_condition(self, cond: Tensor | None) -> Tensor | None:
        """What the autoencoder sees of the network's condition ``(G, 2P)``: GeoLDM's ``context``, the
        P normalised properties ``(G, P)`` without the presence flags; None for an unconditional model or the
        first version's autoencoder, or when ``cond`` is None (the autoencoder then reads zeros: the
        training set's mean property)."""
        if cond is None or not self.autoencoder.cond_dim:
            return None
        return cond[:, :len(self.conditioning)]

    def decode_state(self, x: Tensor, batch: Tensor, num_graphs: int, cond: Tensor | None = None) -> Tensor:
        """The atom state ``(N, 3 + 6)`` of sampled latents ``x`` ``(N, 3 + k)``: positions, type logits and
        the charge x 0.1; ``cond`` ``(G, P + 1)``, the condition sampled with, which a conditional
        ``geoldm_code`` decoder reads."""
        out = self.autoencoder.decode(x, batch, num_graphs, self.autoencoder_condition(cond))
        if self.geoldm_code:  # the decoder gives GeoLDM's Z back; the atom state holds Z x 0.1
            out = torch.cat([out[:, :-1], out[:, -1:] * CHARGE_SCALE], dim=1)
        return out

    @torch.no_grad()
    def encode(self, x0: Tensor, batch: Tensor, num_graphs: int, generator: torch.Generator | None = None,
               cond: Tensor | None = None) -> Tensor:
        """A latent ``(N, 3 + k)`` for atoms ``x0`` ``(N, 3 + 6)`` in the atom state's scaling: the encoder's
        mean (of :func:`geoldm_atom_features` with ``geoldm_code``) plus ``sigma_0`` Gaussian noise in the
        latent space (coordinates kept zero-CoM). ``cond``: the network's ``(G, P + 1)`` or None."""
        features = geoldm_atom_features(x0) if self.geoldm_code else x0
        mean, _ = self.autoencoder.encode(features, batch, num_graphs, self.autoencoder_condition(cond))
        mean = mean.float()
        return mean + self.sigma_0 * self.state_space(batch, num_graphs).noise(mean, generator)

    def _latent_batch(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, DiffusionBatch]:
        """The centred atom state ``(N, 3 + 6)`` of a PyG batch and its latent DiffusionBatch."""
        x0 = centred_atom_state(batch)
        cond = self.condition_from_properties(batch.y) if self.conditioning else None
        z = self.encode(x0, batch.batch, batch.num_graphs, generator, cond)
        return x0, DiffusionBatch(z, self.state_space(batch.batch, batch.num_graphs), cond,
                                  (batch.batch, batch.num_graphs))

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        return self._latent_batch(batch)[1]

    def _losses(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The latent diffusion loss and the decoder's reconstruction loss on one PyG batch, unweighted;
        with ``geoldm_code`` each averaged as GeoLDM averages it (:func:`geoldm_molecule_mean`,
        :func:`geoldm_reconstruction_loss`)."""
        x0, b = self._latent_batch(batch, generator)
        diffusion = self.loss_fn(self, b, generator)
        decoded = self.autoencoder.decode(b.x0, batch.batch, batch.num_graphs, self.autoencoder_condition(b.cond))
        if not self.geoldm_code:
            return diffusion, reconstruction_loss(decoded, x0)
        return (geoldm_molecule_mean(diffusion, batch.batch, batch.num_graphs),
                geoldm_reconstruction_loss(decoded, geoldm_atom_features(x0), batch.batch, batch.num_graphs))

    def _total(self, diffusion: Tensor, recon: Tensor) -> Tensor:
        """The training loss: ``diffusion_weight x diffusion + recon_weight x recon`` (GeoLDM: 0.5 and 1),
        the diffusion term alone in the two-stage recipe, whose decoder is frozen."""
        if self.hparams.autoencoder_ckpt:
            return self.diffusion_weight * diffusion
        return self.diffusion_weight * diffusion + self.hparams.recon_weight * recon

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
            stage_one = read_checkpoint(self.hparams.autoencoder_ckpt)
            if bool(stage_one["sci_diffusion"]["config"].get("geoldm_code", False)) != self.geoldm_code:
                raise UserError(f"The autoencoder {self.hparams.autoencoder_ckpt} was trained with geoldm_code "
                                f"{not self.geoldm_code}, this model has {self.geoldm_code}: give both the same.")
            self.autoencoder.load_state_dict({k[len("autoencoder."):]: v for k, v in stage_one["state_dict"].items()
                                              if k.startswith("autoencoder.")})
            self._autoencoder_loaded = True
        super().setup(stage)


class MoleculeAutoencoder(L.LightningModule):
    """The first stage of the two-stage recipe: GeoLDM's autoencoder trained as a VAE, with the
    reconstruction loss plus ``kl_weight`` x KL to N(0, I) (GeoLDM: 0.01). Its checkpoint feeds
    ``LatentMoleculeDiffusion(autoencoder_ckpt=...)``, which must have the same ``geoldm_code``.

    With ``geoldm_code`` as GeoLDM's ``EnHierarchicalVAE``: the encoder reads the raw features, latents are
    drawn at the fixed sigma 0.0032 around its mean, the loss per molecule is
    :func:`geoldm_reconstruction_loss`'s term plus ``kl_weight x`` :func:`geoldm_kl`, averaged over molecules.
    Without it (the first version), latents are drawn from the encoder's own Gaussian and the KL is
    :func:`gaussian_kl`, averaged per atom and column.

    Args:
        latent_features, encoder_hidden, decoder_hidden, decoder_layers, attention: as
            :class:`EquivariantAutoencoder` (they must match the latent model's).
        kl_weight: weight of the KL term.
        lr, weight_decay: AdamW.
        geoldm_code: GeoLDM's VAE as its code has it (every config sets it); False: the first version,
            which checkpoints saved before the option load as.
    """

    domain = "molecules"

    def __init__(self, latent_features: int = 1, encoder_hidden: int = 256, decoder_hidden: int = 256,
                 decoder_layers: int = 9, attention: bool = True, kl_weight: float = 0.01, lr: float = 1e-4,
                 weight_decay: float = 1e-12, geoldm_code: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.autoencoder = EquivariantAutoencoder(latent_features, encoder_hidden, decoder_hidden, decoder_layers,
                                                  attention, geoldm_code=geoldm_code)

    def _step(self, batch: Any, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reconstruction loss, KL, the decoded atoms and their target (the centred atoms on the scale the
        encoder reads them) of one batch."""
        geoldm_code = self.hparams.geoldm_code
        x0 = centred_atom_state(batch)
        target = geoldm_atom_features(x0) if geoldm_code else x0
        mean, log_sigma = self.autoencoder.encode(target, batch.batch, batch.num_graphs)
        log_sigma = log_sigma.float().clamp(-10, 4)
        space = molecule_space(batch.batch, batch.num_graphs, self.hparams.latent_features)
        sigma = per_column(log_sigma).exp()
        z = mean.float() + sigma * space.noise(mean.float(), generator)
        decoded = self.autoencoder.decode(z, batch.batch, batch.num_graphs)
        if geoldm_code:
            return (geoldm_reconstruction_loss(decoded, target, batch.batch, batch.num_graphs),
                    geoldm_kl(mean, batch.batch, batch.num_graphs).mean(), decoded, target)
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

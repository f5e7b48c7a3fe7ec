"""Property prediction from 3D molecules: EDM's evaluation classifier and the noise-aware regressor
that gradient guidance follows.

The network (:class:`PropertyEGNN`) is EDM's property classifier (``qm9/property_prediction``,
after Satorras et al. 2021): atom features are embedded, ``layers`` graph convolutions with edge
attention pass messages over all atom pairs with the squared distance as edge input (the
coordinates themselves are never updated, so the prediction is E(3)-invariant), a node MLP follows,
the nodes are summed per molecule, and a graph MLP gives one value per property.

:class:`PropertyPredictor` trains it in two roles:

- ``noise_aware=False``: the evaluation classifier of the conditional QM9 protocol, on clean
  molecules (one-hot atom types and positions), L1 loss on normalised targets, trained on Da;
- ``noise_aware=True``: an EEGSDE-style energy (Bao et al. 2023): it sees the diffusion state
  ``x_t`` and time ``t`` of the generator's forward process, so its gradient in ``x_t`` can steer
  sampling towards a target (``generation/sampling.py``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from sci_diffusion.callbacks import CheckpointAtTrainEnd, LossCurvePlot
from sci_diffusion.checkpoints import load_module, read_checkpoint, training_record
from sci_diffusion.errors import UserError
from sci_diffusion.schedules import NoiseSchedule

from ..chem.elements import ATOM_TYPES
from ..data.atom_state import FEATURE_DIM, encode_atoms, molecule_space
from ..data.conditioning import PropertyConditioning, check_property_names
from ..data.graphs import atoms_to_data
from ..data.qm9 import PROPERTY_NAMES, PROPERTY_UNITS
from .egnn import GraphConvolution, fully_connected_edges


class PropertyEGNN(nn.Module):
    """EDM's invariant property network on a sparse batch of molecules.

    Args:
        in_dim: node input width (5 one-hot types for the classifier; the 6 diffusion features
            plus the time for the noise-aware regressor).
        hidden, layers, attention: EDM's classifier uses 128, 7, True.
        out_dim: number of predicted properties.
    """

    def __init__(self, in_dim: int, hidden: int = 128, layers: int = 7, attention: bool = True, out_dim: int = 1) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(GraphConvolution(hidden, 1, attention) for _ in range(layers))
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.graph_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, h: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """Args:
            h: ``(N, in_dim)`` node inputs.
            pos: ``(N, 3)`` positions (Angstrom).
            batch: ``(N,)`` graph id of every atom.
        Returns:
            ``(num_graphs, out_dim)`` predictions (normalised units).
        """
        edges = fully_connected_edges(batch, num_graphs)
        diff = pos.index_select(0, edges[0]) - pos.index_select(0, edges[1])
        d2 = diff.pow(2).sum(1, keepdim=True)
        h = self.embed(h)
        for conv in self.convs:
            h = conv(h, d2, edges)
        pooled = scatter(self.node_head(h), batch, dim=0, dim_size=num_graphs, reduce="sum")
        return self.graph_head(pooled)


class PropertyPredictor(L.LightningModule):
    """Trains a :class:`PropertyEGNN` to predict QM9 properties (see the module docstring).

    Args:
        properties: property names (``qm9.PROPERTY_NAMES``), in eV for energies.
        hidden, layers, attention: network size (EDM's classifier: 128, 7, True).
        noise_aware: train on the generator's noisy states ``x_t`` at random times (the regressor
            of gradient guidance) instead of clean molecules (the evaluation classifier).
        schedule, timesteps: the forward process of a noise-aware model; it must match the
            generator's (polynomial_2, 1000 for the bundled models).
        loss_type: ``l1`` (EDM's classifier) or ``l2`` (EEGSDE's energy).
        lr, weight_decay: Adam, as EDM's classifier (1e-3 for gap/HOMO/LUMO, 5e-4 otherwise).
            The rate follows a cosine from ``lr`` to 0 over the trainer's planned steps.
        property_mean, property_mad: override the normalisation (default: the training set's).
    """

    domain = "molecules"

    def __init__(self, properties: Sequence[str] = ("gap",), hidden: int = 128, layers: int = 7, attention: bool = True,
                 noise_aware: bool = False, schedule: str = "polynomial_2", timesteps: int = 1000,
                 loss_type: str = "l1", lr: float = 1e-3, weight_decay: float = 1e-16,
                 property_mean: list[float] | None = None, property_mad: list[float] | None = None) -> None:
        super().__init__()
        self.properties = check_property_names(properties)
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be l1 or l2, not {loss_type!r}.")
        self.save_hyperparameters()
        in_dim = FEATURE_DIM + 1 if noise_aware else len(ATOM_TYPES)
        self.net = PropertyEGNN(in_dim, hidden, layers, attention, len(self.properties))
        self.schedule = NoiseSchedule.from_name(schedule, timesteps) if noise_aware else None
        self.normalisation: PropertyConditioning | None = None

    # ----- prediction ---------------------------------------------------------------------------
    def forward(self, h: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return self.net(h, pos, batch, num_graphs)

    def predict_clean(self, batch: Batch) -> Tensor:
        """``(G, P)`` normalised predictions for a batch of clean molecules (the classifier's view)."""
        return self(batch.one_hot, batch.pos, batch.batch, batch.num_graphs)

    def predict_noisy(self, x_t: Tensor, t: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """``(G, P)`` normalised predictions from a diffusion state ``x_t (N, 9)`` at time ``t``
        (0-d or ``(G,)``); differentiable in ``x_t``."""
        t_node = (t.expand(num_graphs) if t.dim() == 0 else t).to(x_t.dtype)[batch][:, None]
        return self(torch.cat([x_t[:, 3:], t_node], dim=1), x_t[:, :3], batch, num_graphs)

    def to_units(self, normalised: Tensor) -> Tensor:
        """Normalised predictions -> property units (eV for energies)."""
        return self.normalisation.denormalise(normalised)

    # ----- training -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.normalisation is None and datamodule is not None:
            num_atoms, props = datamodule.train_properties()
            self.normalisation = PropertyConditioning.from_training_set(
                self.properties, num_atoms, props, self.hparams.property_mean, self.hparams.property_mad)

    def _targets(self, batch: Batch) -> Tensor:
        cols = [PROPERTY_NAMES.index(p) for p in self.properties]
        return self.normalisation.normalise(batch.y[:, cols].double()).float()

    def _predict_batch(self, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        if not self.hparams.noise_aware:
            return self.predict_clean(batch)
        x0 = encode_atoms(batch.pos, batch.one_hot, batch.charges)
        space = molecule_space(batch.batch, batch.num_graphs)
        x0 = space.project(x0)  # centred, as the generator's states are
        T = self.schedule.T
        t = torch.randint(1, T + 1, (batch.num_graphs,), generator=generator).double() / T
        alpha, sigma = space.expand(self.schedule.alpha(t), x0), space.expand(self.schedule.sigma(t), x0)
        x_t = alpha * x0 + sigma * space.noise(x0, generator)
        return self.predict_noisy(x_t, t.float(), batch.batch, batch.num_graphs)

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        err = pred.float() - target
        return err.abs().mean() if self.hparams.loss_type == "l1" else err.pow(2).mean()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._loss(self._predict_batch(batch), self._targets(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.num_graphs)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        pred = self._predict_batch(batch, torch.Generator().manual_seed(batch_idx))
        target = self._targets(batch)
        self.log("val/loss", self._loss(pred, target), prog_bar=True, batch_size=batch.num_graphs, sync_dist=True)
        mae = (self.normalisation.denormalise(pred.double()) - self.normalisation.denormalise(target.double())).abs().mean(0)
        for name, value in zip(self.properties, mae):
            self.log(f"val/mae_{name}", value.float(), batch_size=batch.num_graphs, sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_callbacks(self):
        return [CheckpointAtTrainEnd(), LossCurvePlot()]

    # ----- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sci_diffusion"] = training_record(self, self.domain)
        checkpoint["sci_diffusion"]["role"] = "property_regressor" if self.hparams.noise_aware else "property_classifier"
        checkpoint["sci_diffusion"]["normalisation"] = self.normalisation.to_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.normalisation = PropertyConditioning.from_record(checkpoint["sci_diffusion"]["normalisation"])


def load_property_model(path: str, role: str) -> PropertyPredictor:
    """Load a property classifier or regressor checkpoint (``role``: ``"property_classifier"`` or
    ``"property_regressor"``, as its record says).

    Raises:
        UserError: the checkpoint holds another kind of model.
    """
    found = read_checkpoint(path)["sci_diffusion"].get("role")
    if found != role:
        raise UserError(f"{path} is not a {role.replace('_', ' ')} checkpoint.")
    return load_module(path, domain="molecules")


@torch.no_grad()
def predict_properties(model: PropertyPredictor, molecules: Iterable[tuple[np.ndarray, np.ndarray]],
                       batch_size: int = 50) -> np.ndarray:
    """The classifier's predictions for molecules, in property units.

    Args:
        model: a trained classifier (``noise_aware=False``), in eval mode.
        molecules: ``(z (n,), pos (n, 3) Angstrom)`` pairs. A molecule with non-finite
            coordinates gets NaN.
        batch_size: molecules per forward pass; about 50 keeps the all-pairs edge tensors in
            cache (on 1,500 QM9 molecules, one thread: 59 molecules/s at 500, 152 at 50).

    Returns:
        ``(M, P)`` float64 predictions in ``PROPERTY_UNITS`` (eV for energies).
    """
    blocks: list[np.ndarray] = []
    chunk: list[tuple[np.ndarray, np.ndarray]] = []
    for molecule in molecules:
        chunk.append(molecule)
        if len(chunk) == batch_size:
            blocks.append(_predict_chunk(model, chunk))
            chunk = []
    if chunk:
        blocks.append(_predict_chunk(model, chunk))
    return np.concatenate(blocks) if blocks else np.zeros((0, len(model.properties)))


def _predict_chunk(model: PropertyPredictor, chunk: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    rows = np.full((len(chunk), len(model.properties)), np.nan)
    finite = [i for i, (_, pos) in enumerate(chunk) if np.isfinite(pos).all()]
    if finite:
        batch = Batch.from_data_list([atoms_to_data(*chunk[i]) for i in finite])
        rows[finite] = model.to_units(model.predict_clean(batch).double()).numpy()
    return rows


def property_units(names: Sequence[str]) -> list[str]:
    """The unit of each property name."""
    return [PROPERTY_UNITS[n] for n in names]

"""``BondMoleculeDiffusion``: atoms and their bonds generated together (MiDi, Vignac et al. 2023; EQGAT-diff,
Le et al. 2024), on the core's Gaussian and categorical diffusions over one time grid.

- **Atoms** as EDM diffuses them (``diffusion.py``): zero-CoM Gaussian positions and Gaussian atom features
  (one-hot x0.25, nuclear charge x0.1 and, by default, the formal charge x0.25, rounded when decoded). Kept
  Gaussian rather than categorical so that arm (e) differs from EDM's recipe (arm a) in the bonds alone,
  and EDM's loss and samplers apply to them unchanged.
- **Bonds**: a class of ``chem/bond_types.BOND_CLASSES`` on every unordered atom pair, diffused by the core's
  categorical process (``sci_diffusion.categorical``) with the training set's bond-class marginal as prior
  (MiDi's "marginal transitions"; ``bond_prior="uniform"`` for the uniform one) on the same schedule, so the
  pairs lose their class as the positions lose their signal.
- **Network**: ``bond_egnn.BondEGNN``, EDM's EGNN whose messages read the noisy bond classes and whose
  bond head predicts every pair's clean class.
- **Loss**: EDM's (eps-prediction, L2 on the atom rows) plus ``bond_weight`` times the mean cross-entropy
  over all pairs (``categorical.CategoricalDenoisingLoss``). Default 2: MiDi weighs its bond cross-entropy
  2 against 3 on an x0 position loss whose size sits near EDM's eps error at most times; 2 against our
  1 weighs bonds more than MiDi does, because here they are the point of the model.

Sampling: ``generation/bond_sampling.sample_bonded_molecules`` (``ddpm`` or ``dpmpp2m_sde``; the ODE
samplers have no categorical step and refuse). The data: ``data/bond_datamodule.QM9BondDataModule``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sci_diffusion.categorical import PRIORS, CategoricalDenoisingLoss, CategoricalProcess
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.parameterisation import to_x0
from sci_diffusion.state_spaces import StackedSpace

from ..chem.bond_stability import BondVerdicts
from ..chem.bond_types import NUM_BOND_CLASSES
from ..chem.stability import Verdicts
from ..data.bond_state import bond_state_space, bonded_state, upper_pairs
from ..generation.bond_sampling import sample_bonded_molecules
from ..generation.sampling import draw_atom_counts
from .bond_egnn import BondEGNN
from .diffusion import MoleculeDiffusion


class BondMoleculeDiffusion(MoleculeDiffusion):
    """Atoms and bonds diffused jointly (module docstring), trained through the core's DiffusionModule.

    Args:
        bond_weight: the bond cross-entropy's weight against EDM's atom loss (weight 1).
        bond_prior: ``"marginal"`` (the training set's bond-class frequencies over all pairs) or ``"uniform"``.
        formal_charges: also diffuse each atom's formal charge (QM9's zwitterions; default True).
        **kwargs: ``MoleculeDiffusion``'s (hidden, layers, attention, conditioning, val_molecules, ...) and the
            core's (schedule, prediction, lr, ema_decay, ...). The e3nn backbone and conformer models
            (``types_given``) have no bond-aware form here.
    """

    loss_class = CategoricalDenoisingLoss
    model_kind = "bonds"

    def __init__(self, bond_weight: float = 2.0, bond_prior: str = "marginal", formal_charges: bool = True,
                 **kwargs: Any) -> None:
        if bond_prior not in PRIORS:
            raise ValueError(f"bond_prior must be one of {', '.join(PRIORS)}, not {bond_prior!r}.")
        if kwargs.get("backbone", "egnn") != "egnn" or kwargs.get("types_given"):
            raise ValueError("The bond-aware model has an EGNN backbone and generates its atom types.")
        self.bond_counts: list[float] | None = None  # the training set's pairs per bond class, set in setup()
        super().__init__(formal_charges=formal_charges, **kwargs)
        self.save_hyperparameters()

    def build_network(self) -> torch.nn.Module:
        return BondEGNN(self.state_features, self.hparams.hidden, self.hparams.layers, self.condition_width,
                        self.hparams.attention,
                        self.hparams.get("normalization_factor", 1.0), self.hparams.edm_layer)

    def build_loss(self) -> CategoricalDenoisingLoss:
        h = self.hparams
        return CategoricalDenoisingLoss(self.schedule, h.prediction, h.loss_type, h.loss_weighting, h.cond_dropout,
                                        weighting_gamma=h.get("loss_weight_gamma"), categorical_weight=h.bond_weight,
                                        group_dropout=h.get("cond_group_dropout", 0.0),
                                        max_time=h.get("loss_max_time", 1.0))

    @property
    def bond_process(self) -> CategoricalProcess:
        """The bonds' categorical process: the training set's marginal (``bond_counts``) or uniform prior.

        Raises:
            RuntimeError: a marginal prior before the training set's counts are known.
        """
        if self.hparams.bond_prior == "uniform":
            return CategoricalProcess.from_counts(torch.ones(NUM_BOND_CLASSES), self.schedule, "uniform")
        if self.bond_counts is None:
            raise RuntimeError("The bond classes' marginal is unknown: train with QM9BondDataModule, or load a "
                               "checkpoint that stores it.")
        return CategoricalProcess.from_counts(torch.tensor(self.bond_counts), self.schedule)

    def state_space(self, batch: Tensor, num_graphs: int) -> StackedSpace:
        """The stacked space (``data/bond_state.py``) for a batch vector ``(N,)``."""
        return bond_state_space(batch, num_graphs, self.state_features, self.bond_process)

    def denoiser(self, context: Any = None, clip: tuple[float, float] | None = None):
        """``D(x_t, t, cond)``: the atoms' x0 estimate (from the network's eps, x0 or v) and the pairs' class
        probabilities (the softmax of its bond logits), stacked as ``x_t`` is."""
        batch, _ = context
        atom_width = 3 + self.state_features

        def denoise(x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
            pred = self(x_t, t, cond, context)
            n = len(batch)
            alpha, sigma = self.schedule.alpha(t).to(x_t.dtype), self.schedule.sigma(t).to(x_t.dtype)
            atoms = to_x0(pred[:n, :atom_width], x_t[:n, :atom_width], alpha, sigma, self.hparams.prediction)
            probs = torch.softmax(pred[n:, :NUM_BOND_CLASSES].float(), dim=-1).to(atoms.dtype)
            pad = torch.nn.functional.pad
            return torch.cat([pad(atoms, (0, x_t.shape[1] - atom_width)), pad(probs, (0, x_t.shape[1] - NUM_BOND_CLASSES))])

        return denoise

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        pairs = upper_pairs(batch.batch, batch.num_graphs)
        x0 = bonded_state(batch, self.element_set, pairs)
        space = bond_state_space(batch.batch, batch.num_graphs, self.state_features, self.bond_process, pairs)
        cond = self.condition_from_properties(batch.y) if self._conditioning else None
        return DiffusionBatch(x0, space, cond, (batch.batch, batch.num_graphs))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.bond_counts is None and hasattr(datamodule, "bond_class_counts"):
            self.bond_counts = [float(c) for c in datamodule.bond_class_counts()]
        if self.bond_counts is None and self.hparams.bond_prior == "marginal":
            raise ValueError("The bond-aware model trains on QM9 with bonds: use "
                             "sci_diffusion_molecules.data.bond_datamodule.QM9BondDataModule.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["sci_diffusion"]["bond_counts"] = self.bond_counts

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.bond_counts = checkpoint.get("sci_diffusion", {}).get("bond_counts")

    def validation_metrics(self) -> dict[str, float]:
        """EDM's metric (bonds from distances) and MiDi's (the generated bonds) on ``val_molecules`` samples."""
        n = self.hparams.val_molecules
        if not n or not self.atom_count_histogram:
            return {}
        gen = torch.Generator().manual_seed(0)
        counts = draw_atom_counts(self.atom_count_histogram, n, gen)
        mols = list(sample_bonded_molecules(self, counts, "dpmpp2m_sde", self.hparams.val_steps, gen))
        edm, bonds = Verdicts.of(m[:3] for m in mols), BondVerdicts.of((z, b, q) for z, _, q, b in mols)
        return {"atom_stability": edm.atom_stability, "mol_stability": edm.molecule_stability, "validity": edm.validity,
                "bonds_mol_stability": bonds.molecule_stability, "bonds_validity": bonds.validity}

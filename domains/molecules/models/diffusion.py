"""``MoleculeDiffusion``: EDM-style joint diffusion of 3D coordinates and atom types.

The state of one batch is the atom state of ``data/atom_state.py``: ``x = cat[pos (3), one_hot * 0.25
(K), charge * 0.1 (1)]`` per atom (QM9: K = 5 elements), plus ``formal_charge * 0.25 (1)`` for an
element set with formal charges; positions (Angstrom) live in the zero-centre-of-mass subspace of each
molecule, atom features in plain Euclidean space (EDM's feature scaling). The network is
:class:`~.egnn.EGNN`, or with ``backbone="e3nn"`` the tensor-product :class:`~.e3nn_backbone.E3nnDenoiser`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from sci_diffusion.errors import UserError
from sci_diffusion.losses import DenoisingLoss
from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.state_spaces import ProductSpace

from ..chem.elements import ElementSet
from ..chem.stability import Verdicts
from ..data.aligned_coupling import noise_coupling
from ..data.atom_state import atom_feature_count, centred_atom_state, molecule_space
from ..data.conditioning import PropertyConditioning, check_property_names
from ..data.qm9 import PROPERTY_NAMES
from ..generation.sampling import draw_atom_counts, sample_molecules
from .e3nn_backbone import E3nnDenoiser
from .egnn import EGNN

BACKBONES = ("egnn", "e3nn")


class MoleculeDiffusion(DiffusionModule):
    """EDM (Hoogeboom et al. 2022) on PyG batches, trained through the core's DiffusionModule.

    Args:
        hidden, layers, attention: EGNN size (EDM QM9: 256, 9, True); for the e3nn backbone the
            scalar width and the number of interaction blocks (``attention`` unused).
        backbone: the denoiser, ``"egnn"`` (EDM's EGNN, the default, which checkpoints saved
            before this option load as) or ``"e3nn"`` (:class:`~.e3nn_backbone.E3nnDenoiser`).
        lmax: the e3nn backbone's highest spherical-harmonic degree (1 or 2); unused by the EGNN.
        conditioning: property names (from ``qm9.PROPERTY_NAMES``) the model is conditioned on;
            empty for an unconditional model. The normalised targets and a presence flag per property
            are appended to every atom's input features, as EDM does (``data/conditioning.py``). With
            several, ``cond_group_dropout`` drops each on its own in training (besides ``cond_dropout``,
            which drops them all), so that any subset can be asked for.
        property_mean, property_mad: override the normalisation of the conditioning properties,
            one value per name; by default the training set's mean and mean absolute deviation
            (Db's in the conditional protocol), computed when training starts and stored in the
            checkpoint.
        val_molecules: molecules sampled at validation for stability metrics (0: none); a
            conditional model samples them with targets drawn jointly with their sizes from the
            training set.
        edm_layer: EDM's exact EGNN layer, with the full ``coords_range`` in every block (see
            ``egnn.EGNN``); off by default, as the bundled models were trained.
        elements: the element set's symbols (one-hot columns, in order), e.g. ``[H, C, N, O, F, S,
            Cl, Br, I]`` for a custom SDF collection; None: QM9's H, C, N, O, F. Saved in the
            checkpoint; training checks that the datamodule's element set is the same.
        formal_charges: also diffuse each atom's formal charge, so that samples carry N+, O-, ...
        normalization_factor: EDM's ``normalization_factor``: the EGNN divides its sums over neighbours
            by it (EDM: 1 for QM9 and GEOM). Molecules of 50 to 80 atoms start training far more
            stably with 10 (the sums of untrained messages grow with the atom count).
        types_given: a conformer model: the atom features are the condition, seen clean at every noise
            level and left out of the loss (``DiffusionBatch.known``), and only the positions are
            generated. ``sample molecules --smiles`` with it writes conformers of the given molecule.
        coupling: how training pairs each molecule's noise with its data: ``"independent"`` (the diffusion's
            forward process) or ``"aligned"`` (``data/aligned_coupling.py``: atom assignment and Kabsch rotation,
            as EquiFM and SemlaFlow train their flows; with ``schedule: rectified_flow``, ``prediction: x0``). An
            aligned model is sampled exactly by the ODE samplers (``ddim``, ``dpmpp2m``).
        **kwargs: the core's DiffusionModule arguments (schedule, prediction, lr, ema_decay, ...).
            Among them ``init_from``: a molecules checkpoint whose network starts this one when training
            begins (fine-tuning, e.g. a conditional model from the unconditional bundled one). Every
            layer keeps its shape but the input layer, which gains the condition's columns: they start
            at zero, so the fine-tuned model starts as exactly the model it came from
            (:meth:`copy_initial_weights`).
            ``cond_dropout`` defaults to 0.1 for a conditional model, so that the one network also
            learns the unconditional prediction that classifier-free guidance needs.
    """

    domain = "molecules"

    def __init__(self, hidden: int = 256, layers: int = 9, attention: bool = True,
                 conditioning: list[str] | None = None, property_mean: list[float] | None = None,
                 property_mad: list[float] | None = None, val_molecules: int = 100,
                 edm_layer: bool = False, backbone: str = "egnn", lmax: int = 1,
                 elements: list[str] | None = None, formal_charges: bool = False, normalization_factor: float = 1.0,
                 types_given: bool = False, coupling: str = "independent", **kwargs: Any) -> None:
        noise_coupling(coupling)  # an unknown name fails here, in one sentence
        self.element_set = ElementSet.of(elements, formal_charges)
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}.")
        self._conditioning = check_property_names(conditioning or [])
        for name, override in (("property_mean", property_mean), ("property_mad", property_mad)):
            if override is not None and len(override) != len(self._conditioning):
                raise ValueError(f"{name} needs one value per conditioning property ({len(self._conditioning)}).")
        kwargs.setdefault("schedule", "polynomial_2")
        kwargs.setdefault("cond_dropout", 0.1 if self._conditioning else 0.0)
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.atom_count_histogram: dict[int, int] = {}
        self.property_conditioning: PropertyConditioning | None = None
        self.training_smiles: list[str] | None = None  # a custom data set's novelty reference

    model_kind = "edm"  # what `sample molecules --model` calls it; the checkpoint's module class says it too

    @property
    def state_features(self) -> int:
        """Invariant columns of the diffused state per atom (QM9: 5 types + nuclear charge)."""
        return atom_feature_count(self.element_set)

    @property
    def condition_width(self) -> int:
        """The network's condition columns: a normalised value and a presence flag per property (0: none)."""
        return 2 * len(self._conditioning)

    @property
    def condition_groups(self) -> int:
        """Each conditioning property is one group the loss may drop on its own."""
        return max(1, len(self._conditioning))

    def drop_condition(self, cond: Tensor, drop: Tensor, batch: DiffusionBatch) -> Tensor:
        """Zero the value and the presence flag of each dropped property: ``drop`` ``(G, P)``."""
        keep = (~drop).to(cond.dtype)
        return cond * torch.cat([keep, keep], dim=1)

    def build_network(self) -> torch.nn.Module:
        cond_dim = self.condition_width
        if self.hparams.get("backbone", "egnn") == "e3nn":  # checkpoints older than the option hold EGNNs
            return E3nnDenoiser(self.state_features, self.hparams.hidden, self.hparams.layers, cond_dim,
                                lmax=self.hparams.get("lmax", 1))
        return EGNN(self.state_features, self.hparams.hidden, self.hparams.layers, cond_dim, self.hparams.attention,
                    edm_coords_range=self.hparams.edm_layer,
                    normalization_factor=self.hparams.get("normalization_factor", 1.0))

    def build_loss(self) -> DenoisingLoss:
        """The core's loss with the model's noise coupling (``coupling``; checkpoints older than the option:
        independent)."""
        loss = super().build_loss()
        return dataclasses.replace(loss, coupling=noise_coupling(self.hparams.get("coupling", "independent")))

    def state_space(self, batch: Tensor, num_graphs: int) -> ProductSpace:
        """The space the diffusion runs in, for a batch vector ``(N,)``."""
        return molecule_space(batch, num_graphs, self.state_features)

    def decode_state(self, x: Tensor, batch: Tensor, num_graphs: int, cond: Tensor | None = None) -> Tensor:
        """The atom state ``(N, 3 + 6)`` (positions, type scores, charge) of a sampled state: the
        state itself here (``cond`` unused); the latent model decodes."""
        return x

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None, context: Any = None) -> Tensor:
        batch, num_graphs = context
        return self.net(x_t, t, cond, batch, num_graphs)

    @property
    def types_given(self) -> bool:
        """A conformer model: the atom types are given and only the positions are generated."""
        return bool(self.hparams.get("types_given", False))  # checkpoints older than the option: False

    @property
    def conditioning(self) -> list[str]:
        """The properties this model is conditioned on (empty: unconditional)."""
        return list(self._conditioning)

    # ----- data -------------------------------------------------------------------------------
    def condition_from_properties(self, y: Tensor) -> Tensor:
        """The network's condition ``(G, 2P)`` from all QM9 properties ``(G, 6)`` of a batch."""
        if self.property_conditioning is None:
            raise RuntimeError("The property normalisation is unknown: train with a datamodule that has "
                               "properties, or load a checkpoint that stores it.")
        cols = [PROPERTY_NAMES.index(p) for p in self._conditioning]
        return self.property_conditioning.condition(y[:, cols])

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        x0 = centred_atom_state(batch, self.element_set)
        cond = self.condition_from_properties(batch.y) if self._conditioning else None
        known = None
        if self.types_given:  # the feature columns, for every atom
            known = torch.zeros(1, x0.shape[1], device=x0.device)
            known[:, 3:] = 1.0
        return DiffusionBatch(x0, molecule_space(batch.batch, batch.num_graphs, self.state_features), cond,
                              (batch.batch, batch.num_graphs), known=known)

    def training_loss(self, batch: Any) -> Tensor:
        """The loss one training step minimises on a PyG batch (benchmarks time it)."""
        return self.loss_fn(self, self.prepare_batch(batch))

    def copy_initial_weights(self, checkpoint: dict[str, Any], path: str) -> None:
        """The warm start (``init_from``) copies the network only, widening the input layer
        (:func:`load_widened_weights`); the atom-count table and conditioning come from the data.

        Raises:
            UserError: a weight is missing or of another shape.
        """
        try:
            load_widened_weights(self.net, checkpoint["state_dict"], prefix="net.")
        except ValueError as exc:
            raise UserError(f"init_from {path} does not fit this model: {exc}") from None

    def setup(self, stage: str) -> None:
        super().setup(stage)  # DiffusionModule's: the warm start from ``init_from``
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        if hasattr(datamodule, "atom_count_histogram"):
            self.atom_count_histogram = dict(datamodule.atom_count_histogram)
        data_elements = getattr(datamodule, "element_set", None)
        if data_elements is not None and data_elements != self.element_set:
            raise ValueError(f"The data's element set ({data_elements.describe()}) is not the model's "
                             f"({self.element_set.describe()}): give model.elements and model.formal_charges "
                             "the data's (data.source_elements, data.source_formal_charges).")
        if hasattr(datamodule, "training_smiles"):
            self.training_smiles = datamodule.training_smiles()
        if self._conditioning and self.property_conditioning is None:
            num_atoms, properties = datamodule.train_properties()
            self.property_conditioning = PropertyConditioning.from_training_set(
                self._conditioning, num_atoms, properties, self.hparams.property_mean, self.hparams.property_mad)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        record = checkpoint["sci_diffusion"]
        record["atom_count_histogram"] = {int(k): int(v) for k, v in self.atom_count_histogram.items()}
        record["elements"] = {"symbols": list(self.element_set.symbols),
                              "formal_charges": self.element_set.formal_charges}
        if self.training_smiles is not None:
            record["training_smiles"] = list(self.training_smiles)
        if self.property_conditioning is not None:
            record["conditioning"] = self.property_conditioning.to_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get("sci_diffusion", {})
        self.atom_count_histogram = {int(k): int(v) for k, v in record.get("atom_count_histogram", {}).items()}
        self.training_smiles = record.get("training_smiles")
        if record.get("conditioning") is not None:
            self.property_conditioning = PropertyConditioning.from_record(record["conditioning"])

    # ----- periodic sampling at validation -----------------------------------------------------
    def validation_metrics(self) -> dict[str, float]:
        n = self.hparams.val_molecules
        if not n or not self.atom_count_histogram:
            return {}
        gen = torch.Generator().manual_seed(0)
        cond = None
        if self._conditioning:  # sample as the protocol does: sizes and targets drawn jointly
            counts, values = self.property_conditioning.draw_joint(n, gen)
            cond = self.property_conditioning.condition(values.float())
        else:
            counts = draw_atom_counts(self.atom_count_histogram, n, gen)
        mols = sample_molecules(self, counts, self.hparams.val_sampler, self.hparams.val_steps, gen, cond=cond)
        verdicts = Verdicts.of(mols)  # the EDM metric's stability and validity
        return {"atom_stability": verdicts.atom_stability, "mol_stability": verdicts.molecule_stability,
                "validity": verdicts.validity}


def load_widened_weights(net: torch.nn.Module, state_dict: dict[str, Tensor], prefix: str = "") -> None:
    """Copy ``state_dict`` (keys under ``prefix``) into ``net``; a 2-D weight that is wider in
    ``net`` (more input columns) gets the source in its leading columns and zeros in the rest.

    Raises:
        ValueError: a tensor is missing or its shape differs in any other way.
    """
    target = net.state_dict()
    for key, value in target.items():
        source = state_dict.get(prefix + key)
        if source is None:
            raise ValueError(f"The initial checkpoint has no {prefix + key}.")
        if source.shape == value.shape:
            value.copy_(source)
        elif source.dim() == 2 and source.shape[0] == value.shape[0] and source.shape[1] < value.shape[1]:
            value.zero_()
            value[:, : source.shape[1]] = source
        else:
            raise ValueError(f"{prefix + key} is {tuple(source.shape)} in the initial checkpoint, "
                             f"{tuple(value.shape)} here.")

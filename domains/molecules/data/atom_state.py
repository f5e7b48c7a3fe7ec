"""The atom state that the EDM-style models diffuse, and its space.

One molecule's state is ``x = cat[pos (3), one_hot * 0.25 (K), charge * 0.1 (1)]`` per atom (QM9:
K = 5 elements), plus ``formal_charge * 0.25 (1)`` for an element set with formal charges: positions
(Angstrom) live in the zero-centre-of-mass subspace of each molecule, atom features in plain
Euclidean space (EDM's feature scaling). Element sets with heavier elements than F scale the nuclear
charge by ``0.9 / Z_max`` instead of 0.1, so that it stays below 1. ``encode_atoms`` builds a state,
``decode_atoms`` and ``decode_formal_charges`` read one back.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from sci_diffusion.state_spaces import EuclideanSpace, ProductSpace, ZeroCoMSpace

from ..chem.elements import ATOM_TYPES, QM9_ELEMENTS, ElementSet

ONE_HOT_SCALE = 0.25
CHARGE_SCALE = 0.1
FORMAL_CHARGE_SCALE = 0.25
FEATURE_DIM = len(ATOM_TYPES) + 1  # QM9's atom features per atom
MAX_FORMAL_CHARGE = 2


def molecule_space(batch: Tensor, num_graphs: int, features: int = FEATURE_DIM) -> ProductSpace:
    """Zero-CoM coordinates joined with ``features`` Euclidean columns per atom (the atom features,
    or GeoLDM's invariant latents), for a PyG batch vector ``(N,)``."""
    return ProductSpace([(ZeroCoMSpace(batch, num_graphs), 3),
                         (EuclideanSpace(batch=batch, num_samples=num_graphs), features)])


def atom_feature_count(elements: ElementSet = QM9_ELEMENTS) -> int:
    """Invariant state columns per atom: K one-hot types, the nuclear charge and, with formal
    charges, the formal charge (QM9: 6)."""
    return len(elements) + 1 + int(elements.formal_charges)


def nuclear_charge_scale(elements: ElementSet = QM9_ELEMENTS) -> float:
    """EDM's 0.1 for elements up to F (Z = 9); ``0.9 / Z_max`` for heavier sets, so the feature stays below 1."""
    largest = int(elements.atomic_numbers.max())
    return CHARGE_SCALE if largest <= 9 else 0.9 / largest


def encode_atoms(pos: Tensor, one_hot: Tensor, charges: Tensor, formal_charge: Tensor | None = None,
                 elements: ElementSet = QM9_ELEMENTS) -> Tensor:
    """The diffusion state ``(N, 3 + atom_feature_count)``: positions (Angstrom), one-hot x0.25,
    nuclear charge x ``nuclear_charge_scale`` (QM9: 0.1) and, with formal charges, the formal
    charge x0.25."""
    parts = [pos, one_hot * ONE_HOT_SCALE, charges * nuclear_charge_scale(elements)]
    if elements.formal_charges:
        parts.append(formal_charge * FORMAL_CHARGE_SCALE)
    return torch.cat(parts, dim=1)


def centred_atom_state(batch: Any, elements: ElementSet = QM9_ELEMENTS) -> Tensor:
    """:func:`encode_atoms` of a PyG batch with every molecule's positions moved to zero centre of
    mass (EDM centres x0 too; the noise and the network's output live in that subspace)."""
    pos = ZeroCoMSpace(batch.batch, batch.num_graphs).project(batch.pos)
    return encode_atoms(pos, batch.one_hot, batch.charges, getattr(batch, "formal_charge", None), elements)


def decode_atoms(x: Tensor, elements: ElementSet = QM9_ELEMENTS) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(N, 3)`` Angstrom and atomic numbers ``(N,)`` from a state ``(N, 3 + F)``.

    The atom type is the argmax of the one-hot block, as in EDM.
    """
    types = x[:, 3:3 + len(elements)].argmax(1).cpu().numpy()
    return x[:, :3].detach().cpu().numpy().astype(np.float64), elements.atomic_numbers[types]


def decode_formal_charges(x: Tensor, elements: ElementSet) -> np.ndarray | None:
    """Formal charges ``(N,)`` int64 of a state ``(N, 3 + F)``: its last column / 0.25, rounded and
    clipped to -2..+2 (0 where not finite); None for an element set without formal charges."""
    if not elements.formal_charges:
        return None
    q = torch.nan_to_num(x[:, -1].float() / FORMAL_CHARGE_SCALE, nan=0.0)
    return torch.round(q).clamp(-MAX_FORMAL_CHARGE, MAX_FORMAL_CHARGE).to(torch.int64).cpu().numpy()

"""The state a bond-aware model diffuses: a batch's atoms stacked on its atom pairs.

One batch of G molecules with N atoms and ``P = sum_g n_g (n_g - 1) / 2`` unordered atom pairs is one
tensor ``(N + P, W)``:

- rows ``0..N-1``: the atom state of ``atom_state.py`` (positions in Angstrom, zero centre of mass per
  molecule, then the scaled atom features), ``3 + F`` columns;
- rows ``N..N+P-1``: each pair's bond class (``chem/bond_types.BOND_CLASSES``) one-hot in K = 5 columns, the
  rest of the row zero. Pairs run molecule by molecule, and within a molecule over ``i < j`` row-major
  (:func:`upper_pairs`), so a pair's row follows from its two atoms (:func:`pair_rows`).

``W = max(3 + F, K)``. Its space (:func:`bond_state_space`) is the core's ``StackedSpace`` of the
molecules' ``ProductSpace`` over a ``CategoricalSpace`` of the pairs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sci_diffusion.categorical import CategoricalProcess, CategoricalSpace
from sci_diffusion.state_spaces import StackedSpace

from ..chem.bond_types import NUM_BOND_CLASSES
from ..chem.elements import QM9_ELEMENTS, ElementSet
from .atom_state import atom_feature_count, centred_atom_state, molecule_space


def upper_pairs(batch: Tensor, num_graphs: int) -> Tensor:
    """All unordered pairs ``i < j`` inside each molecule of a PyG batch vector ``batch`` ``(N,)`` (sorted):
    ``(2, P)`` long, molecule by molecule, row-major within a molecule."""
    counts = torch.bincount(batch, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    per_atom = (counts[batch] - 1 - (torch.arange(len(batch), device=batch.device) - starts[batch]))  # j > i
    first = torch.repeat_interleave(torch.arange(len(batch), device=batch.device), per_atom)
    block_start = torch.cumsum(per_atom, 0) - per_atom
    offset = torch.arange(len(first), device=batch.device) - torch.repeat_interleave(block_start, per_atom)
    return torch.stack([first, first + 1 + offset])


def pair_rows(atoms: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """The pair index (a row of :func:`upper_pairs`) of each atom pair ``atoms`` ``(2, E)`` (any order, ``i != j``,
    both in one molecule): ``(E,)`` long. Directed edges ``(i, j)`` and ``(j, i)`` share their pair."""
    counts = torch.bincount(batch, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    pairs_before = torch.cumsum(counts * (counts - 1) // 2, 0) - counts * (counts - 1) // 2
    low, high = atoms.min(0).values, atoms.max(0).values
    graph = batch[low]
    n, a, b = counts[graph], low - starts[graph], high - starts[graph]
    return pairs_before[graph] + a * n - a * (a + 1) // 2 + (b - a - 1)


def pair_classes(data: Any, pairs: Tensor) -> Tensor:
    """The bond class ``(P,)`` long of every pair ``pairs`` ``(2, P)`` of a PyG batch whose graphs carry
    ``bond_index`` ``(2, B)`` and ``bond_type`` ``(B,)`` (``bond_datamodule.py``); 0 (none) where no bond."""
    classes = torch.zeros(pairs.shape[1], dtype=torch.long, device=pairs.device)
    if data.bond_index.numel():
        classes[pair_rows(data.bond_index, data.batch, data.num_graphs)] = data.bond_type.long()
    return classes


def bond_state_space(batch: Tensor, num_graphs: int, features: int, process: CategoricalProcess,
                     pairs: Tensor | None = None) -> StackedSpace:
    """The space of the stacked state (module docstring) for a batch vector ``(N,)``: zero-CoM positions and
    ``features`` Euclidean columns per atom over the pairs' categorical bond classes under ``process``."""
    pairs = upper_pairs(batch, num_graphs) if pairs is None else pairs
    atoms = molecule_space(batch, num_graphs, features)
    bonds = CategoricalSpace(process, batch[pairs[0]], num_graphs)
    return StackedSpace([(atoms, len(batch), 3 + features), (bonds, pairs.shape[1], process.num_classes)])


def bonded_state(data: Any, elements: ElementSet = QM9_ELEMENTS, pairs: Tensor | None = None) -> Tensor:
    """The clean stacked state ``(N + P, W)`` of a PyG batch with bonds (module docstring)."""
    pairs = upper_pairs(data.batch, data.num_graphs) if pairs is None else pairs
    atoms = centred_atom_state(data, elements)
    bonds = torch.nn.functional.one_hot(pair_classes(data, pairs), NUM_BOND_CLASSES).to(atoms.dtype)
    width = max(atoms.shape[1], NUM_BOND_CLASSES)
    pad = torch.nn.functional.pad
    return torch.cat([pad(atoms, (0, width - atoms.shape[1])), pad(bonds, (0, width - NUM_BOND_CLASSES))])


def state_width(elements: ElementSet = QM9_ELEMENTS) -> int:
    """``W``, the stacked state's width: the larger of the atom state's ``3 + F`` and the K bond classes."""
    return max(3 + atom_feature_count(elements), NUM_BOND_CLASSES)


def split_state(x: Tensor, num_atoms: int, atom_width: int) -> tuple[Tensor, Tensor]:
    """``(atoms (N, 3 + F), pairs (P, K))`` of a stacked state ``x`` ``(N + P, W)`` with ``N = num_atoms``."""
    return x[:num_atoms, :atom_width], x[num_atoms:, :NUM_BOND_CLASSES]

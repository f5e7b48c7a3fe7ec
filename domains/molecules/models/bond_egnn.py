"""The EGNN of a bond-aware model: EDM's network (``egnn.py``) that reads each atom pair's noisy bond class in
its messages and predicts every pair's clean bond class.

Input and output are the stacked state of ``data/bond_state.py``: ``(N + P, W)``, the atoms' rows
(positions and features) over the unordered pairs' rows (bond classes one-hot).

- Every directed edge ``(i, j)`` of the fully connected molecule reads its pair's noisy one-hot bond class,
  appended to the distances that EDM's messages read (``EGNN(edge_features=K)``);
- the atom rows of the output are EDM's: the coordinate displacement (zero CoM) and the feature head;
- the pair rows are K bond logits from an MLP of ``h_i + h_j``, ``h_i * h_j``, the pair's squared distance
  after the last block and at the input, and its noisy class: symmetric in ``i`` and ``j``, so one value per
  unordered pair, and invariant under rotations, translations and permutations of the atoms (the positions
  enter only as distances).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..chem.bond_types import NUM_BOND_CLASSES
from ..data.bond_state import pair_rows, split_state, upper_pairs
from .egnn import EGNN, fully_connected_edges


class BondEGNN(nn.Module):
    """EDM's EGNN with bond classes on its edges and a bond head (module docstring).

    Args:
        feature_dim: the atoms' feature width F (QM9: 6, or 7 with formal charges).
        hidden, layers, cond_dim, attention, normalization_factor, edm_coords_range: as :class:`~.egnn.EGNN`.
        bond_classes: K, the bond classes (``chem/bond_types.BOND_CLASSES``: 5).
    """

    def __init__(self, feature_dim: int = 6, hidden: int = 256, layers: int = 9, cond_dim: int = 0,
                 attention: bool = True, normalization_factor: float = 1.0, edm_coords_range: bool = False,
                 bond_classes: int = NUM_BOND_CLASSES) -> None:
        super().__init__()
        self.feature_dim, self.bond_classes = feature_dim, bond_classes
        self.egnn = EGNN(feature_dim, hidden, layers, cond_dim, attention, normalization_factor=normalization_factor,
                         edm_coords_range=edm_coords_range, edge_features=bond_classes)
        self.bond_head = nn.Sequential(nn.Linear(2 * hidden + 2 + bond_classes, hidden), nn.SiLU(),
                                       nn.Linear(hidden, bond_classes))

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        """Predict the atoms' eps (or x0, v) and the pairs' clean bond logits from a noisy stacked state.

        Args:
            x_t: ``(N + P, W)`` the stacked state (``data/bond_state.py``): atoms' noisy positions (Angstrom,
                zero CoM) and features, then the pairs' noisy bond classes one-hot.
            t: diffusion time in [0, 1], 0-d or ``(num_graphs,)``.
            cond: ``(num_graphs, cond_dim)`` or None.
            batch: ``(N,)`` molecule of every atom (sorted).
        Returns:
            ``(N + P, W)``: the atoms' ``(N, 3 + F)`` EDM output, then the pairs' ``(P, K)`` bond logits, each
            block zero-padded to W.
        """
        return self.forward_on_graph(x_t, t, cond, batch, *self.graph_indices(batch, num_graphs))

    @staticmethod
    def graph_indices(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The index tensors of a batch's molecules that :meth:`forward_on_graph` reads: ``edges`` ``(2, E)`` (every
        ordered pair of a molecule), ``edge_pairs`` ``(E,)`` (each edge's unordered pair row), ``pairs`` ``(2, P)``
        and ``counts`` ``(num_graphs,)`` long, the atoms per molecule."""
        edges = fully_connected_edges(batch, num_graphs)
        return (edges, pair_rows(edges, batch, num_graphs), upper_pairs(batch, num_graphs),
                torch.bincount(batch, minlength=num_graphs))

    def forward_on_graph(self, x_t: Tensor, t: Tensor, cond: Tensor | None, batch: Tensor, edges: Tensor,
                         edge_pairs: Tensor, pairs: Tensor, counts: Tensor) -> Tensor:
        """:meth:`forward` with the batch's :meth:`graph_indices` given: no output shape then depends on the values
        of ``batch``, so the network exports with dynamic sizes (``torch.onnx.export``)."""
        num_atoms, num_graphs = batch.shape[0], counts.shape[0]  # shapes, not len(): they stay symbolic in an export
        atoms, bonds = split_state(x_t, num_atoms, 3 + self.feature_dim)
        edge_bonds = bonds.index_select(0, edge_pairs)
        h, x = self.egnn.trunk(atoms, t, cond, batch, num_graphs, edges, edge_bonds)
        atom_out = self.egnn.output(h, x, atoms[:, :3], batch, num_graphs, counts)
        h_i, h_j = h.index_select(0, pairs[0]), h.index_select(0, pairs[1])
        d2 = (x.index_select(0, pairs[0]) - x.index_select(0, pairs[1])).pow(2).sum(1, keepdim=True)
        d2_input = (atoms[pairs[0], :3] - atoms[pairs[1], :3]).pow(2).sum(1, keepdim=True)
        logits = self.bond_head(torch.cat([h_i + h_j, h_i * h_j, d2, d2_input, bonds], dim=1))
        width = x_t.shape[1]
        pad = nn.functional.pad
        return torch.cat([pad(atom_out, (0, width - atom_out.shape[1])), pad(logits, (0, width - logits.shape[1]))])

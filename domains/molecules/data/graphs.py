"""Molecules as PyG ``Data`` graphs, the one object the molecules domain trains on.

Fields of every graph (N atoms):
    pos [N, 3] float32 Angstrom, z [N] long atomic numbers, one_hot [N, K] float32
    over the element set's symbols (QM9: H, C, N, O, F), charges [N, 1] float32 nuclear
    charge (EDM's "charges" feature), idx [1] long (GDB9 index for QM9, position in the
    source for custom data) and, where known, y [1, 6] float32 properties in
    ``qm9.PROPERTY_NAMES`` order. An element set with formal charges adds
    formal_charge [N, 1] float32 (-1, 0, +1, ...).
No edges are stored: the networks build them from ``pos``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from ..chem.elements import QM9_ELEMENTS, ElementSet
from .qm9 import QM9Arrays


def atoms_to_data(z, pos, y=None, idx: int | None = None, elements: ElementSet = QM9_ELEMENTS,
                  formal_charges=None, path=None) -> Data:
    """One molecule as a ``Data`` graph with the fields listed in this module's docstring.

    Args:
        z: [N] atomic numbers of ``elements``.
        pos: [N, 3] positions in Angstrom.
        y: [6] properties in ``PROPERTY_NAMES`` order, or None.
        idx: an identifier of the molecule, or None.
        elements: the element set whose one-hot the graph carries.
        formal_charges: [N] formal charges (None: neutral); kept when ``elements.formal_charges``.
        path: the file the molecule came from, named in errors.

    Raises:
        UnknownElementError: an element outside ``elements``.
    """
    z = torch.as_tensor(np.asarray(z), dtype=torch.long).reshape(-1)
    data = Data(
        pos=torch.as_tensor(np.asarray(pos), dtype=torch.float32).reshape(-1, 3),
        z=z,
        one_hot=torch.from_numpy(elements.one_hot(z.numpy(), path)),
        charges=z.to(torch.float32).unsqueeze(1),
    )
    if elements.formal_charges:
        q = np.zeros(len(z)) if formal_charges is None else np.asarray(formal_charges)
        data.formal_charge = torch.as_tensor(q, dtype=torch.float32).reshape(-1, 1)
    if y is not None:
        data.y = torch.as_tensor(np.asarray(y), dtype=torch.float32).reshape(1, -1)
    if idx is not None:
        data.idx = torch.tensor([int(idx)], dtype=torch.long)
    return data


class QM9Dataset(Dataset):
    """A subset of QM9 rows, each built into ``Data`` only when it is asked for.

    Args:
        arrays: the cached QM9 arrays (``qm9.load_qm9()``).
        rows: [M] row indices into ``arrays`` (e.g. ``edm_split(arrays)["train"]``).
    """

    def __init__(self, arrays: QM9Arrays, rows: np.ndarray):
        self.arrays = arrays
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Data:
        row = int(self.rows[i])
        z, pos = self.arrays.molecule(row)
        return atoms_to_data(z, pos, self.arrays.properties[row], int(self.arrays.index[row]))

    @property
    def num_atoms(self) -> np.ndarray:
        """[M] atom count of each molecule in the subset."""
        return self.arrays.num_atoms[self.rows]

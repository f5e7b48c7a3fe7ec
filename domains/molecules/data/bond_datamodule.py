"""QM9 with its bonds (``qm9_bonds.py``) for a bond-aware model: the exact EDM split, as PyG graphs that also
carry every bond and, optionally, every atom's formal charge.

Beyond ``graphs.py``'s fields, every graph has ``bond_index`` ``[2, B]`` long (its bonds' atoms, ``i < j``;
PyG offsets it by the atoms before it in a batch, as any ``*_index``) and ``bond_type`` ``[B]`` long (the
classes of ``chem/bond_types.BOND_CLASSES``). The molecules whose SMILES did not match their coordinates
(2 of 130,831) leave the training split only: the validation and test splits, and so any reference
drawn from them, keep every molecule (the unmatched ones with no bonds).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from ..chem.bond_types import NUM_BOND_CLASSES
from ..chem.elements import QM9_ELEMENTS, ElementSet
from .datamodule import QM9DataModule
from .graphs import QM9Dataset, atoms_to_data
from .qm9 import QM9Arrays, conditional_halves, edm_split, load_qm9
from .qm9_bonds import QM9Bonds, load_qm9_bonds


class QM9BondDataset(QM9Dataset):
    """A subset of QM9 rows as ``Data`` graphs with bonds (module docstring), built when asked for.

    Args:
        arrays, rows: as :class:`~.graphs.QM9Dataset`.
        bonds: QM9's bonds and formal charges (``qm9_bonds.load_qm9_bonds()``).
        elements: QM9's element set, with formal charges if the graphs should carry them.
    """

    def __init__(self, arrays: QM9Arrays, rows: np.ndarray, bonds: QM9Bonds, elements: ElementSet = QM9_ELEMENTS):
        super().__init__(arrays, rows)
        self.bonds, self.elements = bonds, elements

    def __getitem__(self, i: int) -> Data:
        row = int(self.rows[i])
        z, pos = self.arrays.molecule(row)
        charges = self.bonds.formal_charges[self.arrays.offsets[row]:self.arrays.offsets[row + 1]]
        data = atoms_to_data(z, pos, self.arrays.properties[row], int(self.arrays.index[row]), self.elements, charges)
        pairs, orders = self.bonds.molecule(row)
        data.bond_index = torch.from_numpy(pairs.T.copy())
        data.bond_type = torch.from_numpy(orders)
        return data

    def bond_class_counts(self) -> np.ndarray:
        """``(K,)`` how many atom pairs of the subset hold each bond class (pairs without a bond: ``none``)."""
        counts = np.zeros(NUM_BOND_CLASSES, dtype=np.int64)
        n = self.arrays.num_atoms[self.rows]
        for row in self.rows:
            _, orders = self.bonds.molecule(int(row))
            counts += np.bincount(orders, minlength=NUM_BOND_CLASSES)
        counts[0] = int((n * (n - 1) // 2).sum()) - counts[1:].sum()
        return counts


class QM9BondDataModule(QM9DataModule):
    """:class:`~.datamodule.QM9DataModule` over QM9 with bonds: the same split, halves and limit; the training
    split without the molecules whose SMILES did not match (module docstring).

    Args:
        formal_charges: the graphs carry each atom's formal charge (``formal_charge``), for a model that
            generates charges; the element set is then QM9's with formal charges.
        **kwargs: ``QM9DataModule``'s (batch_size, num_workers, cache_dir, subset, limit); no custom source.
    """

    def __init__(self, formal_charges: bool = True, **kwargs) -> None:
        if kwargs.get("source") is not None:
            raise ValueError("QM9BondDataModule reads QM9's bonds; a custom source has none to read.")
        super().__init__(**kwargs)
        self.formal_charges = formal_charges
        self.element_set = ElementSet.of(None, formal_charges)

    def prepare_data(self) -> None:
        """Build the QM9 cache and its bonds once (Lightning calls this on one process only)."""
        load_qm9_bonds(self.cache_dir, verbose=True)

    def _qm9_splits(self) -> dict[str, Dataset]:
        arrays, bonds = load_qm9(self.cache_dir), load_qm9_bonds(self.cache_dir)
        rows = edm_split(arrays)
        if self.subset is not None:
            rows["train"] = conditional_halves(rows["train"])[self.subset]
        rows["train"] = rows["train"][bonds.matched[rows["train"]]]
        return {name: QM9BondDataset(arrays, r[: self.limit], bonds, self.element_set) for name, r in rows.items()}

    def bond_class_counts(self) -> np.ndarray:
        """``(K,)`` bond classes over all atom pairs of the training split: the marginal prior's counts."""
        self.setup()
        return self.datasets["train"].bond_class_counts()

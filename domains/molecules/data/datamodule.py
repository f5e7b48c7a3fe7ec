"""``QM9DataModule``: QM9 (the exact EDM split) or a custom SDF/XYZ set, as batches of PyG graphs."""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from ..chem.elements import QM9_ELEMENTS, ElementSet
from .custom_data import random_split, read_custom_molecules, scaffold_split
from .graphs import QM9Dataset
from .qm9 import atom_count_histogram, conditional_halves, edm_split, load_qm9

SUBSETS = ("Da", "Db")
CUSTOM_SPLITS = ("random", "scaffold")  # how a custom source is split: custom_data.random_split, scaffold_split


class QM9DataModule(L.LightningDataModule):
    """Batches of ``Data`` graphs (fields in ``graphs.py``) for training, validation and test.

    QM9 uses the exact EDM split; ``subset`` swaps the train split for one of the
    conditional halves. A custom ``source`` is split 90/5/5, at random with a fixed seed or by
    Bemis-Murcko scaffold (``custom_data.py``).

    Args:
        batch_size: molecules per batch.
        num_workers: DataLoader worker processes.
        cache_dir: QM9 cache folder (default ``qm9.default_cache_dir()``).
        subset: ``"Da"`` or ``"Db"`` to train on that half of the train split, or None.
        limit: keep only the first ``limit`` molecules of every split (smoke tests).
        source: an SDF/XYZ file or folder to use instead of QM9.
        source_elements: the element set's symbols for a custom ``source`` (e.g. ``[H, C, N, O, F,
            S, Cl, Br, I]``); None: the smallest set covering the data. QM9 always uses H, C, N, O,
            F. The model's ``elements`` must name the same set (training checks it).
        source_formal_charges: whether a custom source's graphs carry formal charges; None: if any
            of its atoms is charged. QM9 has none. The model's ``formal_charges`` must agree.
        split: ``"random"`` or ``"scaffold"`` for a custom source.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        subset: str | None = None,
        limit: int | None = None,
        source: str | None = None,
        source_elements: list[str] | None = None,
        source_formal_charges: bool | None = None,
        split: str = "random",
    ):
        super().__init__()
        if subset is not None and subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS} or None, not {subset!r}.")
        if subset is not None and source is not None:
            raise ValueError("subset (Da/Db) applies to QM9 only, not to a custom source.")
        if source is None and (source_elements is not None or source_formal_charges or split != "random"):
            raise ValueError("source_elements, source_formal_charges and split apply to a custom source; "
                             "QM9 uses its own.")
        if split not in CUSTOM_SPLITS:
            raise ValueError(f"split must be one of {', '.join(CUSTOM_SPLITS)}, not {split!r}.")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.subset = subset
        self.limit = limit
        self.source = source
        self.source_elements, self.source_formal_charges, self.split = source_elements, source_formal_charges, split
        self.datasets: dict[str, Dataset] | None = None
        self.element_set: ElementSet = QM9_ELEMENTS  # a custom source's is known after setup()
        self._training_smiles: list[str] | None = None

    def prepare_data(self) -> None:
        """Build the QM9 cache once (Lightning calls this on one process only)."""
        if self.source is None:
            load_qm9(self.cache_dir, verbose=True)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is None:
            self.datasets = self._custom_splits() if self.source else self._qm9_splits()

    def _qm9_splits(self) -> dict[str, Dataset]:
        arrays = load_qm9(self.cache_dir)
        rows = edm_split(arrays)
        if self.subset is not None:
            rows["train"] = conditional_halves(rows["train"])[self.subset]
        return {name: QM9Dataset(arrays, r[: self.limit]) for name, r in rows.items()}

    def _custom_splits(self) -> dict[str, Dataset]:
        wanted = None
        if self.source_elements is not None:
            wanted = ElementSet.of(self.source_elements, bool(self.source_formal_charges))
        data = read_custom_molecules(self.source, wanted, self.source_formal_charges)
        self.element_set = data.elements
        parts = scaffold_split(data.file_smiles) if self.split == "scaffold" else random_split(len(data.graphs))
        parts = {name: p[: self.limit] for name, p in parts.items()}
        self._training_smiles = sorted({data.smiles[i] for i in parts["train"] if data.smiles[i] is not None})
        return {name: [data.graphs[i] for i in p] for name, p in parts.items()}

    def training_smiles(self) -> list[str] | None:
        """The novelty reference of a custom source: the distinct SMILES of its training split rebuilt
        with the EDM bond rule (as ``qm9.train_smiles`` for QM9); None for QM9, whose reference is
        ``qm9.train_smiles()``."""
        self.setup()
        return self._training_smiles

    @property
    def atom_count_histogram(self) -> dict[int, int]:
        """``{n_atoms: n_molecules}`` of the training set, from which samplers draw molecule sizes."""
        self.setup()
        train = self.datasets["train"]
        if isinstance(train, QM9Dataset):
            return atom_count_histogram(train.num_atoms)
        return atom_count_histogram([g.num_nodes for g in train])

    def train_properties(self) -> tuple[np.ndarray, np.ndarray]:
        """Atom counts ``(M,)`` and all six properties ``(M, 6)`` (``qm9.PROPERTY_NAMES`` order and
        units) of the training set: what a conditional model normalises with and draws targets from.

        Raises:
            ValueError: a custom data set whose molecules carry no properties.
        """
        self.setup()
        train = self.datasets["train"]
        if isinstance(train, QM9Dataset):
            return train.num_atoms, train.arrays.properties[train.rows]
        if any(getattr(g, "y", None) is None for g in train):
            raise ValueError(f"{self.source} has no properties to condition on: every molecule needs all of "
                             "alpha, gap, homo, lumo, mu and Cv (see custom_data.py).")
        return (np.array([g.num_nodes for g in train]), np.concatenate([g.y.numpy() for g in train]))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

"""QM9 as docs/protocols.md §1 describes it: 130,831 molecules, the exact EDM split, units, PyG batches."""

import time

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from sci_diffusion_molecules.chem.elements import ATOM_TYPES
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.graphs import QM9Dataset, atoms_to_data
from sci_diffusion_molecules.data.qm9 import (
    NUM_MOLECULES,
    PROPERTY_NAMES,
    PROPERTY_UNITS,
    atom_count_histogram,
    conditional_halves,
    edm_split,
    load_qm9,
)


def test_qm9_has_all_130831_molecules_of_h_c_n_o_f(qm9):
    assert len(qm9) == NUM_MOLECULES == 130_831
    assert qm9.offsets[-1] == len(qm9.z) == len(qm9.positions)
    assert set(np.unique(qm9.z)) == {1, 6, 7, 8, 9}
    assert qm9.num_atoms.min() == 3 and qm9.num_atoms.max() == 29
    assert qm9.num_atoms.mean() == pytest.approx(18.0, abs=0.05)
    assert (np.diff(qm9.index) > 0).all() and qm9.index[0] == 1 and qm9.index[-1] == 133_885


def test_first_molecule_is_methane_in_angstrom(qm9):
    z, pos = qm9.molecule(0)
    assert sorted(z.tolist()) == [1, 1, 1, 1, 6]
    c = pos[z == 6][0]
    assert np.linalg.norm(pos[z == 1] - c, axis=1) == pytest.approx([1.09] * 4, abs=0.01)


def test_cache_is_written_atomically_and_reused(tmp_path):
    first = load_qm9(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["qm9_v1.npz"]  # no temporary file left
    start = time.perf_counter()
    second = load_qm9(tmp_path)
    assert time.perf_counter() - start < 5.0
    assert np.array_equal(first.positions, second.positions)
    assert np.array_equal(first.smiles, second.smiles)


def _without_qm9pack(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "qm9pack" else real_find_spec(name, *a))


def test_cache_built_elsewhere_is_used_where_qm9pack_is_missing(tmp_path, monkeypatch):
    """A training machine sent only the (compressed) cache reads it as it is."""
    _without_qm9pack(monkeypatch)
    fields = {"positions": np.zeros((5, 3), np.float32), "z": np.array([6, 1, 1, 1, 1], np.uint8),
              "offsets": np.array([0, 5]), "properties": np.zeros((1, 6), np.float32),
              "index": np.array([1]), "smiles": np.array(["C"])}
    np.savez_compressed(tmp_path / "qm9_v1.npz", source_sizes=np.array([-1, -1, -1]), **fields)
    arrays = load_qm9(tmp_path)
    assert len(arrays) == 1 and arrays.z.tolist() == [6, 1, 1, 1, 1]


def test_missing_qm9pack_without_cache_says_how_to_install(tmp_path, monkeypatch):
    _without_qm9pack(monkeypatch)
    with pytest.raises(FileNotFoundError, match="qm9pack package is not installed"):
        load_qm9(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_folder_follows_the_environment_variable(tmp_path, monkeypatch):
    from sci_diffusion_molecules.data.qm9 import default_cache_dir

    monkeypatch.setenv("SCI_DIFFUSION_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "qm9"


def test_properties_are_in_the_documented_units(qm9):
    props = dict(zip(PROPERTY_NAMES, qm9.properties.T))
    assert PROPERTY_UNITS["gap"] == "eV" and PROPERTY_UNITS["alpha"] == "Bohr^3"
    assert props["gap"].mean() == pytest.approx(6.86, abs=0.05)  # eV, not Hartree
    assert props["homo"].mean() == pytest.approx(-6.54, abs=0.05)
    assert props["alpha"].mean() == pytest.approx(75.2, abs=0.5)
    assert props["mu"].mean() == pytest.approx(2.67, abs=0.05)
    assert props["Cv"].mean() == pytest.approx(31.6, abs=0.2)
    # QM9 stores the gap as LUMO - HOMO rounded to 1e-4 Hartree.
    assert np.abs(props["gap"] - (props["lumo"] - props["homo"])).max() < 0.01


def test_edm_split_sizes_disjoint_and_reproducible(qm9):
    split = edm_split(qm9)
    assert {k: len(v) for k, v in split.items()} == {"train": 100_000, "valid": 17_748, "test": 13_083}
    everything = np.concatenate(list(split.values()))
    assert len(np.unique(everything)) == NUM_MOLECULES
    again = edm_split(qm9)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    # docs/protocols.md: train = included[perm[:100000]], included = the sorted 0-based GDB9 indices (EDM's processed
    # file lists the molecules in ascending GDB order, whatever order our rows are in).
    included = np.sort(qm9.index - 1)
    perm = np.random.RandomState(0).permutation(NUM_MOLECULES)
    assert np.array_equal(qm9.index[split["train"]] - 1, included[perm[:100_000]])


def test_the_splits_first_molecules_are_the_recipes_written_out(qm9):
    """The first four GDB9 ids (1-based) of every part, written out once from docs/protocols.md §1's recipe
    (RandomState(0) over the 130,831 GDB-sorted ids: 100,000 train, 17,748 valid, the rest test; Da/Db: the sorted
    train ids permuted by RandomState(42)): a change of seed, order or sizes turns this red."""
    split, written = edm_split(qm9), {
        "train": [133161, 70467, 8226, 26624], "valid": [70434, 125892, 29477, 74427],
        "test": [117980, 92051, 68086, 72921]}
    for part, ids in written.items():
        assert qm9.index[split[part][:4]].tolist() == ids, part
    halves = conditional_halves(split["train"])
    assert qm9.index[halves["Da"][:4]].tolist() == [101107, 106967, 26753, 102422]
    assert qm9.index[halves["Db"][:4]].tolist() == [114342, 63637, 8525, 124478]


def test_conditional_halves_split_train_into_two_disjoint_50000(qm9):
    train = edm_split(qm9)["train"]
    halves = conditional_halves(train)
    assert len(halves["Da"]) == len(halves["Db"]) == 50_000
    assert len(np.intersect1d(halves["Da"], halves["Db"])) == 0
    assert np.array_equal(np.sort(np.concatenate([halves["Da"], halves["Db"]])), np.sort(train))


def test_conditional_halves_follow_edms_recipe_on_its_gdb_sorted_train_file(qm9):
    """docs/protocols.md §1 step 4, written out in GDB9 indices: EDM's train file is in ascending GDB
    order, and Da/Db are that list permuted by RandomState(42)."""
    included = np.sort(qm9.index - 1)  # 0-based GDB9 indices of the 130,831 kept molecules
    perm = np.random.RandomState(0).permutation(130_831)
    edm_train_file = np.sort(included[perm[:100_000]])
    p = np.random.RandomState(42).permutation(100_000)
    expected_da, expected_db = edm_train_file[p[:50_000]], edm_train_file[p[50_000:]]
    halves = conditional_halves(edm_split(qm9)["train"])
    assert np.array_equal(qm9.index[halves["Da"]] - 1, expected_da)
    assert np.array_equal(qm9.index[halves["Db"]] - 1, expected_db)
    # the halves do not depend on the order in which the train rows are handed over
    shuffled = np.random.RandomState(7).permutation(edm_split(qm9)["train"])
    assert np.array_equal(conditional_halves(shuffled)["Db"], halves["Db"])


def test_train_atom_count_histogram_sums_to_100000_with_mode_19(qm9):
    hist = atom_count_histogram(qm9.num_atoms[edm_split(qm9)["train"]])
    assert sum(hist.values()) == 100_000
    assert max(hist, key=hist.get) == 19
    assert list(hist) == sorted(hist)


def test_dataset_builds_graphs_with_the_documented_fields(qm9):
    dataset = QM9Dataset(qm9, edm_split(qm9)["train"][:10])
    data = dataset[3]
    n = data.num_nodes
    assert data.pos.shape == (n, 3) and data.pos.dtype == torch.float32
    assert data.z.dtype == torch.long
    assert data.one_hot.shape == (n, len(ATOM_TYPES)) and (data.one_hot.sum(1) == 1).all()
    assert torch.equal(data.charges.squeeze(1), data.z.float())
    assert data.y.shape == (1, len(PROPERTY_NAMES))
    row = dataset.rows[3]
    assert int(data.idx) == qm9.index[row]
    assert torch.allclose(data.y[0], torch.from_numpy(qm9.properties[row]))


def test_atoms_to_data_one_hot_follows_atom_types():
    data = atoms_to_data([8, 1, 1], np.zeros((3, 3)))
    assert data.one_hot.argmax(1).tolist() == [ATOM_TYPES.index("O"), 0, 0]
    assert not hasattr(data, "y") or data.y is None


def test_datamodule_limit_300_yields_pyg_batches():
    dm = QM9DataModule(batch_size=64, limit=300)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and sum(b.num_graphs for b in batches) == 300
    batch = batches[0]
    assert isinstance(batch, Batch)
    for field in ("pos", "z", "one_hot", "charges", "y", "idx", "batch"):
        assert field in batch
    assert batch.y.shape == (64, 6) and batch.idx.shape == (64,)
    assert sum(dm.atom_count_histogram.values()) == 300
    assert next(iter(dm.val_dataloader())).num_graphs == 64


def test_datamodule_subset_db_trains_on_db():
    dm = QM9DataModule(subset="Db")
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 50_000
    with pytest.raises(ValueError, match="subset"):
        QM9DataModule(subset="Dc")

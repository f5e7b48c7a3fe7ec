"""Custom element sets (issue 14 §3): elements and formal charges are part of the data and of the
checkpoint, the metric knows EDM's whole bond table, novelty is measured against the model's own
training set, and a scaffold split keeps scaffolds apart. The real collection is RDKit's egfr.sdf,
which the rdkit wheel installs."""
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.elements import (
    QM9_ELEMENTS,
    VALENCES,
    ElementSet,
    UnknownElementError,
    allowed_valences,
)
from sci_diffusion_molecules.chem.files import MoleculeWriter, read_molecules
from sci_diffusion_molecules.chem.smiles import molecule_smiles
from sci_diffusion_molecules.chem.stability import stable_atoms
from sci_diffusion_molecules.data.atom_state import decode_atoms, decode_formal_charges, encode_atoms
from sci_diffusion_molecules.data.custom_data import murcko_scaffold, random_split, read_custom_molecules, scaffold_split
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.evaluation.metrics import evaluate_molecules
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

from .conftest import fit_tiny

EGFR = "rdkit-contrib:PBF/testData/egfr.sdf"
EGFR_ELEMENTS = ["H", "C", "N", "O", "F", "S", "Cl", "Br", "I"]


def embedded(smiles: str, seed: int = 0):
    """``(z, pos, formal charges)`` of an RDKit ETKDG + MMFF geometry of ``smiles`` with hydrogens."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    AllChem.MMFFOptimizeMolecule(mol)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    q = np.array([a.GetFormalCharge() for a in mol.GetAtoms()])
    return z, mol.GetConformer().GetPositions(), q


@pytest.fixture(scope="module")
def egfr():
    return read_custom_molecules(EGFR)


def test_qm9_elements_keep_edms_valences_and_charged_atoms_take_their_isoelectronic_neighbours():
    for symbol, valence in VALENCES.items():
        assert allowed_valences(QM9_ELEMENTS.atomic_numbers[QM9_ELEMENTS.symbols.index(symbol)]) == (valence,)
    assert allowed_valences(7, +1) == (4,)  # N+ like C
    assert allowed_valences(8, -1) == (1,)  # O- like F
    assert allowed_valences(7, -1) == (2,)  # N- like O
    assert allowed_valences(16) == (2, 4, 6) and allowed_valences(17) == (1,)
    assert allowed_valences(1, +1) == ()  # a bare proton is never stable


@pytest.mark.parametrize("smiles", ["CCl", "CSC", "CCBr", "C[N+](C)(C)C", "C[NH3+]", "C[O-]", "CI", "c1ccsc1"])
def test_drug_like_elements_and_charged_atoms_are_stable_valid_and_keep_their_charges(smiles):
    z, pos, q = embedded(smiles)
    built = molecule_smiles(z, pos, largest_fragment=False, charges=q)
    assert built is not None
    assert Chem.MolToSmiles(Chem.MolFromSmiles(built)) == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    if "c1" not in smiles:  # EDM's rule reads aromatic rings as unsaturated: thiophene's C=C are borderline
        assert stable_atoms(z, pos, q).all()
    if q.any():  # the same geometry without its charges is neither stable nor the same molecule
        assert not stable_atoms(z, pos).all()


def test_an_element_without_bond_lengths_is_named_and_a_model_set_names_its_own_elements():
    with pytest.raises(UnknownElementError, match="'Se'"):
        stable_atoms([6, 34], np.zeros((2, 3)))
    with pytest.raises(UnknownElementError, match=r"'Cl'.*this model's element set knows only H, C, S"):
        ElementSet(("H", "C", "S")).type_index([6, 17])
    with pytest.raises(ValueError, match="distinct symbols"):
        ElementSet(("H", "Xx"))


def test_formal_charges_survive_an_sdf_round_trip_and_count_in_evaluation(tmp_path):
    z, pos, q = embedded("C[N+](C)(C)C")
    with MoleculeWriter(tmp_path / "charged.sdf") as writer:
        writer.write(z, pos, {"name": "tetramethylammonium"}, q)
    (back_z, back_pos, _, back_q), = read_molecules(tmp_path / "charged.sdf", with_charges=True)
    assert np.array_equal(back_z, z) and np.array_equal(back_q, q) and np.allclose(back_pos, pos, atol=1e-4)
    assert evaluate_molecules([(back_z, back_pos, back_q)])["molecule_stability"] == 1.0
    assert evaluate_molecules([(back_z, back_pos)])["molecule_stability"] == 0.0


def test_the_egfr_collection_reads_with_its_elements_and_charges(egfr):
    assert len(egfr.graphs) == 365
    assert egfr.elements == ElementSet(tuple(EGFR_ELEMENTS), formal_charges=True)
    supplier = Chem.SDMolSupplier(str(Path(__import__("rdkit").RDConfig.RDContribDir) / "PBF/testData/egfr.sdf"),
                                  removeHs=False, sanitize=False)
    charges = np.concatenate([[a.GetFormalCharge() for a in m.GetAtoms()] for m in supplier])
    ours = torch.cat([g.formal_charge for g in egfr.graphs]).numpy().ravel()
    assert np.array_equal(ours, charges) and (ours == 1).sum() == 57 and (ours == -1).sum() == 25
    first = egfr.graphs[0]
    assert first.one_hot.shape == (first.num_nodes, 9)
    assert np.array_equal(np.array(EGFR_ELEMENTS)[first.one_hot.argmax(1).numpy()],
                          [Chem.GetPeriodicTable().GetElementSymbol(int(n)) for n in first.z])


def test_the_scaffold_split_keeps_every_scaffold_in_one_split(egfr):
    parts = scaffold_split(egfr.file_smiles)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(365))
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [329, 18, 18]
    scaffolds = {k: {murcko_scaffold(egfr.file_smiles[i]) for i in p} for k, p in parts.items()}
    assert not scaffolds["train"] & scaffolds["test"] and not scaffolds["train"] & scaffolds["valid"]
    assert not scaffolds["valid"] & scaffolds["test"]
    shuffled = random_split(365)  # the check can fail: a random split shares scaffolds between splits
    assert {murcko_scaffold(egfr.file_smiles[i]) for i in shuffled["train"]} & \
        {murcko_scaffold(egfr.file_smiles[i]) for i in shuffled["test"]}


def test_the_state_encodes_and_decodes_elements_and_formal_charges():
    elements = ElementSet(tuple(EGFR_ELEMENTS), formal_charges=True)
    z = np.array([6, 7, 8, 35, 53, 1])
    q = np.array([0, 1, -1, 0, 0, 0])
    x = encode_atoms(torch.randn(6, 3), torch.from_numpy(elements.one_hot(z)),
                     torch.from_numpy(z).float()[:, None], torch.from_numpy(q).float()[:, None], elements)
    assert x.shape == (6, 3 + 9 + 1 + 1) and x[:, 3 + 9].max() < 1.0  # the nuclear charge stays below 1 (I: 0.9)
    _, decoded = decode_atoms(x, elements)
    assert np.array_equal(decoded, z) and np.array_equal(decode_formal_charges(x, elements), q)


@pytest.fixture(scope="module")
def egfr_checkpoint(tmp_path_factory) -> Path:
    """Two steps of a 2 x 16 EGNN on 48 egfr molecules: plumbing, not quality."""
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0.9, val_molecules=0, elements=EGFR_ELEMENTS,
                              formal_charges=True)
    data = QM9DataModule(batch_size=8, source=EGFR, source_elements=EGFR_ELEMENTS, source_formal_charges=True,
                         split="scaffold", limit=48)
    return fit_tiny(model, data, tmp_path_factory.mktemp("egfr"), steps=2)


def test_the_checkpoint_keeps_the_element_set_and_its_training_set_and_samples_charged_atoms(egfr_checkpoint, egfr,
                                                                                          tmp_path):
    from sci_diffusion.checkpoints import load_module

    module = load_module(egfr_checkpoint, domain="molecules")
    assert module.element_set == ElementSet(tuple(EGFR_ELEMENTS), formal_charges=True)
    train = scaffold_split(egfr.file_smiles)["train"][:48]
    assert module.training_smiles == sorted({egfr.smiles[i] for i in train if egfr.smiles[i] is not None})
    out = tmp_path / "s.sdf"
    assert main(["sample", "molecules", "--ckpt", str(egfr_checkpoint), "--num", "3", "--steps", "2",
                 "--out", str(out)]) == 0
    molecules = read_molecules(out, with_charges=True)
    assert len(molecules) == 3
    assert all(set(np.unique(z)) <= set(module.element_set.atomic_numbers) for z, *_ in molecules)


def test_novelty_is_measured_against_the_models_own_training_set(egfr_checkpoint, egfr, tmp_path):
    """The training molecules themselves are not novel against the checkpoint's training set, and all novel
    against QM9's."""
    import json

    from sci_diffusion.checkpoints import load_module

    module = load_module(egfr_checkpoint, domain="molecules")
    rows = [i for i in scaffold_split(egfr.file_smiles)["train"][:48] if egfr.smiles[i] is not None]
    path = tmp_path / "train.sdf"
    with MoleculeWriter(path) as writer:
        for i in rows:
            g = egfr.graphs[i]
            writer.write(g.z.numpy(), g.pos.numpy().astype(np.float64), None,
                         g.formal_charge.numpy().ravel().astype(np.int64))
    assert main(["evaluate", "molecules", "--samples", str(path), "--out", str(tmp_path / "own.json"),
                 "--ckpt", str(egfr_checkpoint)]) == 0
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["validity"] == 1.0 and own["novelty"] == 0.0
    assert module.training_smiles and len(module.training_smiles) >= own["n_unique"]
    assert main(["evaluate", "molecules", "--samples", str(path), "--out", str(tmp_path / "qm9.json")]) == 0
    assert json.loads((tmp_path / "qm9.json").read_text())["novelty"] == 1.0


def test_a_model_whose_element_set_differs_from_the_data_is_refused_in_one_sentence(tmp_path):
    import lightning as L

    model = MoleculeDiffusion(hidden=16, layers=1, val_molecules=0)  # QM9's set
    data = QM9DataModule(batch_size=8, source=EGFR, limit=16)
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"The data's element set \(H, C, N, O, F, S, Cl, Br, I with formal charges\) "
                                         r"is not the model's \(H, C, N, O, F\)"):
        trainer.fit(model, data)


def test_evaluate_finds_the_generating_checkpoint_named_in_the_records_and_checks_its_hash(egfr_checkpoint,
                                                                                          tmp_path):
    import json
    import shutil

    ckpt = tmp_path / "model.ckpt"
    shutil.copy(egfr_checkpoint, ckpt)
    samples = tmp_path / "s.sdf"
    assert main(["sample", "molecules", "--ckpt", str(ckpt), "--num", "2", "--steps", "2", "--out", str(samples)]) == 0
    assert main(["evaluate", "molecules", "--samples", str(samples), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["novelty_reference"].startswith(f"the training set of {ckpt}")
    with open(ckpt, "ab") as f:  # the file no longer holds the model that wrote the samples
        f.write(b"\0")
    assert main(["evaluate", "molecules", "--samples", str(samples), "--out", str(tmp_path / "m2.json")]) == 0
    assert json.loads((tmp_path / "m2.json").read_text())["novelty_reference"] == "QM9's EDM train split"


def test_the_bundled_custom_checkpoint_keeps_its_element_set_and_samples(tmp_path):
    from sci_diffusion.checkpoints import load_module

    ckpt = Path(__file__).resolve().parents[2] / "domains" / "molecules" / "checkpoints" / "custom_egfr_small.ckpt"
    module = load_module(ckpt, domain="molecules")
    assert module.element_set == ElementSet(tuple(EGFR_ELEMENTS), formal_charges=True)
    assert module.hparams.normalization_factor == 10 and len(module.training_smiles) > 0
    out = tmp_path / "bundled.sdf"
    assert main(["sample", "molecules", "--ckpt", str(ckpt), "--num", "2", "--steps", "3", "--out", str(out)]) == 0
    assert len(read_molecules(out)) == 2

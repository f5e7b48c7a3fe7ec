"""Molecules with their own bonds: MiDi's bond-based stability and validity (chem/bond_stability.py) on
hand-built molecules, the SDF round trip of generated bonds (chem/files.py), and the metrics that score them
beside EDM's (evaluation/metrics.py, evaluation/evaluate_file.py)."""
import json

import numpy as np
import pytest

from sci_diffusion_molecules.chem.bond_stability import BondVerdicts, atom_valences, stable_with_bonds
from sci_diffusion_molecules.chem.bond_types import AROMATIC, bond_matrix
from sci_diffusion_molecules.chem.files import MoleculeWriter, read_generated_bonds, read_molecules
from sci_diffusion_molecules.evaluation.evaluate_file import evaluate_file
from sci_diffusion_molecules.evaluation.metrics import evaluate_molecules

H, C, N, OXYGEN = 1, 6, 7, 8


def ring(atoms: list[int], hydrogens: list[int], ring_class: int) -> tuple[np.ndarray, np.ndarray]:
    """A ring of ``atoms`` joined by ``ring_class`` bonds, each atom with its count of hydrogens (single bonds)."""
    n = len(atoms)
    z = atoms + [H] * sum(hydrogens)
    pairs = [(k, (k + 1) % n) for k in range(n)]
    classes = [ring_class] * n
    h = n
    for k, count in enumerate(hydrogens):
        for _ in range(count):
            pairs.append((k, h))
            classes.append(1)
            h += 1
    return np.array(z), bond_matrix(len(z), np.sort(np.array(pairs), axis=1), np.array(classes))


def test_aromatic_bonds_count_one_and_a_half():
    z, types = ring([C] * 6, [1] * 6, AROMATIC)  # benzene
    assert (atom_valences(types)[:6] == 4).all()
    assert stable_with_bonds(z, types).all()
    verdicts = BondVerdicts.of([(z, types, None)])
    assert verdicts.valid_smiles == ["[H]c1c([H])c([H])c([H])c([H])c1[H]"] and verdicts.connected == 1  # explicit H, as EDM


def test_an_aromatic_pyrrole_nitrogen_is_unstable_under_midi_as_its_kekule_form_is_not():
    """Why QM9's bonds are kept kekulized (data/qm9_bonds.py): N-H with two aromatic bonds sums 4."""
    z, aromatic = ring([N, C, C, C, C], [1, 1, 1, 1, 1], AROMATIC)
    assert not stable_with_bonds(z, aromatic)[0] and stable_with_bonds(z, aromatic)[1:].all()
    kekule = aromatic.copy()
    for i, j, order in [(0, 1, 1), (1, 2, 2), (2, 3, 1), (3, 4, 2), (4, 0, 1)]:
        kekule[i, j] = kekule[j, i] = order
    assert stable_with_bonds(z, kekule).all()


def test_midis_valence_table_with_charges_and_its_leniency():
    ammonium = (np.array([N, H, H, H, H]), bond_matrix(5, np.array([[0, k] for k in range(1, 5)]), np.ones(4, int)))
    assert stable_with_bonds(*ammonium, charges=np.array([1, 0, 0, 0, 0])).all()
    assert not stable_with_bonds(*ammonium).all()  # a neutral N takes 2 or 3
    methyl = (np.array([C, H, H, H]), bond_matrix(4, np.array([[0, 1], [0, 2], [0, 3]]), np.ones(3, int)))
    assert stable_with_bonds(*methyl).all()  # MiDi lets a neutral carbon have 3 (EDM does not)
    water_with_extra_bond = (np.array([OXYGEN, H, H]), bond_matrix(3, np.array([[0, 1], [0, 2], [1, 2]]), np.ones(3, int)))
    assert stable_with_bonds(*water_with_extra_bond).tolist() == [True, False, False]


def test_validity_takes_the_largest_fragment_and_counts_the_fragments():
    methane = (np.array([C, H, H, H, H]), bond_matrix(5, np.array([[0, k] for k in range(1, 5)]), np.ones(4, int)))
    z = np.concatenate([methane[0], [H]])  # a lone hydrogen beside methane
    types = np.zeros((6, 6), dtype=np.int64)
    types[:5, :5] = methane[1]
    verdicts = BondVerdicts.of([(z, types, None), (*methane, None)])
    assert verdicts.valid_smiles == ["[H]C([H])([H])[H]"] * 2 and verdicts.connected == 1
    pentavalent = methane[1].copy()
    pentavalent[0, 1] = pentavalent[1, 0] = 2
    assert BondVerdicts.of([(methane[0], pentavalent, None)]).valid_smiles == []


def test_generated_bonds_and_charges_survive_an_sdf_round_trip(tmp_path):
    z, types = ring([C] * 6, [1] * 6, AROMATIC)
    kekule_z, kekule = ring([N, C, C, C, C], [1, 1, 1, 1, 1], 1)
    kekule[1, 2] = kekule[2, 1] = kekule[3, 4] = kekule[4, 3] = 2
    charges = np.zeros(len(kekule_z), dtype=np.int64)
    charges[0] = 1
    path = tmp_path / "bonded.sdf"
    with MoleculeWriter(path) as writer:
        writer.write(z, np.random.RandomState(0).randn(len(z), 3), {"sampler": "ddpm"}, None, types)
        writer.write(kekule_z, np.random.RandomState(1).randn(len(kekule_z), 3), {}, charges, kekule)
    bonds = read_generated_bonds(path)
    assert np.array_equal(bonds[0], types) and np.array_equal(bonds[1], kekule)
    assert np.array_equal(read_molecules(path, with_charges=True)[1][3], charges)


def test_files_whose_bonds_a_rule_drew_are_not_read_as_generated(tmp_path):
    z, pos = np.array([C, H, H, H, H]), np.array([[0, 0, 0], [1.09, 0, 0], [-1.09, 0, 0], [0, 1.09, 0], [0, -1.09, 0.0]])
    with MoleculeWriter(tmp_path / "edm.sdf") as writer:
        writer.write(z, pos)
    with MoleculeWriter(tmp_path / "edm.xyz") as writer:
        writer.write(z, pos)
    assert read_generated_bonds(tmp_path / "edm.sdf") is None and read_generated_bonds(tmp_path / "edm.xyz") is None


def test_both_metrics_are_reported_and_edms_ignores_the_generated_bonds(tmp_path):
    """A methane whose generated bonds are wrong (a C=H): EDM's metric (distances) calls it stable, MiDi's not."""
    z = np.array([C, H, H, H, H])
    pos = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    wrong = bond_matrix(5, np.array([[0, k] for k in range(1, 5)]), np.array([2, 1, 1, 1]))
    metrics = evaluate_molecules([(z, pos, None, wrong)])
    assert metrics["molecule_stability"] == 1.0 and metrics["generated_bonds"]["molecule_stability"] == 0.0
    assert metrics["generated_bonds"]["atom_stability"] == pytest.approx(3 / 5)
    assert "generated_bonds" not in evaluate_molecules([(z, pos, None)])
    path = tmp_path / "methane.sdf"
    with MoleculeWriter(path) as writer:
        writer.write(z, pos, {"SYNTHETIC": 1}, None, wrong)
    written = evaluate_file(path, tmp_path / "metrics.json")
    assert written["molecule_stability"] == 1.0 and written["generated_bonds"]["molecule_stability"] == 0.0
    assert json.loads((tmp_path / "metrics.json").read_text())["generated_bonds"]["protocol"].startswith("MiDi")

"""QM9's bonds from its SMILES matched to its coordinates (data/qm9_bonds.py): known molecules get the
bonds chemistry gives them, the matching follows the coordinates' atom order, and the data pass the
bond-based (MiDi) stability check they are the reference of."""
import numpy as np
import pytest

from sci_diffusion_molecules.chem.bond_stability import BondVerdicts, atom_valences, largest_fragment_smiles
from sci_diffusion_molecules.chem.bond_types import bond_matrix
from sci_diffusion_molecules.data.qm9 import edm_split
from sci_diffusion_molecules.data.qm9_bonds import distance_connectivity, load_qm9_bonds, match_bonds, train_bond_smiles

ACETONITRILE, BENZENE, FURAN, STRAINED, ZWITTERION = 9, 208, 51, 16146, 263  # rows of QM9Arrays


@pytest.fixture(scope="module")
def bonds():
    """QM9's bonds (computed once into the QM9 cache, about a minute of one core; then read)."""
    return load_qm9_bonds()


def _molecule(qm9, row):
    """``(z, bond classes [n, n], formal charges)`` of one QM9 row, matched afresh (not read from the cache)."""
    z, pos = qm9.molecule(row)
    pairs, orders, charges = match_bonds(z, pos, str(qm9.smiles[row]))
    return z, bond_matrix(len(z), pairs, orders), charges


def _cached(qm9, bonds, row):
    z, _ = qm9.molecule(row)
    return z, bonds.matrix(row, len(z)), bonds.formal_charges[qm9.offsets[row]:qm9.offsets[row + 1]]


def test_the_cache_holds_what_matching_gives(qm9, bonds):
    for row in (ACETONITRILE, BENZENE, FURAN, STRAINED, ZWITTERION, 100_000):
        for cached, fresh in zip(_cached(qm9, bonds, row), _molecule(qm9, row)):
            assert np.array_equal(cached, fresh)


def test_all_but_two_qm9_molecules_match_their_smiles(qm9, bonds):
    assert bonds.matched.sum() == len(qm9) - 2
    assert len(bonds.offsets) == len(qm9) + 1 and len(bonds.formal_charges) == len(qm9.z)
    assert set(np.unique(bonds.orders)) == {1, 2, 3}  # kekulized: no aromatic class in QM9's data


def test_acetonitrile_has_a_carbon_nitrogen_triple_bond(qm9, bonds):
    z, types, _ = _molecule(qm9, ACETONITRILE)
    carbon_nitrogen = types[np.ix_(z == 6, z == 7)]
    assert sorted(carbon_nitrogen.ravel().tolist()) == [0, 3]  # the nitrile C, not the methyl C
    assert (types[z == 1].max(axis=1) == 1).all()  # every H singly bonded


def test_benzene_is_a_kekule_ring_of_alternating_bonds(qm9, bonds):
    z, types, _ = _molecule(qm9, BENZENE)
    ring = types[np.ix_(z == 6, z == 6)]
    assert sorted(ring[np.triu_indices(6, 1)].tolist()) == [0] * 9 + [1, 1, 1, 2, 2, 2]
    assert (np.sort(ring, axis=1)[:, -2:] == [1, 2]).all()  # each carbon: one single, one double in the ring
    assert (atom_valences(types)[z == 6] == 4).all()


def test_the_double_bonds_sit_where_the_coordinates_put_them(qm9, bonds):
    """Furan: the two C=C are the two shortest C-C pairs of the DFT geometry, so the atom mapping follows
    the coordinates, not just the graph."""
    z, pos = qm9.molecule(FURAN)
    _, types, _ = _molecule(qm9, FURAN)
    carbons = np.nonzero(z == 6)[0]
    pairs = [(i, j) for k, i in enumerate(carbons) for j in carbons[k + 1:] if types[i, j]]
    by_length = sorted(pairs, key=lambda p: np.linalg.norm(pos[p[0]] - pos[p[1]]))
    assert [int(types[p]) for p in by_length] == [2, 2, 1]
    assert (types[z == 8].sum() == 2) and types[z == 8].max() == 1  # the ring O: two single bonds


@pytest.mark.parametrize("row", [ACETONITRILE, FURAN, ZWITTERION])
def test_bonds_follow_the_atoms_when_the_coordinates_are_listed_in_another_order(qm9, row):
    """The SMILES' atoms are mapped onto the coordinates' atoms: listing the coordinates in another order
    (QM9 lists heavy atoms first, as the SMILES does) permutes the bond matrix and the charges with them."""
    z, pos = qm9.molecule(row)
    perm = np.random.RandomState(0).permutation(len(z))
    _, types, charges = _molecule(qm9, row)
    pairs, orders, moved_charges = match_bonds(z[perm], pos[perm], str(qm9.smiles[row]))
    assert np.array_equal(bond_matrix(len(z), pairs, orders), types[np.ix_(perm, perm)])
    assert np.array_equal(moved_charges, charges[perm])


def test_charges_of_a_zwitterion_land_on_its_ammonium_and_carboxylate(qm9, bonds):
    z, types, charges = _molecule(qm9, ZWITTERION)
    assert charges.sum() == 0
    assert z[charges == 1].tolist() == [7] and atom_valences(types)[charges == 1].tolist() == [4]
    assert z[charges == -1].tolist() == [8] and atom_valences(types)[charges == -1].tolist() == [1]


def test_long_carbon_pairs_across_strained_rings_are_not_taken_for_bonds(qm9):
    """1.3 x the covalent radii takes a 1.89 A C-C pair across this cage for a bond; the SMILES' bond
    count keeps only the shortest pairs, so the graph matches."""
    z, pos = qm9.molecule(STRAINED)
    assert match_bonds(z, pos, str(qm9.smiles[STRAINED])) is not None
    connected = distance_connectivity(z, pos, 20)
    assert len(connected) == 20 and (connected[:, 0] < connected[:, 1]).all()


def test_a_smiles_that_is_not_the_molecule_does_not_match(qm9):
    z, pos = qm9.molecule(ACETONITRILE)
    assert match_bonds(z, pos, "CC=N") is None  # other hydrogens
    assert match_bonds(z, pos, "C#CC") is None  # other elements
    stretched = pos.copy()
    stretched[z == 1] *= 3  # hydrogens far from every atom: no connectivity for their bonds
    assert match_bonds(z, stretched, str(qm9.smiles[ACETONITRILE])) is None


def test_matched_qm9_molecules_are_stable_under_the_bond_metric(qm9, bonds):
    """The reference floor: every matched molecule, with its bonds and charges, is stable and valid
    (1,000 molecules at random)."""
    rows = np.random.RandomState(0).choice(len(qm9), 1000, replace=False)
    verdicts = BondVerdicts.of(_cached(qm9, bonds, int(r)) for r in rows if bonds.matched[r])
    assert verdicts.molecule_stability == 1.0 and verdicts.validity == 1.0
    assert verdicts.connected == verdicts.molecules


def test_the_bond_novelty_reference_holds_the_train_splits_molecules_by_their_own_bonds(qm9):
    reference = train_bond_smiles()  # computed once into the QM9 cache (about 20 s of one core), then read
    assert 99_000 < len(reference) <= 100_000
    row = int(edm_split(qm9)["train"][0])
    z, types, charges = _molecule(qm9, row)
    assert largest_fragment_smiles(z, types, charges)[0] in reference

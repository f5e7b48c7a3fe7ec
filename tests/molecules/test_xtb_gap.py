"""The GFN2-xTB HOMO-LUMO gap (evaluation/xtb_gap.py) and the shipped line that maps it onto QM9's DFT gap."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sci_diffusion_molecules.data.qm9 import PROPERTY_NAMES, edm_split
from sci_diffusion_molecules.evaluation.xtb_gap import (
    check_gap_scale,
    fit_gap_scale,
    read_gap_scale,
    xtb_gap_ev,
)

from .conftest import needs_tblite


@needs_tblite
def test_the_gap_belongs_to_the_molecule_not_its_frame(qm9):
    z, pos = qm9.molecule(5000)
    moved = pos @ Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix().T + np.array([4.0, -2.0, 9.0])
    assert xtb_gap_ev(z, moved) == pytest.approx(xtb_gap_ev(z, pos), abs=1e-5)


@needs_tblite
def test_stretching_a_bond_closes_the_gap():
    """H2's bonding and antibonding orbitals meet as the bond breaks: the gap at 1.5 A is far below that at 0.74 A."""
    h2 = lambda d: xtb_gap_ev([1, 1], [[0, 0, 0], [d, 0, 0]])  # noqa: E731
    assert h2(0.74) > h2(1.0) > h2(1.5) > 0 and h2(1.5) < 0.6 * h2(0.74)


@needs_tblite
def test_a_molecule_without_a_closed_shell_or_coordinates_has_no_gap():
    methyl = [[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]]
    assert xtb_gap_ev([6, 1, 1, 1], methyl) is None  # 9 electrons
    assert xtb_gap_ev([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [np.nan, 0.9, 0]]) is None


def test_the_line_is_recovered_and_checked_exactly_on_exact_data():
    xtb = np.linspace(4.0, 14.0, 20)
    slope, intercept = fit_gap_scale(xtb, 0.5 * xtb + 4.25)
    assert (slope, intercept) == (pytest.approx(0.5), pytest.approx(4.25))
    r, mae = check_gap_scale(slope, intercept, xtb[::3], 0.5 * xtb[::3] + 4.25 + 0.1)
    assert r == pytest.approx(1.0) and mae == pytest.approx(0.1)


@needs_tblite
def test_the_shipped_line_maps_real_molecules_as_well_as_it_says(qm9):
    """The first 40 test molecules (among the 2,000 it was checked on): their mapped gaps' MAE against DFT is of the
    size the file records, and far below the unmapped gap's."""
    scale = read_gap_scale()
    assert scale.check_molecules == 2000 and scale.fit_molecules == 2000
    rows = edm_split(qm9)["test"][:40]
    xtb = np.array([xtb_gap_ev(*qm9.molecule(int(r))) for r in rows])
    dft = qm9.properties[rows, PROPERTY_NAMES.index("gap")]
    mapped = np.abs(np.array([scale.to_dft(g) for g in xtb]) - dft).mean()
    assert mapped < 1.5 * scale.mae_ev and mapped < 0.5 * np.abs(xtb - dft).mean()


def test_a_file_that_is_not_a_gap_scale_is_refused_in_one_sentence(tmp_path):
    bad = tmp_path / "scale.json"
    bad.write_text('{"slope": 1}')
    with pytest.raises(ValueError, match="is not an xTB gap scale"):
        read_gap_scale(bad)

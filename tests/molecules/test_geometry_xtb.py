"""The GFN2-xTB geometry check (evaluation/geometry.py) and ``evaluate molecules --xtb``: the energy a molecule
gives up when relaxed, in kcal/mol, against numbers computed with tblite directly."""
import json
import sys

import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.files import MoleculeWriter
from sci_diffusion_molecules.evaluation import geometry
from sci_diffusion_molecules.evaluation.geometry import (
    FAILED_CALCULATION,
    NON_FINITE,
    NOT_CONVERGED,
    ODD_ELECTRONS,
    REASONS,
    qm9_relaxation_floor,
    relax_molecule,
    relaxation_summary,
)

from .conftest import needs_tblite

WATER_Z = np.array([8, 1, 1])
METHANE_Z = np.array([6, 1, 1, 1, 1])
METHANE = 0.63 * np.array([[0, 0, 0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)  # C-H 1.09 Å
METHYL_Z = np.array([6, 1, 1, 1])
METHYL = np.array([[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]])


def water(oh_first: float = 0.96, oh_second: float = 0.96, angle_deg: float = 104.5) -> np.ndarray:
    """[3, 3] Angstrom: O at the origin, the two hydrogens at the given O-H distances and H-O-H angle."""
    angle = np.radians(angle_deg)
    return np.array([[0, 0, 0], [oh_first, 0, 0], [oh_second * np.cos(angle), oh_second * np.sin(angle), 0]])


def tblite_energy(z, positions_angstrom) -> float:
    """GFN2-xTB single-point energy, Hartree, straight from tblite (positions converted to Bohr here)."""
    # inside: this module must import where the [xtb] extra is absent
    from tblite.interface import Calculator
    from threadpoolctl import threadpool_limits

    calculator = Calculator("GFN2-xTB", np.asarray(z), np.asarray(positions_angstrom) / 0.529177210903,
                            charge=0.0, uhf=0, logger=lambda message: None)
    calculator.set("verbosity", 0)
    with threadpool_limits(limits=1):  # one thread, as relax_molecule runs: fast beside busy cores
        return float(calculator.singlepoint().get("energy"))


@needs_tblite
def test_a_stretched_bond_drops_by_the_single_point_energy_difference_in_kcal_per_mol():
    stretched = water(oh_first=1.30)
    result = relax_molecule(WATER_Z, stretched)
    assert result.scored and result.gradient_norm <= geometry.GRADIENT_NORM_TOLERANCE
    independent = (tblite_energy(WATER_Z, stretched) - tblite_energy(WATER_Z, result.relaxed_positions)) * 627.509474
    assert result.drop_kcal_per_mol > 10  # a 0.34 Å stretch of an O-H bond costs tens of kcal/mol
    assert result.drop_kcal_per_mol == pytest.approx(independent, abs=1e-4)
    assert result.drop_kcal_per_mol == pytest.approx((result.energy_start - result.energy_relaxed) * 627.509474)


@needs_tblite
def test_the_relaxed_geometry_is_in_angstrom_and_is_a_minimum_from_any_start():
    result = relax_molecule(WATER_Z, water(oh_first=1.30, angle_deg=95))
    positions = result.relaxed_positions
    bonds = np.linalg.norm(positions[1:] - positions[0], axis=1)
    assert bonds == pytest.approx([0.96, 0.96], abs=0.01)  # GFN2-xTB's water: O-H 0.96 Å
    other_start = relax_molecule(WATER_Z, water(oh_first=0.90, oh_second=1.05, angle_deg=115))
    assert abs(result.energy_relaxed - other_start.energy_relaxed) * 627.509474 < 0.01


@needs_tblite
def test_a_relaxed_geometry_drops_by_about_nothing_when_relaxed_again():
    first = relax_molecule(METHANE_Z, METHANE * 1.1)
    again = relax_molecule(METHANE_Z, first.relaxed_positions)
    assert first.drop_kcal_per_mol > 1 and again.scored
    assert abs(again.drop_kcal_per_mol) < 0.01


@needs_tblite
def test_an_odd_electron_molecule_is_unscorable_not_a_radical():
    result = relax_molecule(METHYL_Z, METHYL)
    assert result.reason == ODD_ELECTRONS and result.drop_kcal_per_mol is None and result.energy_start is None
    assert relax_molecule(METHYL_Z, METHYL, charge=1).scored  # CH3+ has 8 electrons


@needs_tblite
def test_failed_and_unconverged_calculations_are_named_and_never_raise(monkeypatch):
    atoms_on_top = np.array([[0, 0, 0], [0, 0, 0], [0.9, 0, 0]], dtype=float)
    assert relax_molecule(WATER_Z, atoms_on_top).reason == FAILED_CALCULATION
    assert relax_molecule(WATER_Z, water(oh_first=1.3), max_steps=2).reason == NOT_CONVERGED
    assert relax_molecule(WATER_Z, np.full((3, 3), np.nan)).reason == NON_FINITE

    class NanEnergy:
        def get(self, key):
            return np.nan if key == "energy" else np.zeros((3, 3))

    class NanCalculator:
        def __init__(self, *args, **kwargs): pass
        def set(self, *args): pass
        def update(self, positions): pass
        def singlepoint(self, previous=None): return NanEnergy()

    monkeypatch.setattr(geometry, "tblite_calculator_class", lambda: NanCalculator)
    assert relax_molecule(WATER_Z, water()).reason == NON_FINITE


@needs_tblite
def test_the_summary_takes_median_and_p90_over_scored_molecules_and_counts_each_reason():
    molecules = [(WATER_Z, water(oh_first=1.3)), (METHYL_Z, METHYL), (METHANE_Z, METHANE * 1.1),
                 (WATER_Z, water(oh_first=1.1)), (WATER_Z, water())]
    drops = [relax_molecule(z, pos).drop_kcal_per_mol for z, pos in molecules if z.sum() % 2 == 0]
    summary = relaxation_summary(molecules)
    assert summary["scored"] == 4 and summary["molecules"] == 5 and summary["unscorable_fraction"] == 0.2
    assert summary["unscorable"] == {reason: int(reason == ODD_ELECTRONS) for reason in REASONS}
    assert summary["median_drop_kcal_per_mol"] == pytest.approx(np.median(drops), abs=1e-3)
    assert summary["p90_drop_kcal_per_mol"] == pytest.approx(np.percentile(drops, 90), abs=1e-3)
    assert summary["seconds_per_molecule"] > 0 and summary["cpu_seconds_per_molecule"] > 0
    assert relaxation_summary(molecules, max_molecules=2)["molecules"] == 2


@needs_tblite
def test_real_qm9_geometries_sit_near_a_gfn2_minimum():
    floor = qm9_relaxation_floor(8)
    assert floor["scored"] == 8  # QM9 is neutral and closed-shell
    assert 0.3 < floor["median_drop_kcal_per_mol"] < 3.0  # issue 28: about 1.3 kcal/mol


def write_samples(path) -> None:
    """A small SDF: a stretched water, a methyl radical and methane."""
    with MoleculeWriter(path) as writer:
        writer.write(WATER_Z, water(oh_first=1.3))
        writer.write(METHYL_Z, METHYL)
        writer.write(METHANE_Z, METHANE)


@needs_tblite
def test_evaluate_with_xtb_adds_the_geometry_check_and_says_which_molecules(tmp_path, capsys):
    samples, out = tmp_path / "s.sdf", tmp_path / "m.json"
    write_samples(samples)
    assert main(["evaluate", "molecules", "--samples", str(samples), "--out", str(out), "--no-novelty",
                 "--xtb", "--xtb-max", "2"]) == 0
    check = json.loads(out.read_text())["xtb_geometry"]
    assert check["subsample"] == "the first 2 of 3 molecules" and check["molecules"] == 2 and check["scored"] == 1
    assert check["unscorable"][ODD_ELECTRONS] == 1 and check["median_drop_kcal_per_mol"] > 10
    assert json.loads(capsys.readouterr().out)["xtb_geometry"]["subsample"] == "the first 2 of 3 molecules"


def test_evaluate_with_xtb_refuses_in_one_sentence_without_tblite(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite", None)  # None in sys.modules makes ``import tblite`` fail
    monkeypatch.setitem(sys.modules, "tblite.interface", None)
    samples = tmp_path / "s.sdf"
    write_samples(samples)
    assert main(["evaluate", "molecules", "--samples", str(samples), "--out", str(tmp_path / "m.json"), "--xtb"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'sci-diffusion[xtb]'" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_xtb_max_without_xtb_is_refused(tmp_path, capsys):
    assert main(["evaluate", "molecules", "--samples", "s.sdf", "--out", str(tmp_path / "m.json"),
                 "--xtb-max", "5"]) == 2
    assert "--xtb-max N needs --xtb" in capsys.readouterr().err

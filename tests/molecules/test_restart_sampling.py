"""``sample molecules --restarts K`` and ``--polish N``: restart sampling from the end (``sci_diffusion.restart``) and
polishing (``sci_diffusion.polish``) for the bundled bond-aware default and the EDM-style model: each molecule stays its
own (the same whatever its batch, from its own seed), the restarts move it, polishing moves its atoms and keeps its
bonds, the records say how it was drawn, and bad settings or a distilled student are refused in one sentence."""
import json

import numpy as np
import pytest
import torch

from sci_diffusion.checkpoints import bundled_checkpoint, load_module
from sci_diffusion.cli import main
from sci_diffusion.polish import Polish
from sci_diffusion.restart import Restarts
from sci_diffusion_molecules.generation.bond_sampling import draw_molecules

from .test_consistency_cli import QUIET, refusal, student, teacher  # noqa: F401 (fixtures)

RESTARTS = Restarts(count=1, t_max=0.15, steps=3)


@pytest.fixture(scope="module")
def default_model():
    return load_module(bundled_checkpoint("sci_diffusion_molecules", "unconditional"), domain="molecules")


@pytest.mark.parametrize("kind", ["bonds", "edm"])
def test_a_restarted_molecule_is_its_own_whatever_its_batch_and_moves(kind, default_model, bundled_model):
    model = default_model if kind == "bonds" else bundled_model

    def draw(batch_size, restarts=RESTARTS):
        return list(draw_molecules(model, [14, 9], "dpmpp2m_sde", 10, torch.Generator().manual_seed(5), batch_size,
                                   precision="fp32", restarts=restarts))

    one_by_one, together, plain = draw(1), draw(2), draw(2, None)
    for a, b, c in zip(one_by_one, together, plain):
        assert np.array_equal(a[0], b[0]) and np.abs(a[1] - b[1]).max() < 1e-3  # Angstrom; kernels may round apart
        assert np.abs(b[1] - c[1]).max() > 1e-2  # the restart moved the atoms
    assert all(np.array_equal(a[3], b[3]) for a, b in zip(one_by_one, together)) if kind == "bonds" else True


def test_the_cli_restarts_records_them_and_refuses_bad_settings(tmp_path, capsys):
    out = tmp_path / "r.sdf"
    base = ["sample", "molecules", "--num", "2", "--steps", "4", "--out", str(out), *QUIET]
    assert main([*base, "--restarts", "2", "--restart-time", "0.2", "--restart-steps", "2"]) == 0
    summary = json.loads(out.with_suffix(".sdf.json").read_text())
    assert summary["restarts"] == "2 from t = 0.2, 2 steps each" and summary["written"] == 2
    assert out.read_text().count("<restarts>  \n2 from t = 0.2, 2 steps each\n") == 2
    bad = tmp_path / "bad"
    base = ["sample", "molecules", "--num", "2", "--steps", "4", "--out", str(bad / "r.sdf"), *QUIET]
    assert "whole number >= 0" in refusal([*base, "--restarts", "-1"], capsys)
    assert "time in (0, 1]" in refusal([*base, "--restarts", "1", "--restart-time", "0"], capsys)
    assert "starts in (1/T, 1]" in refusal([*base, "--restarts", "1", "--restart-time", "0.0005"], capsys)
    assert "--restart-steps must be positive" in refusal([*base, "--restarts", "1", "--restart-steps", "0"], capsys)
    assert not bad.exists() or list(bad.iterdir()) == []


def test_a_distilled_student_takes_no_restarts(student, tmp_path, capsys):  # noqa: F811 (fixture)
    err = refusal(["sample", "molecules", "--ckpt", str(student), "--num", "1", "--atoms", "5", "--steps", "2",
                   "--sampler", "consistency", "--restarts", "1", "--out", str(tmp_path / "s.sdf"), *QUIET], capsys)
    assert "takes no restarts or polishing; ask them of its teacher" in err


def test_polishing_moves_the_atoms_a_little_and_keeps_the_bonds_and_elements(default_model):
    def draw(polish):
        return list(draw_molecules(default_model, [14, 9], "dpmpp2m_sde", 10, torch.Generator().manual_seed(5), 2,
                                   precision="fp32", polish=polish))  # the coordinates only (columns=3)

    plain, polished = draw(None), draw(Polish(iterations=3, t=0.02))
    for a, b in zip(plain, polished):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[3], b[3])  # elements and generated bonds kept
        shift = np.abs(a[1] - b[1]).max()
        assert 1e-3 < shift < 0.5, shift  # Angstrom: it moved the atoms, and only a little
        assert np.abs(b[1].mean(0)).max() < 1e-4  # zero centre of mass kept


def test_the_cli_polishes_records_it_and_refuses_bad_settings(tmp_path, capsys):
    out = tmp_path / "p.sdf"
    base = ["sample", "molecules", "--num", "2", "--steps", "4", "--out", str(out), *QUIET]
    assert main([*base, "--polish", "3", "--polish-time", "0.05"]) == 0
    assert json.loads(out.with_suffix(".sdf.json").read_text())["polish"] == "3 at t = 0.05"
    bad = tmp_path / "bad"
    base = ["sample", "molecules", "--num", "2", "--steps", "4", "--out", str(bad / "p.sdf"), *QUIET]
    assert "whole number >= 0" in refusal([*base, "--polish", "-1"], capsys)
    assert "time in (0, 1)" in refusal([*base, "--polish", "2", "--polish-time", "1"], capsys)
    assert not bad.exists() or list(bad.iterdir()) == []

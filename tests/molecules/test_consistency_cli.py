"""``sample molecules --sampler consistency``: the CLI samples a consistency-distilled bond-aware student at its own
step count with the consistency sampler (``sci_diffusion.consistency``, ``samplers.consistency``) and records it,
and refuses in one sentence (exit 2) another step count or sampler for the student, and the consistency sampler for
every model that was not consistency-distilled (``distillation.distilled_times``), for conformers and inpainting too.
The checkpoints are a few steps old: they test plumbing, not quality."""
import json

import pytest
import torch

from sci_diffusion import samplers
from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion.names import DISTILLED_SAMPLER_NAMES, SAMPLER_NAMES
from sci_diffusion_molecules.chem.files import read_generated_bonds
from sci_diffusion_molecules.data.bond_datamodule import QM9BondDataModule
from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion

from .conftest import fit_tiny

STEPS, INTERVALS = 2, 4  # the student's sampling steps, on every second point of its 4-interval training grid
QUIET = ["--no-novelty", "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An ordinary bond-aware model trained 3 steps on 16 QM9 molecules."""
    model = BondMoleculeDiffusion(hidden=16, layers=2, val_molecules=0)
    return fit_tiny(model, QM9BondDataModule(batch_size=4, limit=16), tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    """Its consistency student (2 training steps), as LightningCLI passes the options."""
    model = BondMoleculeDiffusion(hidden=16, layers=2, val_molecules=0, distill_from=str(teacher),
                                  distill_method="consistency", distill_intervals=INTERVALS, distill_steps=STEPS,
                                  init_from=None, teacher_times=None)
    return fit_tiny(model, QM9BondDataModule(batch_size=4, limit=16), tmp_path_factory.mktemp("student"), steps=2)


def refusal(argv, capsys) -> str:
    """The one line ``sci-diffusion`` prints for a refused command (exit status 2)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sci-diffusion: error: ") and "\n" not in err, err
    return err


def test_the_cli_offers_the_consistency_sampler_beside_the_ordinary_ones():
    """The names the CLI offers are the core's: every model's samplers (SAMPLERS, which the tests that loop over
    every sampler use) and, apart, the distilled students' (DISTILLED_SAMPLERS)."""
    assert tuple(samplers.SAMPLERS) == SAMPLER_NAMES and "consistency" not in SAMPLER_NAMES
    assert tuple(samplers.DISTILLED_SAMPLERS) == DISTILLED_SAMPLER_NAMES == ("consistency",)


def test_a_consistency_student_samples_through_the_cli_with_its_sampler_on_its_grid(student, tmp_path, monkeypatch):
    loaded = load_module(str(student), domain="molecules")
    assert loaded.distilled_sampler == "consistency" and len(loaded.sampling_times) == STEPS + 1
    grids = []

    def spy(*args, **kwargs):  # the consistency sampler, watched: which grid the CLI hands it
        grids.append(args[3].clone())
        return samplers.consistency(*args, **kwargs)

    monkeypatch.setitem(samplers.DISTILLED_SAMPLERS, "consistency", spy)
    out = tmp_path / "student.sdf"
    assert main(["sample", "molecules", "--ckpt", str(student), "--num", "3", "--atoms", "5", "--steps", str(STEPS),
                 "--sampler", "consistency", "--out", str(out), *QUIET]) == 0
    assert len(grids) == 1 and torch.equal(grids[0], loaded.sampling_times)  # one batch, the student's own grid
    bonds = read_generated_bonds(out)
    assert len(bonds) == 3 and all(b.shape == (5, 5) and (b == b.T).all() for b in bonds)
    summary = json.loads(out.with_suffix(".sdf.json").read_text())
    assert (summary["sampler"], summary["steps"], summary["model"], summary["written"]) == ("consistency", STEPS,
                                                                                           "bonds", 3)
    assert out.read_text().count("<sampler>  \nconsistency\n") == 3  # every record says how it was drawn


def test_the_student_refuses_another_step_count_or_sampler_in_one_sentence(student, tmp_path, capsys):
    out = tmp_path / "x.sdf"
    base = ["sample", "molecules", "--ckpt", str(student), "--num", "2", "--atoms", "5", "--out", str(out), *QUIET]
    err = refusal([*base, "--sampler", "consistency", "--steps", "3"], capsys)
    assert f"distilled for {STEPS} steps; sample it with --steps {STEPS}, not 3." in err
    err = refusal([*base, "--sampler", "ddim", "--steps", str(STEPS)], capsys)
    assert "distilled for the consistency sampler; sample it with --sampler consistency, not ddim." in err
    assert list(tmp_path.iterdir()) == []  # no file, not even an empty .partial


def test_ordinary_models_refuse_the_consistency_sampler_in_one_sentence(teacher, tiny_checkpoint, tmp_path, capsys):
    """The bond-aware teacher and an EDM-style model: distilled_times refuses before any molecule is written;
    conformers (--smiles) and inpainting (--fix-atoms) refuse it with the other flags, before a model is read."""
    out = tmp_path / "x.sdf"
    for ckpt in (teacher, tiny_checkpoint):
        err = refusal(["sample", "molecules", "--ckpt", str(ckpt), "--num", "2", "--atoms", "5", "--steps", "2",
                       "--sampler", "consistency", "--out", str(out), *QUIET], capsys)
        assert "The consistency sampler samples a consistency-distilled student only; choose one of " \
               f"{', '.join(SAMPLER_NAMES)} for this model." in err
    assert not out.exists()
    for flags in (["--smiles", "CCO"], ["--fix-atoms", str(tmp_path / "fragment.sdf"), "--atoms", "9"]):
        err = refusal(["sample", "molecules", "--ckpt", str(tiny_checkpoint), *flags, "--sampler", "consistency",
                       "--out", str(out)], capsys)
        assert "The consistency sampler samples a consistency-distilled student only; --smiles and --fix-atoms" in err

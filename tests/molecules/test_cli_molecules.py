"""`sci-diffusion sample molecules` and `evaluate molecules` as a user runs them."""
import json

import pytest
import torch

from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.files import read_molecules


def test_sample_writes_a_tagged_sdf_that_reads_back(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from sci_diffusion import precision

    monkeypatch.setattr(precision, "has_fast_bf16", lambda device_type="cpu": False)  # a CPU without bf16 instructions
    out = tmp_path / "mols.sdf"
    rc = main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "7", "--steps", "3", "--seed", "5",
               "--batch-size", "3", "--out", str(out), "--png", str(tmp_path / "grid.png"), "--no-progress"])
    assert rc == 0
    mols = read_molecules(out)
    assert len(mols) == 7 and not (tmp_path / "mols.sdf.partial").exists()
    props = mols[0][2]
    assert props["SYNTHETIC"] == "1" and props["sampler"] == "dpmpp2m_sde" and props["steps"] == "3" and props["seed"] == "5"
    assert props["precision"] == "fp32"  # --precision auto, resolved for this CPU and recorded as what ran
    assert len(props["checkpoint_sha256"]) == 16
    assert (tmp_path / "grid.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "mols.sdf.json").read_text())
    assert summary["written"] == 7 and summary["molecules_per_second"] > 0
    assert props["spacing"] == summary["spacing"] == "quadratic"  # dpmpp2m_sde's own grid
    assert summary["precision"] == "fp32"


def test_spacing_flag_changes_the_time_grid_and_is_recorded(tiny_checkpoint, tmp_path):
    """--spacing reaches the sampler: the same seed on another grid gives other molecules."""
    drawn = {}
    for spacing in ("quadratic", "cubic", "logsnr"):
        out = tmp_path / f"{spacing}.xyz"
        assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "2", "--steps", "3", "--atoms", "6",
                     "--spacing", spacing, "--out", str(out), "--no-progress"]) == 0
        assert json.loads((tmp_path / f"{spacing}.xyz.json").read_text())["spacing"] == spacing
        drawn[spacing] = read_molecules(out)
    for other in ("cubic", "logsnr"):
        assert all(abs(a[1] - b[1]).max() > 1e-3 for a, b in zip(drawn["quadratic"], drawn[other]))


def test_same_seed_gives_the_same_molecules(tiny_checkpoint, tmp_path):
    for name in ("a.xyz", "b.xyz"):
        assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "3", "--steps", "2",
                     "--atoms", "6", "--out", str(tmp_path / name), "--no-progress"]) == 0
    a, b = read_molecules(tmp_path / "a.xyz"), read_molecules(tmp_path / "b.xyz")
    assert all(len(z) == 6 for z, _, _ in a)
    for (za, pa, _), (zb, pb, _) in zip(a, b):
        assert (za == zb).all() and abs(pa - pb).max() < 1e-6


def test_evaluate_reports_the_edm_metrics_of_molecules_whose_verdicts_are_known(qm9, tmp_path):
    """QM9's methane, ammonia and water (every atom at its valence: stable) and methane blown up three times (C-H
    3.3 A: no bond, every atom unstable): 3 of 4 molecules and 12 of 17 atoms are stable."""
    from sci_diffusion_molecules.chem.files import MoleculeWriter

    samples = tmp_path / "known.xyz"
    with MoleculeWriter(samples) as writer:
        for row in range(3):
            writer.write(*qm9.molecule(row), {})
        z, pos = qm9.molecule(0)
        writer.write(z, 3.0 * (pos - pos.mean(0)), {})
    assert main(["evaluate", "molecules", "--samples", str(samples), "--out", str(tmp_path / "m.json"),
                 "--no-novelty"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_molecules"] == 4 and metrics["molecule_stability"] == pytest.approx(3 / 4)
    assert metrics["atom_stability"] == pytest.approx(12 / 17)


@pytest.mark.parametrize("argv, message", [
    (["sample", "molecules", "--ckpt", "missing.ckpt", "--out", "x.sdf"], "does not exist"),
    (["sample", "molecules", "--out", "x.pdb"], "must end in .sdf or .xyz"),
    (["evaluate", "molecules", "--samples", "nothing.sdf", "--out", "m.json"], "does not exist"),
])
def test_bad_input_gets_one_sentence_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_medical_checkpoint_is_refused_by_the_molecules_verb(tmp_path, capsys):
    ckpt = tmp_path / "medical.ckpt"
    torch.save({"state_dict": {}, "sci_diffusion": {"domain": "medical", "module_class": "x:y", "config": {}}}, ckpt)
    assert main(["sample", "molecules", "--ckpt", str(ckpt), "--out", str(tmp_path / "x.sdf")]) == 2
    assert "belongs to the 'medical' domain" in capsys.readouterr().err
    assert not (tmp_path / "x.sdf").exists()


def test_rdkit_bond_perception_is_available_for_the_sdf(tiny_checkpoint, tmp_path):
    out = tmp_path / "rd.sdf"
    assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "2", "--steps", "2",
                 "--bonds", "rdkit", "--out", str(out), "--no-progress"]) == 0
    assert len(read_molecules(out)) == 2


def test_an_output_under_a_file_is_refused_before_any_sampling(tmp_path, capsys, sampling_forbidden):
    from sci_diffusion.cli import main

    blocker = tmp_path / "some_file.nii.gz"
    blocker.write_text("not a folder")
    assert main(["sample", "molecules", "--num", "2", "--no-progress", "--out", str(blocker / "y.sdf")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_a_diverged_sample_counts_as_a_failure_and_stays_in_the_denominator(tiny_checkpoint, tmp_path, monkeypatch):
    import csv

    import numpy as np

    import sci_diffusion_molecules.cli.sample as sample_verb

    real = sample_verb.draw_molecules

    def second_diverges(*args, **kwargs):
        for i, (z, pos) in enumerate(real(*args, **kwargs)):
            yield z, (pos * np.nan if i == 1 else pos)

    monkeypatch.setattr(sample_verb, "draw_molecules", second_diverges)  # where the verb looks it up
    out = tmp_path / "m.sdf"
    assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "4", "--steps", "2", "--no-progress",
                 "--no-novelty", "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "m.sdf.json").read_text())
    assert summary["written"] == 3 and summary["failed_non_finite"] == 1 and len(read_molecules(out)) == 3
    with open(tmp_path / "m.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and rows[1]["failed"] == "1" and rows[1]["stable"] == "0" and rows[1]["valid"] == "0"
    assert summary["valid_fraction"] == sum(int(r["valid"]) for r in rows) / 4


def test_a_seed_draws_the_reference_molecules_of_the_bundled_edm_model(tmp_path):
    """The seeded generator draws the atom counts first, then one seed per molecule: a change of that order (or
    of the draws themselves) changes these reference molecules of the bundled EDM model (float32, 3 steps). Two
    intra-op threads, as they were recorded with: a 3-step molecule is far from settled, so another thread count's
    rounding (OMP_NUM_THREADS=1) moves its atoms by more than the tolerance."""
    out = tmp_path / "ref.sdf"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        status = main(["sample", "molecules", "--model", "edm", "--num", "4", "--steps", "3", "--seed", "0",
                       "--precision", "fp32",
                       "--no-novelty", "--no-progress", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    mols = read_molecules(out)
    assert [len(z) for z, _, _ in mols] == [23, 20, 18, 22]
    assert mols[0][0][:8].tolist() == [6, 9, 9, 8, 1, 9, 9, 8]
    torch.testing.assert_close(torch.tensor(mols[0][1][0]), torch.tensor([-4.6461, -1.0004, 5.7275], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.tensor(mols[3][1][-1]), torch.tensor([3.3883, -6.3676, 16.8618], dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_the_precision_flag_offers_the_samplers_precisions():
    from sci_diffusion.precision import PRECISION_CHOICES as CORE_CHOICES
    from sci_diffusion_molecules.cli.arguments import PRECISION_CHOICES

    assert PRECISION_CHOICES == CORE_CHOICES  # named twice so that --help needs no torch

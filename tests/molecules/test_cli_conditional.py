"""`sci-diffusion sample molecules` with a condition, guidance and the candidates table, as a user runs it."""
import csv
import json

import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_molecules.chem.files import read_molecules


def sample(argv, conditional_checkpoint, classifier_checkpoint, out):
    return main(["sample", "molecules", "--ckpt", str(conditional_checkpoint), "--classifier", str(classifier_checkpoint),
                 "--num", "6", "--steps", "3", "--batch-size", "4", "--no-progress", "--no-novelty",
                 "--out", str(out), *argv])


def test_a_gap_target_reaches_every_record_the_candidates_table_and_the_summary(
        conditional_checkpoint, classifier_checkpoint, tmp_path, capsys):
    out = tmp_path / "cands.sdf"
    assert sample(["--condition", "gap=6.5", "--guidance", "2"], conditional_checkpoint, classifier_checkpoint, out) == 0
    mols = read_molecules(out)
    assert len(mols) == 6
    props = mols[0][2]
    assert props["target_gap"] == "6.5" and props["unit_gap"] == "eV" and props["guidance"] == "2.0"
    assert float(props["predicted_gap"]) == float(props["predicted_gap"])  # a number, not NaN
    with open(tmp_path / "cands.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["index"] for r in rows] == [str(i) for i in range(6)]
    assert set(rows[0]) == {"index", "smiles", "stable", "valid", "novel", "failed", "qed", "sa", "rings", "aromatic_rings",
                            "charged_atoms", "net_charge", "target_gap [eV]", "predicted_gap [eV]"}
    summary = json.loads((tmp_path / "cands.sdf.json").read_text())
    expected = sum(abs(float(r["predicted_gap [eV]"]) - 6.5) for r in rows) / 6
    assert summary["mae_against_target"]["gap"] == pytest.approx(expected, rel=1e-4)
    printed = capsys.readouterr().out
    assert "MAE of the classifier's gap against the target" in printed and "target_gap [eV]" in printed


def test_condition_from_db_draws_sizes_and_targets_jointly_and_reproducibly(
        conditional_checkpoint, classifier_checkpoint, tmp_path):
    for name in ("a.sdf", "b.sdf"):
        assert sample(["--condition-from", "db", "--seed", "3"], conditional_checkpoint, classifier_checkpoint,
                      tmp_path / name) == 0
    a, b = read_molecules(tmp_path / "a.sdf"), read_molecules(tmp_path / "b.sdf")
    targets = {m[2]["target_gap"] for m in a}
    assert len(targets) > 1  # one target per molecule, not one for all
    for (za, pa, qa), (zb, pb, qb) in zip(a, b):
        assert qa["target_gap"] == qb["target_gap"] and len(za) == len(zb) and abs(pa - pb).max() < 1e-6


def test_gradient_guidance_moves_what_the_same_seed_draws_and_reproduces(
        conditional_checkpoint, classifier_checkpoint, regressor_checkpoint, tmp_path):
    """The same seed with and without gradient guidance: the same sizes, other positions (the guidance acts); the
    guided run again: the same positions (it is seeded). Molecules are matched by their index (a tiny test model
    guided hard may lose one to non-finite coordinates; it is then missing from both guided runs)."""
    argv = ["--condition", "gap=6.5", "--seed", "4"]
    guided = [*argv, "--gradient-guidance", "2", "--regressor", str(regressor_checkpoint)]
    for name, flags in (("plain.sdf", argv), ("g.sdf", guided), ("again.sdf", guided)):
        assert sample(flags, conditional_checkpoint, classifier_checkpoint, tmp_path / name) == 0
    plain, first, again = ({m[2]["index"]: m for m in read_molecules(tmp_path / n)}
                           for n in ("plain.sdf", "g.sdf", "again.sdf"))
    assert set(first) == set(again) and len(first) >= 4 and set(first) <= set(plain)
    for i in first:
        assert len(plain[i][0]) == len(first[i][0]) and np.abs(plain[i][1] - first[i][1]).max() > 1e-3
        assert np.array_equal(first[i][1], again[i][1])
    summary = json.loads((tmp_path / "g.sdf.json").read_text())
    assert summary["gradient_guidance"] == 2.0 and summary["regressor"] == str(regressor_checkpoint)


def test_a_guidance_interval_is_recorded_with_each_molecule_and_in_the_summary(
        conditional_checkpoint, classifier_checkpoint, tmp_path):
    out = tmp_path / "i.sdf"
    argv = ["--condition", "gap=6.5", "--guidance", "3", "--guidance-interval", "0.1,0.5"]
    assert sample(argv, conditional_checkpoint, classifier_checkpoint, out) == 0
    assert {m[2]["guidance_interval"] for m in read_molecules(out)} == {"0.1,0.5"}
    assert json.loads((tmp_path / "i.sdf.json").read_text())["guidance_interval"] == "0.1,0.5"


def test_a_target_outside_the_training_range_warns_but_samples(conditional_checkpoint, classifier_checkpoint, tmp_path,
                                                                capsys):
    assert sample(["--condition", "gap=40"], conditional_checkpoint, classifier_checkpoint, tmp_path / "w.sdf") == 0
    err = capsys.readouterr().err
    assert "sci-diffusion: warning: gap=40 eV lies outside the training range" in err and "Traceback" not in err
    assert len(read_molecules(tmp_path / "w.sdf")) == 6


@pytest.mark.parametrize("argv, message", [
    (["--condition", "colour=3"], "Unknown property 'colour'"),
    (["--condition", "homo=-6"], "conditioned on gap, not on 'homo'"),
    (["--condition", "gap=nan"], "finite number"),
    (["--condition", "gap=wide"], "not a number"),
    (["--condition", "gap=6.5", "--gradient-guidance", "2"], "needs --regressor"),
    (["--guidance", "2"], "Guidance needs a target"),
    (["--condition", "gap=6.5", "--guidance", "-3"], "--guidance -3 is negative"),
    (["--condition", "gap=6", "--condition-from", "db"], "not both"),
    (["--condition", "gap=6.5", "--guidance", "2", "--guidance-interval", "0.5,0.2"], "two diffusion times LO,HI"),
    (["--condition", "gap=6.5", "--guidance", "2", "--guidance-interval", "late"], "two diffusion times LO,HI"),
    (["--condition", "gap=6.5", "--guidance", "2", "--guidance-interval", "0,nan"], "two diffusion times LO,HI"),
    (["--condition", "gap=6.5", "--guidance-interval", "0,0.5"], "a --guidance weight other than 0 and 1"),
])
def test_bad_conditions_get_one_sentence_and_exit_2_and_write_nothing(
        argv, message, conditional_checkpoint, classifier_checkpoint, tmp_path, capsys):
    out = tmp_path / "x.sdf"
    assert sample(argv, conditional_checkpoint, classifier_checkpoint, out) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_condition_for_an_unconditional_checkpoint_is_refused(tmp_path, capsys, classifier_checkpoint):
    from sci_diffusion_molecules.data.datamodule import QM9DataModule
    from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion
    from tests.molecules.conftest import fit_tiny

    plain = fit_tiny(MoleculeDiffusion(hidden=16, layers=2, ema_decay=0, val_molecules=0),
                     QM9DataModule(batch_size=16, limit=32), tmp_path / "plain", steps=1)
    out = tmp_path / "x.sdf"
    assert sample(["--condition", "gap=6.5"], plain, classifier_checkpoint, out) == 2
    assert "is not conditioned on any property" in capsys.readouterr().err and not out.exists()


def test_a_regressor_where_a_classifier_belongs_is_refused(conditional_checkpoint, regressor_checkpoint, tmp_path, capsys):
    assert sample(["--condition", "gap=6.5"], conditional_checkpoint, regressor_checkpoint, tmp_path / "x.sdf") == 2
    assert "is not a property classifier checkpoint" in capsys.readouterr().err


def test_evaluate_scores_the_targets_written_by_a_conditional_run(conditional_checkpoint, classifier_checkpoint, tmp_path):
    out = tmp_path / "c.sdf"
    assert sample(["--condition", "gap=6.5"], conditional_checkpoint, classifier_checkpoint, out) == 0
    assert main(["evaluate", "molecules", "--samples", str(out), "--out", str(tmp_path / "m.json"), "--no-novelty",
                 "--classifier", str(classifier_checkpoint)]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    summary = json.loads((tmp_path / "c.sdf.json").read_text())
    assert metrics["property_mae"]["gap"] == pytest.approx(summary["mae_against_target"]["gap"], rel=1e-4)
    assert metrics["property_scored"]["gap"] == 6

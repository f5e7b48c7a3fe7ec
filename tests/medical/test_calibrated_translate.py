"""Issue 30 §2 through the CLI: translate writes its K samples, evaluate mri2ct scores them against the calibrated
reference for that K and fits a split-conformal calibration, and translate --interval writes calibrated bounds."""
import json

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion.cli import main

from .conftest import run_expecting_error


@pytest.fixture(scope="module")
def predictions(phantom_dir, residual_ckpt, tmp_path_factory):
    """Both phantoms translated by the tiny residual model, K = 2, one DDIM step, with std and samples files."""
    pred = tmp_path_factory.mktemp("pred")
    for pid in ("1BA001", "1BA002"):
        subject = phantom_dir / pid
        assert main(["translate", "--mr", str(subject / "mr.nii.gz"), "--mask", str(subject / "mask.nii.gz"), "--ckpt",
                     str(residual_ckpt), "--samples", "2", "--steps", "1", "--uncertainty", str(pred / f"{pid}_std.nii.gz"),
                     "--samples-out", str(pred / f"{pid}_samples.nii.gz"), "--out", str(pred / f"{pid}.nii.gz")]) == 0
    return pred


def test_samples_out_holds_the_k_samples_whose_mean_is_the_sct(predictions):
    samples = np.asarray(nib.load(predictions / "1BA001_samples.nii.gz").dataobj)
    sct = np.asarray(nib.load(predictions / "1BA001.nii.gz").dataobj)
    assert samples.shape == (*sct.shape, 2)
    np.testing.assert_allclose(samples.mean(axis=-1), sct, atol=0.05)
    assert json.loads((predictions / "1BA001_samples.json").read_text())["samples"] == 2


def test_evaluate_prints_the_reference_for_the_k_it_was_given_and_fits_a_calibration(predictions, phantom_dir, tmp_path,
                                                                                       capsys):
    out, cal = tmp_path / "m.json", tmp_path / "cal.json"
    assert main(["evaluate", "mri2ct", "--pred", str(predictions), "--ref", str(phantom_dir), "--out", str(out),
                 "--calibration-out", str(cal)]) == 0
    printed = capsys.readouterr().out
    assert "calibrated for K = 2: 43.6 %, 65.0 %" in printed  # sqrt(3/2) times a t with 1 dof: not 68 / 95 %
    assert "[min, max] covers" in printed and "(calibrated 33.3 %)" in printed and "CRPS" in printed
    report = json.loads(out.read_text())
    assert report["samples"] == 2 and report["calibrated_reference"]["minmax_coverage"] == pytest.approx(1 / 3)
    patient = report["patients"]["1BA001"]
    assert len(patient["samples"]["rank_histogram"]["counts"]) == 3
    assert {"bone", "air", "bone_and_air"} <= set(patient["ambiguous"]) and "gradient_ratio" in patient["texture"]
    low, high = report["interval95"]["mae"]
    assert low <= report["mean"]["mae"] <= high
    calibration = json.loads(cal.read_text())
    assert calibration["samples"] == 2 and calibration["score_kind"] == "normalised" and calibration["steps"] == 1
    again = tmp_path / "m2.json"
    assert main(["evaluate", "mri2ct", "--pred", str(predictions), "--ref", str(phantom_dir), "--out", str(again),
                 "--calibration", str(cal)]) == 0
    covered = json.loads(again.read_text())["mean"]["interval.coverage"]
    assert covered == pytest.approx(0.9, abs=0.05)  # in sample here; out of sample: test_conformal.py


def test_translate_interval_writes_calibrated_bounds_around_the_sct(predictions, phantom_dir, residual_ckpt, tmp_path):
    cal = tmp_path / "cal.json"
    assert main(["evaluate", "mri2ct", "--pred", str(predictions), "--ref", str(phantom_dir), "--out",
                 str(tmp_path / "m.json"), "--calibration-out", str(cal)]) == 0
    subject = phantom_dir / "1BA001"
    assert main(["translate", "--mr", str(subject / "mr.nii.gz"), "--mask", str(subject / "mask.nii.gz"), "--ckpt",
                 str(residual_ckpt), "--samples", "2", "--steps", "1", "--interval", "0.9", "--calibration", str(cal),
                 "--out", str(tmp_path / "sct.nii.gz")]) == 0
    sct, lower, upper = (np.asarray(nib.load(tmp_path / f"sct{s}.nii.gz").dataobj) for s in ("", "_lower", "_upper"))
    body = np.asarray(nib.load(subject / "mask.nii.gz").dataobj) > 0
    assert np.all(lower[body] <= sct[body] + 1e-3) and np.all(sct[body] <= upper[body] + 1e-3)
    assert np.all(lower[~body] == -1000) and (upper - lower)[body].mean() > 1.0
    assert json.loads((tmp_path / "sct_lower.json").read_text())["interval"] == 0.9


def test_a_calibration_that_ships_beside_the_checkpoint_is_the_default(predictions, phantom_dir, residual_ckpt,
                                                                      tmp_path):
    """``<model>.calibration.json`` beside ``<model>.ckpt`` serves ``--interval`` without ``--calibration``: the
    bounds are those of the same run given that file explicitly."""
    import shutil

    model = tmp_path / "model.ckpt"
    shutil.copy(residual_ckpt, model)
    assert main(["evaluate", "mri2ct", "--pred", str(predictions), "--ref", str(phantom_dir), "--out",
                 str(tmp_path / "m.json"), "--calibration-out", str(tmp_path / "model.calibration.json")]) == 0
    subject = phantom_dir / "1BA001"
    base = ["translate", "--mr", str(subject / "mr.nii.gz"), "--ckpt", str(model), "--samples", "2", "--steps", "1",
            "--interval", "0.8"]
    assert main([*base, "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert main([*base, "--calibration", str(tmp_path / "model.calibration.json"), "--out", str(tmp_path / "b.nii.gz")]) == 0
    for bound in ("lower", "upper"):
        a, b = (np.asarray(nib.load(tmp_path / f"{x}_{bound}.nii.gz").dataobj) for x in "ab")
        np.testing.assert_array_equal(a, b)
    upper, lower = (np.asarray(nib.load(tmp_path / f"a_{bound}.nii.gz").dataobj) for bound in ("upper", "lower"))
    assert (upper > lower).any()


def test_translate_interval_refuses_without_a_fitting_calibration(predictions, phantom_dir, residual_ckpt, tmp_path,
                                                                  capsys):
    subject = phantom_dir / "1BA001"
    base = ["translate", "--mr", str(subject / "mr.nii.gz"), "--ckpt", str(residual_ckpt), "--steps", "1",
            "--out", str(tmp_path / "sct.nii.gz"), "--interval", "0.9"]
    assert "needs --calibration" in run_expecting_error([*base, "--samples", "2"], capsys)
    cal = tmp_path / "cal.json"
    assert main(["evaluate", "mri2ct", "--pred", str(predictions), "--ref", str(phantom_dir), "--out",
                 str(tmp_path / "m.json"), "--calibration-out", str(cal)]) == 0
    capsys.readouterr()
    err = run_expecting_error([*base, "--samples", "3", "--calibration", str(cal)], capsys)
    assert "--samples 2, not 3" in err and str(cal) in err
    assert not (tmp_path / "sct.nii.gz").exists()


def test_the_bundled_v2_residual_model_serves_intervals_only_as_it_was_calibrated(phantom_dir, tmp_path, capsys):
    """``translate --model residual-v2`` finds the calibration that ships beside it and refuses another K; the v2
    regression ships none, so its ``--interval`` asks for one. Both refusals come before any translation."""
    base = ["translate", "--mr", str(phantom_dir / "1BA001" / "mr.nii.gz"), "--interval", "0.9"]
    err = run_expecting_error([*base, "--model", "residual-v2", "--samples", "2", "--out", str(tmp_path / "a.nii.gz")],
                              capsys)
    assert "mri2ct_v2_residual.calibration.json was calibrated with --samples 8, not 2" in err
    err = run_expecting_error([*base, "--model", "regression-v2", "--out", str(tmp_path / "b.nii.gz")], capsys)
    assert "needs --calibration" in err and "mri2ct_v2_regression.ckpt" in err
    assert not any(tmp_path.iterdir())


def test_the_bundled_two_step_student_translates_at_its_steps_with_its_own_calibration(phantom_dir, tmp_path, capsys):
    """``translate --model residual-v2-2steps``: the distilled student of residual-v2 (issue 32) takes its 2 DDIM steps
    by default, refuses the teacher's 10 in one sentence, and its shipped calibration serves ``--interval`` at K = 8."""
    from sci_diffusion.checkpoints import bundled_checkpoint
    from sci_diffusion_medical.translation.calibration import calibration_beside, read_calibration

    base = ["translate", "--mr", str(phantom_dir / "1BA001" / "mr.nii.gz"), "--mask",
            str(phantom_dir / "1BA001" / "mask.nii.gz"), "--model", "residual-v2-2steps"]
    err = run_expecting_error([*base, "--steps", "10", "--out", str(tmp_path / "a.nii.gz")], capsys)
    assert "distilled for 2 steps; sample it with --steps 2, not 10" in err and not (tmp_path / "a.nii.gz").exists()
    ckpt = bundled_checkpoint("sci_diffusion_medical", "translation_v2_2steps")
    calibration = read_calibration(calibration_beside(ckpt))
    assert (calibration.samples, calibration.sampler, calibration.steps) == (8, "ddim", 2)
    out = tmp_path / "sct.nii.gz"
    assert main([*base, "--samples", "2", "--out", str(out), "--batch-size", "64"]) == 0
    assert out.is_file() and json.loads((tmp_path / "sct.json").read_text())["steps"] == 2

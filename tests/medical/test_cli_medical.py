"""The medical verbs through `sci_diffusion.cli.main`: phantom, evaluate mri2ct, and bad input (exit 2, one line)."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from sci_diffusion.cli import main

from .conftest import run_expecting_error


def test_phantom_verb_writes_the_synthrad_layout(tmp_path):
    assert main(["phantom", "--subjects", "2", "--out", str(tmp_path / "p"), "--spacing", "8", "--seed", "1"]) == 0
    for pid in ("1BA001", "1BA002"):
        for name in ("mr", "ct", "mask", "labels"):
            assert (tmp_path / "p" / pid / f"{name}.nii.gz").is_file()
    assert json.loads((tmp_path / "p" / "dataset.json").read_text())["seed"] == 1


def test_evaluate_mri2ct_scores_a_perfect_prediction(phantom_dir, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for pid in ("1BA001", "1BA002"):
        shutil.copy(phantom_dir / pid / "ct.nii.gz", pred / f"{pid}.nii.gz")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "mri2ct", "--pred", str(pred), "--ref", str(phantom_dir), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_patients"] == 2 and report["mean"]["mae"] == 0.0


def test_translate_rejects_a_file_that_is_not_nifti(diffusion_ckpt, tmp_path, capsys):
    bad = tmp_path / "mr.nii.gz"
    bad.write_text("not an image")
    err = run_expecting_error(["translate", "--mr", str(bad), "--ckpt", str(diffusion_ckpt),
                               "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert str(bad) in err


def test_translate_rejects_a_mask_of_another_shape(subject, diffusion_ckpt, tmp_path, capsys):
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), mask)
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]), "--mask", str(mask),
                               "--ckpt", str(diffusion_ckpt), "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert str(mask) in err and "shape" in err


def test_translate_rejects_a_checkpoint_of_another_domain(subject, tmp_path, capsys):
    ckpt = tmp_path / "molecules.ckpt"
    record = {"domain": "molecules", "config": {},
              "module_class": "sci_diffusion_molecules.models.diffusion:MoleculeDiffusion"}
    torch.save({"state_dict": {}, "sci_diffusion": record}, ckpt)
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]), "--ckpt", str(ckpt),
                               "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert str(ckpt) in err and "molecules" in err


def test_translate_reports_a_missing_input_file(diffusion_ckpt, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mr.nii.gz"
    err = run_expecting_error(["translate", "--mr", str(missing), "--ckpt", str(diffusion_ckpt),
                               "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert str(missing) in err


def test_translate_without_ckpt_explains_the_missing_bundled_model(subject, tmp_path, capsys, monkeypatch):
    import sci_diffusion_medical

    absent = tmp_path / "checkpoints" / "mri2ct_residual.ckpt"
    monkeypatch.setitem(sci_diffusion_medical.BUNDLED_CHECKPOINTS, "translation", str(absent))
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]),
                               "--out", str(tmp_path / "o.nii.gz")], capsys)
    assert str(absent) in err and "--ckpt" in err


@pytest.mark.parametrize("extra, words", [(["--uncertainty", "u.nii.gz"], "--samples 2"),
                                           (["--sampler", "euler"], "invalid choice: 'euler'")])
def test_translate_rejects_inconsistent_flags_before_any_work(subject, diffusion_ckpt, tmp_path, capsys, extra, words):
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]), "--ckpt",
                               str(diffusion_ckpt), "--out", str(tmp_path / "o.nii.gz"), *extra], capsys)
    assert words in err


@pytest.mark.parametrize("extra, words", [(["--uncertainty", "u.nii.gz"], "--samples 2"), (["--steps", "0"], "--steps"),
                                           (["--samples", "0"], "--samples"), (["--batch-size", "0"], "--batch-size")])
def test_translate_checks_its_flags_before_it_reads_a_checkpoint(subject, tmp_path, capsys, extra, words):
    """A bad flag is named even when the checkpoint is missing too: the flags are checked before any model loads."""
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]), "--ckpt", str(tmp_path / "missing.ckpt"),
                               "--out", str(tmp_path / "o.nii.gz"), *extra], capsys)
    assert words in err and "missing.ckpt" not in err


def test_translate_without_ckpt_uses_the_bundled_model(subject, diffusion_ckpt, tmp_path, monkeypatch):
    import sci_diffusion_medical

    monkeypatch.setitem(sci_diffusion_medical.BUNDLED_CHECKPOINTS, "translation", str(diffusion_ckpt))
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", "--mr", str(subject["mr"]), "--steps", "1", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "sct.json").read_text())["checkpoint"] == str(diffusion_ckpt)


def test_translate_refuses_an_output_under_a_file_before_any_work(subject, diffusion_ckpt, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    err = run_expecting_error(["translate", "--mr", str(subject["mr"]), "--ckpt",
                               str(diffusion_ckpt), "--out", str(blocker / "sct.nii.gz")], capsys)
    assert "is a file, not a folder" in err and blocker.read_text() == "keep me"

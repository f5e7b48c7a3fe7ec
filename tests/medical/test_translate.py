"""translate's sampling trajectory (``translate --trajectory-png``), and a folder of subjects (``--shard``)."""
import json

import nibabel as nib
import numpy as np

from sci_diffusion.cli import main
from sci_diffusion_medical.translation.inputs import load_inputs
from sci_diffusion_medical.translation.model import load_translation_model, slice_geometry
from sci_diffusion_medical.translation.volume import slice_trajectory, translate_volume

from .conftest import run_expecting_error, tiny_fit


def test_the_trajectory_ends_on_the_translated_slice(subject, residual_ckpt, tmp_path):
    """translate --trajectory-png: one frame per step, and the last estimate is the slice the volume got."""
    module = load_translation_model(residual_ckpt, device="cpu")
    inputs = load_inputs(subject["mr"], subject["mask"])
    geometry = slice_geometry(module)
    frames = slice_trajectory(module, inputs["mr"], inputs["mask"], "ddim", 3, seed=4, **geometry)
    volume = translate_volume(module, inputs["mr"], inputs["mask"], 1, "ddim", 3, seed=4, progress=False, **geometry)[0]
    occupied = np.nonzero(inputs["mask"].any(axis=(0, 1)))[0]
    middle = volume[:, :, occupied[len(occupied) // 2]]
    assert [f["step"] for f in frames] == [1, 2, 3]
    body = inputs["mask"][:, :, occupied[len(occupied) // 2]]
    assert np.allclose(frames[-1]["estimate"][body], middle[body], atol=1.0)
    assert not np.allclose(frames[0]["estimate"][body], middle[body], atol=1.0)
    png = tmp_path / "strip.png"
    assert main(["translate", "--mr", str(subject["mr"]), "--ckpt", str(residual_ckpt), "--steps", "2",
                 "--out", str(tmp_path / "sct.nii.gz"), "--trajectory-png", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_a_folder_of_subjects_translates_whole_or_in_parts_as_each_subject_alone(phantom_dir, subject, diffusion_ckpt,
                                                                                  tmp_path, capsys):
    """``translate --mr FOLDER``: every subject into ``<out>/<id>/sct.nii.gz`` (and its std for K = 2) exactly as
    a one-volume run with its mask; ``--shard K/N`` parts write the whole run's volumes, each subject once."""
    flags = ["--ckpt", str(diffusion_ckpt), "--samples", "2", "--steps", "1", "--seed", "4"]
    assert main(["translate", "--mr", str(phantom_dir), "--out", str(tmp_path / "whole"), *flags]) == 0
    record = json.loads((tmp_path / "whole" / "translation.json").read_text())
    assert record["subjects"] == ["1BA001", "1BA002"] and record["run_subjects"] == 2
    alone = tmp_path / "alone.nii.gz"
    assert main(["translate", "--mr", str(subject["mr"]), "--mask", str(subject["mask"]), "--out", str(alone), *flags]) == 0
    assert np.array_equal(nib.load(alone).get_fdata(), nib.load(tmp_path / "whole" / "1BA001" / "sct.nii.gz").get_fdata())
    for k in range(2):  # the parts of a run write into one folder, each with its own record
        assert main(["translate", "--mr", str(phantom_dir), "--out", str(tmp_path / "parts"), "--shard", f"{k}/2",
                     *flags]) == 0
    for k, pid in enumerate(["1BA001", "1BA002"]):
        assert json.loads((tmp_path / "parts" / f"translation_part{k}of2.json").read_text())["subjects"] == [pid]
        for name in ("sct.nii.gz", "sct_std.nii.gz"):
            assert np.array_equal(nib.load(tmp_path / "parts" / pid / name).get_fdata(),
                                  nib.load(tmp_path / "whole" / pid / name).get_fdata())
    capsys.readouterr()
    assert "3 parts of 2 subjects" in run_expecting_error(["translate", "--mr", str(phantom_dir), "--out",
                                                           str(tmp_path / "bad"), "--shard", "0/3", *flags], capsys)
    assert "--png names one file" in run_expecting_error(["translate", "--mr", str(phantom_dir), "--out",
                                                          str(tmp_path / "bad"), "--png", "x.png", *flags], capsys)
    assert "--shard splits a folder of subjects" in run_expecting_error(
        ["translate", "--mr", str(subject["mr"]), "--out", str(tmp_path / "bad.nii.gz"), "--shard", "0/2", *flags], capsys)
    assert not (tmp_path / "bad").exists()


def test_the_residual_model_distils_and_its_student_translates_at_its_own_step_count(phantom_dir, subject, residual_ckpt,
                                                                                      regression_ckpt, tmp_path, capsys):
    """configs/medical/distill_residual.yaml: one round from the (tiny) residual model; the student translates with
    its own step count by default and refuses another in one sentence."""
    student = tiny_fit("distill_residual.yaml", phantom_dir, tmp_path / "fit", [
        f"--model.distill_from={residual_ckpt}", f"--model.regression_ckpt={regression_ckpt}", "--model.distill_steps=2",
        "--model.channels=[8,16,16]", "--model.attention_levels=[false,false,true]", "--model.num_head_channels=8",
        "--model.norm_num_groups=8", "--model.val_slices=2", "--model.val_steps=1", "--data.phantom_subjects=0"])
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", "--mr", str(subject["mr"]), "--mask", str(subject["mask"]), "--ckpt", str(student),
                 "--out", str(out)]) == 0
    assert json.loads((tmp_path / "sct.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert "distilled for 2 steps; sample it with --steps 2, not 10" in run_expecting_error(
        ["translate", "--mr", str(subject["mr"]), "--ckpt", str(student), "--steps", "10", "--out",
         str(tmp_path / "b.nii.gz")], capsys)

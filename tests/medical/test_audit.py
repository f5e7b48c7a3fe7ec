"""The memorisation audit finds planted copies (whole, shifted and mirrored, rotated, resampled, one slice) of training
subjects, with the transform that made them, and passes a new subject from the same generator; thresholds come from
held-out subjects (or leave-one-out); bad input is refused in one sentence."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sci_diffusion.cli import main
from sci_diffusion_medical.data.phantom_v2 import write_phantom_dataset_v2
from sci_diffusion_medical.evaluation.audit import audit_directories, labels_distance, union_correlation
from sci_diffusion_medical.io.nifti import save_volume

from .conftest import run_expecting_error

KEYS = ("ct", "mask", "labels")
FILL = {"ct": -1000, "mask": 0, "labels": 0}
COPIED_SLICE = {"training": "1BA003", "training_z": 28, "z": 33}
SHIFT_VOXELS = 2  # 8 mm at 4 mm
ROTATION_DEG = 8.0


def read(folder: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return {k: np.asarray(nib.load(folder / f"{k}.nii.gz").dataobj) for k in KEYS}, nib.load(folder / "ct.nii.gz").affine


def write(folder: Path, arrays: dict[str, np.ndarray], affine: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for k, v in arrays.items():
        save_volume(v.astype(np.int16 if k == "ct" else np.uint8), affine, folder / f"{k}.nii.gz",
                    description=f"SYNTHETIC planted copy {k}")


def at_2mm(arrays: dict[str, np.ndarray], affine: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The same subject on a 2 mm grid with a larger field of view (10, 0 and 4 more voxels before x, y, z)."""
    pad = ((10, 0), (0, 6), (4, 4))
    fine = {k: np.pad(ndimage.zoom(v.astype(np.float32), 2, order=1 if k == "ct" else 0, grid_mode=True, mode="nearest"),
                      pad, constant_values=FILL[k]) for k, v in arrays.items()}
    out = affine.copy()
    out[:3, :3] /= 2
    out[:3, 3] += out[:3, :3] @ (np.full(3, -0.5) - [p[0] for p in pad])  # 2 mm voxel centres 1 mm off the 4 mm ones
    return fine, out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Phantoms v2 at 4 mm: 3 training subjects (1BA001-3), 4 held-out ones (1BH001-4), and the synthetic folder:
    COPY = 1BA002; MIRROR = 1BA001 mirrored left-right and shifted 8 mm in x and y; ROTATED = 1BA003 rotated 8
    degrees about the S axis; RESAMPLED = 1BA002 written at 2 mm over a larger field of view; SLICE = a new subject
    whose axial slice 33 is slice 28 of 1BA003 (CT, mask and labels); FRESH = a new subject."""
    root = tmp_path_factory.mktemp("audit")
    write_phantom_dataset_v2(root / "train", 3, 4.0, seed=0)
    write_phantom_dataset_v2(root / "held", 4, 4.0, seed=1, centre="H")
    write_phantom_dataset_v2(root / "new", 2, 4.0, seed=2, centre="N")
    syn = root / "synthetic"
    for name, source in (("COPY", root / "train/1BA002"), ("FRESH", root / "new/1BN002")):
        write(syn / name, *read(source))
    a, affine = read(root / "train/1BA001")
    write(syn / "MIRROR", {k: ndimage.shift(v[::-1], (SHIFT_VOXELS, SHIFT_VOXELS, 0), order=0, cval=FILL[k])
                           for k, v in a.items()}, affine)
    a, affine = read(root / "train/1BA003")
    write(syn / "ROTATED", {k: ndimage.rotate(v, ROTATION_DEG, axes=(0, 1), reshape=False, order=1 if k == "ct" else 0,
                                              cval=FILL[k]) for k, v in a.items()}, affine)
    b, b_affine = read(root / "new/1BN001")
    for k in KEYS:
        b[k][:, :, COPIED_SLICE["z"]] = a[k][:, :, COPIED_SLICE["training_z"]]
    write(syn / "SLICE", b, b_affine)
    write(syn / "RESAMPLED", *at_2mm(*read(root / "train/1BA002")))
    return {"root": root, "train": root / "train", "held": root / "held", "synthetic": syn}


@pytest.fixture(scope="module")
def report(world) -> dict:
    return audit_directories(world["synthetic"], world["train"], world["root"] / "audit.json",
                             png=world["root"] / "pairs.png", held_out_dir=world["held"])


def test_planted_copies_are_flagged_and_rank_first(report, world):
    s = report["synthetic"]
    copies = {"COPY": "1BA002", "MIRROR": "1BA001", "ROTATED": "1BA003", "RESAMPLED": "1BA002"}
    assert set(list(s)[:4]) == set(copies) and set(list(s)[:2]) == {"COPY", "MIRROR"}  # most extreme first
    for pid, source in copies.items():
        assert s[pid]["nearest_training"] == source and s[pid]["flagged_by"] == ["ct", "labels"], pid
        assert s[pid]["distance"]["ct"] < report["thresholds"]["ct"] / 4, pid
    assert s["COPY"]["distance"] == {"ct": 0.0, "labels": 0.0, "labels_training": "1BA002"}
    assert s["COPY"]["transform"] == {"mirrored": False, "rotation_deg": [0.0, 0.0, 0.0], "translation_mm": [0.0, 0.0, 0.0]}
    assert s["COPY"]["slices_flagged"] and len(s["COPY"]["slices_flagged"]) == s["COPY"]["n_slices"]
    f = report["flagged"]
    assert f["subjects"] == list(s)[:4] and f["fraction"] == pytest.approx(4 / 6) and f["expected_fraction"] == 0.05
    assert report["reference"] == "held-out" and report["n_reference"] == 4 and report["reference_distances"]["ct"]["n"] == 4
    held = report["reference_subjects"]
    assert sorted(held) == ["1BH001", "1BH002", "1BH003", "1BH004"]
    for key in ("ct", "labels"):
        assert report["thresholds"][key] == pytest.approx(np.percentile([h[key] for h in held.values()], 5), abs=1e-6)
    assert json.loads((world["root"] / "audit.json").read_text())["flagged"] == f
    assert (world["root"] / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_a_shifted_mirrored_copy_is_found_with_its_transform(report, world):
    m = report["synthetic"]["MIRROR"]
    mask, affine = read(world["train"] / "1BA001")[0]["mask"], read(world["train"] / "1BA001")[1]
    centroid = (affine @ np.append(np.argwhere(mask > 0.5).mean(axis=0), 1))[:3]
    grid_centre = (affine @ np.append((np.array(mask.shape) - 1) / 2, 1))[:3]
    shift = 4.0 * SHIFT_VOXELS
    # mirrored across x = grid centre, then shifted: about the body centroid, that is a mirror and this translation
    expected = [2 * (grid_centre[0] - centroid[0]) + shift, shift, 0.0]
    assert m["transform"]["mirrored"] and np.abs(m["transform"]["rotation_deg"]).max() < 1.0
    np.testing.assert_allclose(m["transform"]["translation_mm"], expected, atol=4.0)  # within a voxel
    assert m["distance"]["ct"] <= report["synthetic"]["COPY"]["distance"]["ct"] + 0.01 and m["distance"]["labels"] < 0.01


def test_a_rotated_copy_is_registered_with_its_rotation(report):
    r = report["synthetic"]["ROTATED"]
    assert not r["transform"]["mirrored"]
    np.testing.assert_allclose(r["transform"]["rotation_deg"], [0.0, 0.0, ROTATION_DEG], atol=1.0)
    assert r["distance"]["ct"] < 0.05 and r["distance"]["labels"] < 0.1


def test_a_subject_written_at_2mm_matches_itself_at_4mm(report):
    r = report["synthetic"]["RESAMPLED"]
    assert r["nearest_training"] == "1BA002" and r["distance"]["ct"] < 0.05 and r["distance"]["labels"] < 0.01
    assert np.abs(r["transform"]["translation_mm"]).max() < 2.0 and np.abs(r["transform"]["rotation_deg"]).max() < 1.0


def test_one_copied_slice_is_flagged_in_a_new_volume(report):
    r = report["synthetic"]["SLICE"]
    assert not r["flagged"] and r["distance"]["ct"] >= report["thresholds"]["ct"]
    w = r["worst_slice"]
    assert (w["z"], w["training"], w["training_z"]) == (COPIED_SLICE["z"], COPIED_SLICE["training"],
                                                        COPIED_SLICE["training_z"])
    assert w["flagged"] and w["distance"] < 1e-6 and r["slices_flagged"][0] == COPIED_SLICE["z"]
    assert len(r["slices_flagged"]) <= 0.2 * r["n_slices"]
    assert {"synthetic": "SLICE", **w} in report["worst_slices"][:3]


def test_a_new_subject_from_the_same_generator_is_not_flagged(report):
    r, ref = report["synthetic"]["FRESH"], report["reference_distances"]
    assert not r["flagged"] and r["reference_percentile"]["ct"] >= report["settings"]["percentile"]
    assert ref["ct"]["min"] / 1.5 <= r["distance"]["ct"] <= 1.5 * ref["ct"]["max"]
    assert ref["labels"]["min"] / 1.5 <= r["distance"]["labels"] <= 1.5 * ref["labels"]["max"]
    assert len(r["slices_flagged"]) <= 0.2 * r["n_slices"]  # about 5 % by chance
    assert list(report["synthetic"])[-2:] in (["FRESH", "SLICE"], ["SLICE", "FRESH"])


def test_union_correlation_and_the_labels_distance():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 200)), 5 * rng.normal(size=(4, 200)) + 100
    a, b = (rng.random((3, 200)) < 0.4) * 1.0, (rng.random((4, 200)) < 0.5) * 1.0
    r = union_correlation(x, a, y, b)
    for i in range(3):
        for j in range(4):
            union = (a[i] + b[j]) > 0
            assert r[i, j] == pytest.approx(np.corrcoef(x[i, union], y[j, union])[0, 1], abs=1e-10)
    labels = rng.integers(0, 4, (10, 10, 10))
    assert labels_distance(labels, labels) == 0.0 and labels_distance(labels, np.where(labels, 0, 5)) == 1.0
    assert labels_distance(np.zeros((4, 4)), np.zeros((4, 4))) is None


def test_cli_leave_one_out_and_held_out_summaries(phantom_dir, world, tmp_path, capsys):
    syn = tmp_path / "synthetic"
    shutil.copytree(phantom_dir / "1BA001", syn / "COPY")
    base = ["audit", "medical", "--synthetic", str(syn), "--train", str(phantom_dir)]
    assert main([*base, "--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "1 subjects flagged" in out and "2 leave-one-out subjects" in out and "5 % expected" in out
    loo = json.loads((tmp_path / "a.json").read_text())
    assert loo["reference"] == "leave-one-out" and loo["synthetic"]["COPY"]["nearest_training"] == "1BA001"
    assert main([*base, "--held-out", str(world["held"]), "--percentile", "10", "--out", str(tmp_path / "b.json")]) == 0
    held = json.loads((tmp_path / "b.json").read_text())
    assert held["reference"] == "held-out" and held["n_reference"] == 4 and held["settings"]["percentile"] == 10.0
    assert "4 held-out subjects" in capsys.readouterr().out


def test_cli_refuses_bad_input_in_one_sentence(phantom_dir, tmp_path, capsys):
    constant = tmp_path / "constant"
    (constant / "S1").mkdir(parents=True)
    save_volume(np.zeros((8, 8, 8), np.int16), np.eye(4), constant / "S1" / "ct.nii.gz")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "never.json"
    base = ["audit", "medical", "--train", str(phantom_dir), "--out", str(out)]
    assert "holds no SynthRAD patient" in run_expecting_error([*base, "--synthetic", str(tmp_path / "empty")], capsys)
    assert "constant" in run_expecting_error([*base, "--synthetic", str(constant)], capsys)
    assert "is the training folder" in run_expecting_error(
        [*base, "--synthetic", str(constant), "--held-out", str(phantom_dir)], capsys)
    for p in ("0", "50", "-3"):
        assert "--percentile" in run_expecting_error([*base, "--synthetic", str(constant), "--percentile", p], capsys)
    assert not out.exists()

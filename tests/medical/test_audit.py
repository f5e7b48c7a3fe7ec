"""The memorisation audit flags copies of training subjects and passes new ones."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_medical.data.phantom import write_phantom_dataset
from sci_diffusion_medical.evaluation.audit import audit_directories, volume_signature
from sci_diffusion_medical.io.nifti import load_volume, save_like


@pytest.fixture(scope="module")
def synthetic_dir(phantom_dir, tmp_path_factory):
    """SYN001: an exact copy of training subject 1BA001; SYN002: the same, intensities rescaled and noisy;
    SYN003: an unrelated subject (another seed)."""
    root = tmp_path_factory.mktemp("synthetic")
    shutil.copytree(phantom_dir / "1BA001", root / "SYN001")
    ct, _, _ = load_volume(phantom_dir / "1BA001" / "ct.nii.gz")
    (root / "SYN002").mkdir()
    noisy = 0.9 * ct + 40 + np.random.default_rng(0).normal(0, 20, ct.shape)
    save_like(noisy.astype(np.float32), phantom_dir / "1BA001" / "ct.nii.gz", root / "SYN002" / "ct.nii.gz")
    other = write_phantom_dataset(tmp_path_factory.mktemp("other"), 1, 4.0, seed=7)[0]
    shutil.copytree(other["ct"].rsplit("/", 1)[0], root / "SYN003")
    return root


def test_the_audit_flags_copies_and_passes_an_unrelated_subject(phantom_dir, synthetic_dir, tmp_path):
    report = audit_directories(synthetic_dir, phantom_dir, tmp_path / "audit.json", png=tmp_path / "pairs.png")
    s = report["synthetic"]
    assert s["SYN001"]["nearest_training"] == "1BA001" and s["SYN001"]["correlation"] == pytest.approx(1.0)
    assert s["SYN002"]["nearest_training"] == "1BA001" and s["SYN002"]["near_copy"]
    assert not s["SYN003"]["near_copy"] and s["SYN003"]["correlation"] < report["threshold"]
    assert report["near_copies"] == ["SYN001", "SYN002"] and report["fraction_near_copies"] == pytest.approx(2 / 3)
    assert report["closer_than_any_two_training"] >= 2  # two training subjects: a loose reference
    assert json.loads((tmp_path / "audit.json").read_text())["n_training"] == 2
    assert (tmp_path / "pairs.png").read_bytes()[:4] == b"\x89PNG"


def test_signatures_ignore_gain_and_offset_and_refuse_a_constant_volume():
    from sci_diffusion_medical.io.nifti import MedicalInputError

    v = np.random.default_rng(1).normal(size=(20, 24, 16))
    np.testing.assert_allclose(volume_signature(3 * v + 7), volume_signature(v))
    with pytest.raises(MedicalInputError, match="constant"):
        volume_signature(np.ones((8, 8, 8)))


def test_audit_cli_prints_the_summary_and_rejects_bad_input(phantom_dir, synthetic_dir, tmp_path, capsys):
    assert main(["audit", "medical", "--synthetic", str(synthetic_dir), "--train", str(phantom_dir),
                 "--out", str(tmp_path / "a.json")]) == 0
    assert "2 near copies" in capsys.readouterr().out
    assert main(["audit", "medical", "--synthetic", str(tmp_path / "none"), "--train", str(phantom_dir),
                 "--out", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none" in err[0] and not (tmp_path / "b.json").exists()
    assert main(["audit", "medical", "--synthetic", str(synthetic_dir), "--train", str(phantom_dir),
                 "--out", str(tmp_path / "c.json"), "--threshold", "2"]) == 2

"""Paired MR / CT / label synthesis: analog-bit labels, joint slices, shared noise, and the marked data set
that ``synthesize medical`` writes (aligned, in range, reproducible, bad input refused)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sci_diffusion.cli import main
from sci_diffusion_medical.data.label_bits import bits_to_labels, label_codewords, labels_to_bits
from sci_diffusion_medical.data.paired_slices import PairedVolumeSlices
from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.io.nifti import MedicalInputError
from sci_diffusion_medical.models.slice_space import correlated_slice_noise
from sci_diffusion_medical.models.synthesis import PairedSliceSynthesis

from .conftest import run_expecting_error, tiny_fit

TINY = ["--model.channels=[8,16]", "--model.attention_levels=[false,true]", "--model.num_head_channels=8",
        "--model.norm_num_groups=8", "--data.val_subjects=1", "--data.batch_size=8", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def synthesis_ckpt(phantom_dir, tmp_path_factory) -> Path:
    """A 2-step PairedSliceSynthesis (channels 8, 16) fitted through the CLI on the 4 mm phantoms."""
    return tiny_fit("paired_synthesis.yaml", phantom_dir, tmp_path_factory.mktemp("fit_synthesis"), TINY, base=[])


@pytest.fixture(scope="module")
def synthetic_set(synthesis_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "set"
    assert main(["synthesize", "medical", "--num", "2", "--out", str(out), "--seed", "3", "--steps", "2",
                 "--ckpt", str(synthesis_ckpt)]) == 0
    return out


# ----- labels as analog bits ---------------------------------------------------------------------------
def test_every_label_survives_the_analog_bits_and_noise_goes_to_the_nearest_class():
    labels = torch.arange(10).view(1, 10, 1).expand(3, 10, 4)
    bits = labels_to_bits(labels, 10)
    assert bits.shape == (3, 4, 10, 4) and set(bits.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(bits_to_labels(bits, 10), labels)
    noisy = bits * 0.4 + 0.3 * torch.randn(bits.shape, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(noisy.movedim(1, -1).reshape(-1, 4), label_codewords(10)).argmin(dim=1)
    assert torch.equal(bits_to_labels(noisy, 10).flatten(), nearest)  # the nearest valid codeword, in Euclid's sense
    # codes of no class (10..15 need a 4th bit set with bits 1 or 2) decode to a class, never out of range
    invalid = label_codewords(16)[10:].T.reshape(4, 6, 1)
    decoded = bits_to_labels(invalid, 10)
    assert decoded.min() >= 0 and decoded.max() <= 9
    distances = torch.cdist(label_codewords(16)[10:], label_codewords(10))
    assert torch.equal(decoded.flatten(), distances.argmin(dim=1))


def test_joint_slices_hold_the_subjects_mr_ct_and_labels(phantom_dir):
    pairs = find_synthrad_pairs(phantom_dir)
    data = PairedVolumeSlices(pairs[:1], divisible=8)
    labels = nib.load(pairs[0]["labels"]).get_fdata().round().astype(int)  # the phantoms are written in RAS
    assert len(data) == labels.shape[2] and data.shape == labels.shape
    item = data[labels.shape[2] // 2]
    assert item["x"].shape == (6, *labels.shape[:2]) and -1.0 <= float(item["height"]) <= 1.0
    assert np.array_equal(bits_to_labels(item["x"][2:], 10).numpy(), labels[:, :, labels.shape[2] // 2])
    assert float(data[0]["height"]) == -1.0 and float(data[len(data) - 1]["height"]) == 1.0
    ct = nib.load(pairs[0]["ct"]).get_fdata()[:, :, labels.shape[2] // 2]
    assert np.allclose((item["x"][1].numpy() + 1.0) * (4024 / 2) - 1024, np.clip(ct, -1024, 3000), atol=0.5)


def test_a_subject_without_labels_is_refused(phantom_dir):
    pair = {k: v for k, v in find_synthrad_pairs(phantom_dir)[0].items() if k != "labels"}
    with pytest.raises(MedicalInputError, match="no labels"):
        PairedVolumeSlices([pair])


def test_slice_noise_is_standard_normal_and_correlated_along_the_volume():
    noise = correlated_slice_noise(12, (3, 40, 40), torch.Generator().manual_seed(0), correlation_slices=4.0)
    flat = noise.flatten(1)
    assert abs(float(flat.mean())) < 0.02 and abs(float(flat.std()) - 1.0) < 0.02
    r = torch.corrcoef(flat)
    assert all(r[z, z + 1] > 0.8 for z in range(11))  # neighbours share most of their noise
    assert abs(float(r[0, 8])) < 0.05 and abs(float(r[1, 11])) < 0.05  # two anchors apart: independent


def test_a_subjects_slices_follow_the_correlated_noise():
    """MONAI zero-initialises the U-Net's output layer, so a fresh model predicts v = 0 whatever the height:
    its samples are then a fixed function of the noise, and neighbouring slices come out alike, distant ones not."""
    model = PairedSliceSynthesis(channels=(8, 16), attention_levels=(False, False), norm_num_groups=8,
                                 grid={"shape": [16, 16, 12], "affine": np.eye(4).tolist(), "pad": [[0, 0], [0, 0]]})
    volume = model.sample_volume(torch.Generator().manual_seed(0), steps=3)
    for key in ("mr", "ct", "labels"):
        assert volume[key].shape == (16, 16, 12)
    mr = torch.as_tensor(volume["mr"]).movedim(-1, 0).flatten(1)
    r = torch.corrcoef(mr)
    assert float(r.diagonal(1).mean()) > 0.7 and abs(float(r[0, 8])) < 0.3
    other = model.sample_volume(torch.Generator().manual_seed(1), steps=3)
    assert not np.array_equal(other["mr"], volume["mr"])


# ----- the written data set ----------------------------------------------------------------------------
def test_the_synthetic_set_is_marked_aligned_and_in_range(synthetic_set, synthesis_ckpt):
    meta = json.loads((synthetic_set / "dataset.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 3 and meta["subjects"] == ["1BS001", "1BS002"]
    assert (synthetic_set / "contact_sheet.png").stat().st_size > 1000
    for pid in meta["subjects"]:
        images = {k: nib.load(synthetic_set / pid / f"{k}.nii.gz") for k in ("mr", "ct", "mask", "labels")}
        for key, image in images.items():
            assert b"SYNTHETIC" in image.header["descrip"].tobytes(), key
            assert np.allclose(image.affine, images["mr"].affine) and image.shape == images["mr"].shape
            assert np.allclose(image.header.get_zooms(), 4.0)
            sidecar = json.loads((synthetic_set / pid / f"{key}.json").read_text())
            assert sidecar["synthetic"] is True and sidecar["seed"] == 3 and sidecar["subject"] == pid
            assert sidecar["checkpoint_sha256"] and sidecar["date"] and "PairedSliceSynthesis" in sidecar["generator"]
        ct, labels = images["ct"].get_fdata(), images["labels"].get_fdata()
        mask, mr = images["mask"].get_fdata() > 0, images["mr"].get_fdata()
        assert np.array_equal(mask, labels > 0)
        assert labels.min() >= 0 and labels.max() <= 9 and np.array_equal(labels, labels.round())
        assert ct.min() >= -1024 and ct.max() <= 3071 and np.all(ct[~mask] == -1000)
        assert mr.min() >= 0 and mr.max() <= 1000


def test_a_subject_depends_on_the_seed_and_its_index_only(synthetic_set, synthesis_ckpt, tmp_path):
    again = tmp_path / "one"
    assert main(["synthesize", "medical", "--num", "1", "--out", str(again), "--seed", "3", "--steps", "2",
                 "--ckpt", str(synthesis_ckpt)]) == 0
    first = nib.load(again / "1BS001" / "ct.nii.gz").get_fdata()
    assert np.array_equal(first, nib.load(synthetic_set / "1BS001" / "ct.nii.gz").get_fdata())
    assert not np.array_equal(first, nib.load(synthetic_set / "1BS002" / "ct.nii.gz").get_fdata())


def test_three_shards_write_exactly_the_subjects_of_one_run(synthesis_ckpt, tmp_path, capsys):
    """``--shard K/N``: each part draws its subjects from the run's own seeds, so the three parts' folders hold
    the run's ids and volumes, each once; a malformed or too fine split is refused in one sentence."""
    common = ["--num", "3", "--seed", "5", "--steps", "2", "--ckpt", str(synthesis_ckpt)]
    assert main(["synthesize", "medical", *common, "--out", str(tmp_path / "whole")]) == 0
    parts = {}
    for k in range(3):
        out = tmp_path / f"part{k}"
        assert main(["synthesize", "medical", *common, "--shard", f"{k}/3", "--out", str(out)]) == 0
        info = json.loads((out / "dataset.json").read_text())
        assert info["shard"] == {"part": k, "parts": 3, "run_subjects": 3}
        parts.update({pid: out for pid in info["subjects"]})
    whole = json.loads((tmp_path / "whole" / "dataset.json").read_text())["subjects"]
    assert sorted(parts) == sorted(whole) and len(whole) == 3
    for pid, out in parts.items():
        for volume in ("ct", "mr", "labels"):
            assert np.array_equal(nib.load(out / pid / f"{volume}.nii.gz").get_fdata(),
                                  nib.load(tmp_path / "whole" / pid / f"{volume}.nii.gz").get_fdata())
    capsys.readouterr()  # the progress bars so far
    assert "should read K/N" in run_expecting_error(["synthesize", "medical", *common, "--shard", "3/3",
                                                     "--out", str(tmp_path / "bad")], capsys)
    assert "4 parts of 3 subjects" in run_expecting_error(["synthesize", "medical", *common, "--shard", "0/4",
                                                           "--out", str(tmp_path / "bad")], capsys)
    assert not (tmp_path / "bad").exists()


def test_the_nnunet_format_is_written_beside(synthesis_ckpt, tmp_path):
    out = tmp_path / "set"
    assert main(["synthesize", "medical", "--num", "1", "--out", str(out), "--steps", "1", "--format", "nnunet",
                 "--ckpt", str(synthesis_ckpt)]) == 0
    dataset = next((out / "nnunet").iterdir())
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    assert (dataset / "imagesTr" / "1BS001_0000.nii.gz").is_file() and (dataset / "labelsTr" / "1BS001.nii.gz").is_file()


def test_synthesize_refuses_bad_input_in_one_sentence(synthetic_set, synthesis_ckpt, regression_ckpt, tmp_path, capsys):
    before = (synthetic_set / "dataset.json").read_bytes()
    err = run_expecting_error(["synthesize", "medical", "--num", "1", "--out", str(synthetic_set), "--ckpt",
                               str(synthesis_ckpt)], capsys)
    assert "already holds a data set" in err
    assert (synthetic_set / "dataset.json").read_bytes() == before  # nothing already written is lost
    assert "at least 1" in run_expecting_error(["synthesize", "medical", "--num", "0", "--out", str(tmp_path / "a"),
                                                "--ckpt", str(synthesis_ckpt)], capsys)
    assert "not a paired synthesis model" in run_expecting_error(
        ["synthesize", "medical", "--num", "1", "--out", str(tmp_path / "b"), "--ckpt", str(regression_ckpt)], capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_subjects_can_be_written_at_another_voxel_size(synthetic_set, synthesis_ckpt, tmp_path):
    out = tmp_path / "fine"
    assert main(["synthesize", "medical", "--num", "1", "--out", str(out), "--seed", "3", "--steps", "2", "--spacing", "2",
                 "--ckpt", str(synthesis_ckpt)]) == 0
    fine, coarse = (nib.load(folder / "1BS001" / "ct.nii.gz") for folder in (out, synthetic_set))
    assert np.allclose(fine.header.get_zooms(), 2.0) and fine.shape[0] >= 2 * coarse.shape[0] - 1
    centre = lambda image: image.affine @ np.r_[(np.array(image.shape) - 1) / 2.0, 1.0]  # noqa: E731
    assert np.allclose(centre(fine), centre(coarse), atol=1.0)  # the same field of view, in millimetres
    labels = nib.load(out / "1BS001" / "labels.nii.gz").get_fdata()
    mask = nib.load(out / "1BS001" / "mask.nii.gz").get_fdata() > 0
    ct = fine.get_fdata()
    assert np.array_equal(mask, labels > 0) and labels.max() <= 9 and np.all(ct[~mask] == -1000)
    assert json.loads((out / "dataset.json").read_text())["spacing_mm"] == [2.0, 2.0, 2.0]

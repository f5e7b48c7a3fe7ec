"""nnU-Net v2 export of SynthRAD-layout SYNTHETIC subjects (phantoms at 6 mm, 32 x 38 x 32 voxels)."""

import json
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion_medical.data.phantom import TISSUE_LABELS, write_phantom_dataset
from sci_diffusion_medical.io.nifti import MedicalInputError, save_like, save_volume
from sci_diffusion_medical.synthetic.nnunet import nnunet_labels, write_nnunet_dataset

from .conftest import assert_one_sentence_naming

NAME = "Dataset501_SciDiffusionSynthetic"
IDS = ("1BA001", "1BA002")


@pytest.fixture(scope="module")
def synthrad(tmp_path_factory) -> Path:
    """Two phantoms in the SynthRAD layout, 1BA001's MR with a JSON sidecar; treat as read-only."""
    root = tmp_path_factory.mktemp("synthrad")
    write_phantom_dataset(root, subjects=2, spacing_mm=6.0, seed=0)
    (root / "1BA001" / "mr.json").write_text(json.dumps({"synthetic": True, "generator": "test sidecar"}))
    return root


@pytest.fixture
def synthrad_copy(synthrad, tmp_path) -> Path:
    """A writable copy of `synthrad`, for breaking."""
    return Path(shutil.copytree(synthrad, tmp_path / "synthrad"))


def _descrip(path) -> str:
    return bytes(nib.load(str(path)).header["descrip"]).decode("ascii", errors="replace")


def test_export_writes_the_nnunet_layout_on_the_source_grid(synthrad, tmp_path):
    summary = write_nnunet_dataset(synthrad, tmp_path / "raw", channels=("mr", "ct"))
    folder = tmp_path / "raw" / NAME
    assert summary["path"] == str(folder) and summary["cases"] == list(IDS)
    assert summary["channels"] == {"0": "MR", "1": "CT"}
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == [f"{i}_{c:04d}.nii.gz" for i in IDS for c in (0, 1)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"{i}.nii.gz" for i in IDS]
    assert not [p for p in (tmp_path / "raw").iterdir() if p.name.startswith(".")]  # no partial folder left
    for pid in IDS:
        source = {k: nib.load(str(synthrad / pid / f"{k}.nii.gz")) for k in ("mr", "ct", "labels")}
        written = {"mr": folder / "imagesTr" / f"{pid}_0000.nii.gz", "ct": folder / "imagesTr" / f"{pid}_0001.nii.gz",
                   "labels": folder / "labelsTr" / f"{pid}.nii.gz"}
        for key, path in written.items():
            img = nib.load(str(path))
            assert img.shape == source[key].shape == source["mr"].shape
            np.testing.assert_allclose(img.affine, source[key].affine, atol=1e-6)
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(source[key].dataobj))
            assert img.get_data_dtype() == source[key].get_data_dtype()
            assert "SYNTHETIC" in _descrip(path)
        assert nib.load(str(written["labels"])).get_data_dtype() == np.uint8
    provenance = json.loads((folder / "provenance" / "1BA001.json").read_text())
    assert provenance["sidecars"]["mr"]["generator"] == "test sidecar"
    assert provenance["files"]["labelsTr/1BA001.nii.gz"] == str((synthrad / "1BA001" / "labels.nii.gz").resolve())
    assert json.loads((folder / "provenance" / "source_dataset.json").read_text())["synthetic"] is True


def test_dataset_json_has_nnunet_fields_and_says_synthetic(synthrad, tmp_path):
    write_nnunet_dataset(synthrad, tmp_path, dataset_name="Dataset777_Phantoms")
    folder = tmp_path / "Dataset777_Phantoms"
    content = json.loads((folder / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "MR"}
    assert content["labels"] == nnunet_labels()
    assert content["labels"]["background"] == 0 and content["labels"]["sinus_air"] == 9
    assert sorted(content["labels"].values()) == sorted(TISSUE_LABELS)
    assert content["numTraining"] == len(IDS) == len(list((folder / "labelsTr").iterdir()))
    assert content["file_ending"] == ".nii.gz"
    assert content["synthetic"] is True and content["source"] == str(synthrad.resolve())
    for key in ("description", "reference", "licence"):
        assert "SYNTHETIC" in content[key]
    assert "not patients" in content["licence"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"{i}_0000.nii.gz" for i in IDS]


def test_a_subject_without_labels_is_refused_and_nothing_is_written(synthrad_copy, tmp_path):
    (synthrad_copy / "1BA002" / "labels.nii.gz").unlink()
    with pytest.raises(MedicalInputError) as err:
        write_nnunet_dataset(synthrad_copy, tmp_path / "raw")
    assert_one_sentence_naming(err.value, synthrad_copy / "1BA002")
    assert "labels" in str(err.value)
    assert not (tmp_path / "raw" / NAME).exists()
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_an_existing_non_empty_data_set_is_kept_unless_overwrite(synthrad, tmp_path):
    write_nnunet_dataset(synthrad, tmp_path)
    stale = tmp_path / NAME / "imagesTr" / "stale_0000.nii.gz"
    stale.write_bytes(b"left from an earlier export")
    with pytest.raises(MedicalInputError) as err:
        write_nnunet_dataset(synthrad, tmp_path)
    assert_one_sentence_naming(err.value, tmp_path / NAME)
    assert stale.exists()
    write_nnunet_dataset(synthrad, tmp_path, overwrite=True)
    assert not stale.exists() and (tmp_path / NAME / "imagesTr" / "1BA001_0000.nii.gz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_unknown_label_values_are_refused(synthrad_copy, tmp_path):
    path = synthrad_copy / "1BA001" / "labels.nii.gz"
    labels = np.asanyarray(nib.load(str(path)).dataobj).copy()
    labels[0, 0, 0] = len(TISSUE_LABELS) + 2
    save_like(labels, path, path)
    with pytest.raises(MedicalInputError) as err:
        write_nnunet_dataset(synthrad_copy, tmp_path)
    assert_one_sentence_naming(err.value, path)
    assert "12" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthrad"]  # 1BA001 failed: no data set, no partial folder


def test_labels_on_another_grid_are_refused(synthrad_copy, tmp_path):
    path = synthrad_copy / "1BA002" / "labels.nii.gz"
    img = nib.load(str(path))
    shifted = img.affine.copy()
    shifted[:3, 3] += 3.0
    save_volume(np.asanyarray(img.dataobj), shifted, path)
    with pytest.raises(MedicalInputError) as err:
        write_nnunet_dataset(synthrad_copy, tmp_path)
    assert_one_sentence_naming(err.value, path)
    assert "affines" in str(err.value)


def test_images_not_marked_synthetic_are_refused(synthrad_copy, tmp_path):
    path = synthrad_copy / "1BA001" / "mr.nii.gz"
    img = nib.load(str(path))
    img.header["descrip"] = b"T1 MPRAGE"
    nib.save(img, str(path))
    with pytest.raises(MedicalInputError) as err:
        write_nnunet_dataset(synthrad_copy, tmp_path)
    assert_one_sentence_naming(err.value, path)


class _SerialPool:
    """Stands in for multiprocessing pools: nnU-Net's checks run unchanged, in this process, one at a time."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def starmap(self, fn, iterable):
        return [fn(*args) for args in iterable]


def test_nnunet_verify_dataset_integrity_accepts_the_export(synthrad, tmp_path, monkeypatch, capsys):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    pytest.importorskip("nnunetv2")
    import nnunetv2.utilities.utils as nnunet_utils
    from nnunetv2.experiment_planning import verify_dataset_integrity as vdi

    # one CPU: nnU-Net's pools (12 forked workers to list files, `num_processes` spawned ones to read volumes) run serially
    monkeypatch.setattr(nnunet_utils, "Pool", _SerialPool)
    serial = SimpleNamespace(get_context=lambda method=None: SimpleNamespace(Pool=_SerialPool))
    monkeypatch.setattr(vdi, "multiprocessing", serial)

    def no_network(*args, **kwargs):
        raise AssertionError("nnU-Net tried to reach the network.")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    summary = write_nnunet_dataset(synthrad, tmp_path / "nnUNet_raw", channels=("mr", "ct"))
    capsys.readouterr()
    vdi.verify_dataset_integrity(summary["path"], num_processes=1)  # raises on a broken data set
    report = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in report
    assert "Error" not in report and "Warning" not in report  # nnU-Net only warns about shifted or rotated labels

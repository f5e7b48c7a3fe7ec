import numpy as np
import pytest

from sci_diffusion_medical.data.pairs import find_synthrad_pairs, pairs_from_triplets, validate_pair
from sci_diffusion_medical.io.nifti import MedicalInputError, save_volume

from .conftest import assert_one_sentence_naming

AFFINE = np.array([[1.0, 0, 0, -4.0], [0, 1.0, 0, -5.0], [0, 0, 2.5, -6.0], [0, 0, 0, 1]])


def _write_patient(folder, shape=(8, 9, 10), affine=AFFINE, mr=None, ct=None, mask=None):
    rng = np.random.default_rng(0)
    mr = rng.uniform(0, 200, shape) if mr is None else mr
    ct = rng.uniform(-1000, 1500, shape) if ct is None else ct
    if mask is None:
        mask = np.zeros(shape, np.uint8)
        mask[2:-2, 2:-2, 2:-2] = 1
    for name, array in (("mr", mr), ("ct", ct), ("mask", mask)):
        save_volume(array, affine, folder / f"{name}.nii.gz")
    return {"id": folder.name, **{k: str(folder / f"{k}.nii.gz") for k in ("mr", "ct", "mask")}}


def test_find_synthrad_pairs_finds_patients_at_any_depth_and_ignores_other_files(tmp_path):
    brain = tmp_path / "Task1" / "brain"
    for pid in ("1BA002", "1BA001", "1BC010"):
        _write_patient(brain / pid)
    (brain / "overview").mkdir()
    (brain / "overview" / "1_brain_train.xlsx").write_text("not used")
    (brain / "1BA001" / "notes.txt").write_text("not used")
    pairs = find_synthrad_pairs(brain)
    assert [p["id"] for p in pairs] == ["1BA001", "1BA002", "1BC010"]
    assert pairs[0] == {"id": "1BA001", **{k: str(brain / "1BA001" / f"{k}.nii.gz") for k in ("mr", "ct", "mask")}}
    assert [p["id"] for p in find_synthrad_pairs(tmp_path / "Task1")] == ["1BA001", "1BA002", "1BC010"]


def test_find_synthrad_pairs_names_a_patient_without_ct(tmp_path):
    folder = tmp_path / "1BA001"
    _write_patient(folder)
    (folder / "ct.nii.gz").unlink()
    with pytest.raises(MedicalInputError) as err:
        find_synthrad_pairs(tmp_path)
    assert_one_sentence_naming(err.value, folder)
    assert find_synthrad_pairs(tmp_path, require=("mr", "mask"))[0]["id"] == "1BA001"


def test_find_synthrad_pairs_names_a_folder_without_patients(tmp_path):
    with pytest.raises(MedicalInputError) as err:
        find_synthrad_pairs(tmp_path)
    assert_one_sentence_naming(err.value, tmp_path)


def test_pairs_from_triplets_accepts_any_layout(tmp_path):
    pair = _write_patient(tmp_path / "p7")
    pairs = pairs_from_triplets([(pair["mr"], pair["ct"], pair["mask"]), (pair["mr"], pair["ct"], pair["mask"], "case9")])
    assert [p["id"] for p in pairs] == ["p7", "case9"]
    assert validate_pair(pairs[0])["shape"] == (8, 9, 10)


def test_validate_pair_accepts_a_good_pair_and_reports_its_geometry(tmp_path):
    summary = validate_pair(_write_patient(tmp_path / "1BA001"))
    assert summary == {"id": "1BA001", "shape": (8, 9, 10), "spacing_mm": (1.0, 1.0, 2.5)}


def test_validate_pair_names_the_file_whose_shape_differs(tmp_path):
    pair = _write_patient(tmp_path / "1BA001")
    save_volume(np.zeros((8, 9, 11)), AFFINE, pair["ct"])
    with pytest.raises(MedicalInputError, match="shape") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["ct"])


def test_validate_pair_names_the_file_whose_affine_differs(tmp_path):
    pair = _write_patient(tmp_path / "1BA001")
    nearly = AFFINE.copy()
    nearly[0, 3] += 5e-4  # within the 1e-3 tolerance
    save_volume(np.ones((8, 9, 10)), nearly, pair["mask"])
    validate_pair(pair)
    moved = AFFINE.copy()
    moved[0, 3] += 0.01
    save_volume(np.ones((8, 9, 10)), moved, pair["mask"])
    with pytest.raises(MedicalInputError, match="affine") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["mask"])


def test_validate_pair_names_the_file_with_nans(tmp_path):
    mr = np.ones((8, 9, 10))
    mr[3, 3, 3] = np.nan
    pair = _write_patient(tmp_path / "1BA001", mr=mr)
    with pytest.raises(MedicalInputError, match="NaN") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["mr"])


def test_validate_pair_names_an_empty_mask(tmp_path):
    pair = _write_patient(tmp_path / "1BA001", mask=np.zeros((8, 9, 10), np.uint8))
    with pytest.raises(MedicalInputError, match="empty") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["mask"])


def test_validate_pair_names_a_file_that_is_not_a_nifti(tmp_path):
    pair = _write_patient(tmp_path / "1BA001")
    with open(pair["ct"], "wb") as f:
        f.write(b"DICM, not a NIfTI")
    with pytest.raises(MedicalInputError, match="NIfTI") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["ct"])


def test_validate_pair_names_a_volume_that_is_not_3d(tmp_path):
    pair = _write_patient(tmp_path / "1BA001")
    save_volume(np.zeros((8, 9, 10, 2)), AFFINE, pair["mr"])
    with pytest.raises(MedicalInputError, match="3-D") as err:
        validate_pair(pair)
    assert_one_sentence_naming(err.value, pair["mr"])

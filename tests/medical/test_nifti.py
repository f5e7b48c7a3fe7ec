import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sci_diffusion_medical.io.nifti import MedicalInputError, load_volume, save_like, save_volume

from .conftest import assert_one_sentence_naming


def _oblique_reference(path, shear: bool = True):
    """An int16 CT-like reference with an oblique sform (with shear) and a different qform."""
    rotation = Rotation.from_euler("xyz", [17.0, -8.0, 31.0], degrees=True).as_matrix()
    qform = np.eye(4)
    qform[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    qform[:3, 3] = [-101.5, 37.25, -64.0]
    sform = qform.copy()
    if shear:
        sform[0, 1] += 0.05  # a shear the quaternion qform cannot hold
    data = np.random.default_rng(0).integers(-1000, 2000, size=(9, 10, 11)).astype(np.int16)
    img = nib.Nifti1Image(data, sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    nib.save(img, str(path))
    return img, qform, sform


def test_save_like_keeps_oblique_affine_qform_sform_pixdim_and_units(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    ref, qform, sform = _oblique_reference(ref_path)
    array = np.random.default_rng(1).normal(size=ref.shape).astype(np.float32)

    out = save_like(array, ref_path, tmp_path / "sct.nii.gz")
    data, affine, header = load_volume(out)

    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(affine, sform, atol=1e-5)
    saved_q, q_code = header.get_qform(coded=True)
    saved_s, s_code = header.get_sform(coded=True)
    assert (int(q_code), int(s_code)) == (1, 2)
    np.testing.assert_allclose(saved_q, qform, atol=1e-5)
    np.testing.assert_allclose(saved_s, sform, atol=1e-5)
    np.testing.assert_allclose(header["pixdim"][1:4], ref.header["pixdim"][1:4])
    assert header.get_xyzt_units() == ("mm", "sec")
    assert header["pixdim"][0] == ref.header["pixdim"][0]  # qfac


def test_save_like_accepts_a_loaded_image_as_reference(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    _oblique_reference(ref_path, shear=False)
    ref = nib.load(str(ref_path))
    out = save_like(np.zeros(ref.shape, np.float32), ref, tmp_path / "out.nii")
    np.testing.assert_allclose(load_volume(out)[1], ref.affine, atol=1e-5)


def test_save_like_description_says_synthetic_within_80_bytes(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    ref, _, _ = _oblique_reference(ref_path)
    out = save_like(np.zeros(ref.shape, np.float32), ref_path, tmp_path / "a.nii.gz", description="model output " + "x" * 200)
    descrip = bytes(load_volume(out)[2]["descrip"])
    assert descrip.startswith(b"SYNTHETIC")
    assert len(descrip) <= 80
    default = save_like(np.zeros(ref.shape, np.float32), ref_path, tmp_path / "b.nii.gz")
    assert b"SYNTHETIC" in bytes(load_volume(default)[2]["descrip"])


def test_save_like_writes_json_sidecar_beside_the_image(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    ref, _, _ = _oblique_reference(ref_path)
    save_like(np.zeros(ref.shape, np.float32), ref_path, tmp_path / "sct.nii.gz", sidecar={"model": "ddpm", "steps": 50})
    sidecar = json.loads((tmp_path / "sct.json").read_text())
    assert sidecar == {"synthetic": True, "model": "ddpm", "steps": 50}


def test_save_like_leaves_no_temporary_file_and_overwrites_atomically(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    ref, _, _ = _oblique_reference(ref_path)
    for value in (1.0, 2.0):
        save_like(np.full(ref.shape, value, np.float32), ref_path, tmp_path / "sct.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "sct.nii.gz"]
    assert np.all(load_volume(tmp_path / "sct.nii.gz")[0] == 2.0)


def test_save_like_rejects_an_array_off_the_reference_grid(tmp_path):
    ref_path = tmp_path / "ct.nii.gz"
    _oblique_reference(ref_path)
    with pytest.raises(MedicalInputError) as err:
        save_like(np.zeros((3, 3, 3), np.float32), ref_path, tmp_path / "sct.nii.gz")
    assert_one_sentence_naming(err.value, ref_path)
    assert not (tmp_path / "sct.nii.gz").exists()


def test_save_volume_sets_qform_and_sform_to_the_affine(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-95.0, -111.0, -95.0]
    out = save_volume(np.ones((4, 5, 6), bool), affine, tmp_path / "mask.nii.gz")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(img.header.get_qform(), affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


@pytest.mark.parametrize("content", [b"this is not an image\n", gzip.compress(b"not a nifti either" * 100)])
def test_load_volume_names_the_file_that_is_not_a_nifti(tmp_path, content):
    path = tmp_path / "mr.nii.gz"
    path.write_bytes(content)
    with pytest.raises(MedicalInputError) as err:
        load_volume(path)
    assert_one_sentence_naming(err.value, path)
    assert isinstance(err.value, ValueError)


def test_load_volume_names_a_missing_file(tmp_path):
    with pytest.raises(MedicalInputError) as err:
        load_volume(tmp_path / "absent.nii.gz")
    assert_one_sentence_naming(err.value, tmp_path / "absent.nii.gz")


def test_load_volume_names_a_truncated_file(tmp_path):
    path = tmp_path / "ct.nii.gz"
    save_volume(np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4), path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(MedicalInputError) as err:
        load_volume(path)
    assert_one_sentence_naming(err.value, path)

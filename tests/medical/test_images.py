"""Real data as it comes: NIfTI, MetaImage and DICOM series through one MONAI pipeline, onto a model's
RAS grid and back onto the input's own grid; translate and evaluate on SynthRAD2023 and 2025 layouts."""
from __future__ import annotations

import json

import itk
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sci_diffusion.cli import main
from sci_diffusion_medical.data.pairs import find_synthrad_pairs, pairs_from_triplets
from sci_diffusion_medical.data.phantom import make_head_phantom
from sci_diffusion_medical.io.images import load_for_model, read_volume, save_on_input_grid, to_input_grid
from sci_diffusion_medical.io.nifti import MedicalInputError

from .conftest import assert_one_sentence_naming

SHAPE = (24, 28, 20)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK and DICOM store LPS; nibabel and MONAI's affines are RAS


def axcodes_affine(codes: str, zooms=(1.0, 1.0, 2.5), origin=(-11.0, 7.5, -20.0)) -> np.ndarray:
    """(4, 4) RAS+ affine whose voxel axes point along ``codes`` (e.g. "PIR": i to posterior, j to inferior, k to right)."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, code in enumerate(codes):
        world = "RAS".index(code) if code in "RAS" else "LPI".index(code)
        affine[world, axis] = zooms[axis] * (1.0 if code in "RAS" else -1.0)
    affine[:3, 3] = origin
    return affine


def smooth_pattern(affine: np.ndarray, shape) -> np.ndarray:
    """A smooth function of world position (mm), sampled on a grid: the same anatomy whatever the storage."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    x, y, z = np.moveaxis(ijk @ affine[:3, :3].T + affine[:3, 3], -1, 0)
    return (100.0 + 40.0 * np.sin(x / 15.0) + 30.0 * np.cos(y / 20.0) + 0.5 * z).astype(np.float32)


def write_mha(path, array: np.ndarray, ras_affine: np.ndarray) -> None:
    """Write (X, Y, Z) data with ITK itself: ITK's index order is reversed in numpy, its geometry LPS."""
    image = itk.image_from_array(np.ascontiguousarray(np.asarray(array).T))
    lps = LPS_FROM_RAS @ ras_affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(lps[:3, :3] / spacing)))
    itk.imwrite(image, str(path))


def interior(array: np.ndarray, margin: int = 2) -> np.ndarray:
    return array[(slice(margin, -margin),) * 3]


# ----- onto the model's grid and back -----------------------------------------------------------------
@pytest.mark.parametrize("codes, zooms, voxel_mm", [
    ("LPS", (1.0, 1.0, 2.5), 2.0),
    ("PIR", (1.0, 2.5, 1.0), 2.0),
    ("ASL", (2.5, 1.0, 1.0), (1.5, 1.5, 1.5)),
    ("RAS", (1.0, 1.0, 1.0), 2.0),  # a 1 mm volume that the model sees at 2 mm
    ("PIR", (1.0, 2.5, 1.0), None),  # reoriented only
])
def test_a_volume_in_any_orientation_goes_to_the_model_grid_and_back_onto_its_own(tmp_path, codes, zooms, voxel_mm):
    affine = axcodes_affine(codes, zooms)
    volume = smooth_pattern(affine, SHAPE)
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:-4, 5:-5, 3:-3] = 1
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "mr.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")

    loaded = load_for_model({"mr": tmp_path / "mr.nii.gz", "mask": tmp_path / "mask.nii.gz"}, voxel_mm)

    assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    extent = np.abs(affine[:3, :3]) @ (np.array(SHAPE) - 1)  # mm along R, A, S between the outer voxel centres
    expected_zooms = np.abs(affine[:3, :3]).sum(axis=1) if voxel_mm is None else np.broadcast_to(voxel_mm, (3,))
    np.testing.assert_allclose(loaded.zooms, expected_zooms)
    np.testing.assert_allclose((np.array(loaded.arrays["mr"].shape) - 1) * loaded.zooms, extent, atol=np.max(expected_zooms))
    # the model's grid holds the same anatomy: the pattern sampled at its own voxel positions
    np.testing.assert_allclose(interior(loaded.arrays["mr"]), interior(smooth_pattern(loaded.affine, loaded.arrays["mr"].shape)),
                               atol=0.5)
    assert set(np.unique(loaded.arrays["mask"])) <= {0.0, 1.0}  # nearest neighbours for masks

    back = to_input_grid(loaded.arrays["mr"], loaded)
    assert back.shape == SHAPE
    np.testing.assert_allclose(interior(back), interior(volume), atol=0.5)  # HU-like units; the pattern spans 30..170
    assert np.abs(back - volume).max() < 6.0  # the outermost voxels lie up to a model voxel beyond its grid
    mask_back = to_input_grid(loaded.arrays["mask"], loaded, key="mask")
    assert set(np.unique(mask_back)) <= {0.0, 1.0}
    cube = np.ones((3, 3, 3), bool)
    edge = ndimage.binary_dilation(mask, cube) & ~ndimage.binary_erosion(mask, cube)  # nearest neighbours move it a voxel
    assert np.array_equal(mask_back[~edge], mask[~edge])

    out = save_on_input_grid(back, loaded, tmp_path / "out.nii.gz", description="test volume")
    written = nib.load(out)
    assert written.shape == SHAPE
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert written.header["descrip"].tobytes().startswith(b"SYNTHETIC")


def test_to_input_grid_keeps_channels_and_refuses_another_grid(tmp_path):
    affine = axcodes_affine("LPS")
    nib.save(nib.Nifti1Image(smooth_pattern(affine, SHAPE), affine), tmp_path / "mr.nii.gz")
    loaded = load_for_model({"mr": tmp_path / "mr.nii.gz"}, 2.0)
    stack = np.stack([loaded.arrays["mr"], 2 * loaded.arrays["mr"]])
    back = to_input_grid(stack, loaded)
    assert back.shape == (2, *SHAPE)
    np.testing.assert_allclose(back[1], 2 * back[0], rtol=1e-5)
    with pytest.raises(ValueError, match="model's grid"):
        to_input_grid(np.zeros(SHAPE, np.float32), loaded)


# ----- formats ----------------------------------------------------------------------------------------
def test_mha_reads_with_the_affine_nibabel_gives_for_the_same_geometry_and_writes_it_back(tmp_path):
    affine = axcodes_affine("PIR", (1.0, 2.5, 1.0))
    volume = smooth_pattern(affine, SHAPE)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "mr.nii.gz")
    write_mha(tmp_path / "mr.mha", volume, affine)

    array, mha_affine = read_volume(tmp_path / "mr.mha")
    np.testing.assert_allclose(mha_affine, nib.load(tmp_path / "mr.nii.gz").affine, atol=1e-5)
    np.testing.assert_array_equal(array, volume)
    from_mha = load_for_model({"mr": tmp_path / "mr.mha"}, 2.0)
    from_nii = load_for_model({"mr": tmp_path / "mr.nii.gz"}, 2.0)
    np.testing.assert_allclose(from_mha.affine, from_nii.affine, atol=1e-5)
    np.testing.assert_allclose(from_mha.arrays["mr"], from_nii.arrays["mr"], atol=1e-4)

    out = save_on_input_grid(to_input_grid(from_mha.arrays["mr"], from_mha), from_mha, tmp_path / "out.mha",
                             description="CT test", sidecar={"model": "none"})
    written, source = itk.imread(str(out)), itk.imread(str(tmp_path / "mr.mha"))
    np.testing.assert_allclose(np.asarray(written.GetSpacing()), np.asarray(source.GetSpacing()))
    np.testing.assert_allclose(np.asarray(written.GetOrigin()), np.asarray(source.GetOrigin()), atol=1e-5)
    np.testing.assert_allclose(itk.array_from_matrix(written.GetDirection()), itk.array_from_matrix(source.GetDirection()),
                               atol=1e-6)
    assert written["Description"].startswith("SYNTHETIC")
    assert json.loads((tmp_path / "out.json").read_text()) == {"synthetic": True, "model": "none"}
    np.testing.assert_allclose(interior(read_volume(out)[0]), interior(volume), atol=0.5)


def write_dicom_series(folder, volume: np.ndarray, origin_lps, pixel_spacing, slice_mm) -> None:
    """One axial MR slice per file from (X columns, Y rows, Z slices) int16 data, written in reverse order."""
    import pydicom  # a dev dependency: DICOM as another tool writes it; reading goes through ITK (GDCM)
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "SYNTHETIC", k + 1
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2] + slice_mm * k)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # rows along +x (L), columns along +y (P)
        ds.PixelSpacing = list(pixel_spacing)  # (between rows, between columns) in mm
        ds.SliceThickness = slice_mm
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16)).tobytes()  # row by row
        ds.save_as(folder / f"IM{volume.shape[2] - k:04d}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(folder / "IM0001.dcm").InstanceNumber == volume.shape[2]


def test_a_dicom_series_folder_reads_with_its_shape_spacing_and_position(tmp_path):
    volume = (np.arange(np.prod((24, 28, 6))).reshape(24, 28, 6) % 1500 - 200).astype(np.int16)
    write_dicom_series(tmp_path / "series", volume, origin_lps=(-10.0, -20.0, 30.0), pixel_spacing=(0.8, 0.7), slice_mm=3.0)

    array, affine = read_volume(tmp_path / "series")

    np.testing.assert_array_equal(array, volume)
    expected = np.diag([-0.7, -0.8, 3.0, 1.0])  # columns 0.7 mm along L, rows 0.8 mm along P, slices 3 mm up
    expected[:3, 3] = [10.0, 20.0, 30.0]
    np.testing.assert_allclose(affine, expected, atol=1e-5)
    loaded = load_for_model({"mr": tmp_path / "series"}, 2.0)
    np.testing.assert_allclose(loaded.zooms, 2.0)
    assert to_input_grid(loaded.arrays["mr"], loaded).shape == volume.shape


# ----- SynthRAD layouts -------------------------------------------------------------------------------
def test_synthrad2025_mha_patients_are_found_and_scored_against_nifti_predictions(phantom_dir, tmp_path):
    ref = tmp_path / "Task1" / "HN"
    pred = tmp_path / "pred"
    pred.mkdir()
    for pid in ("1BA001", "1BA002"):
        (ref / pid).mkdir(parents=True)
        for name in ("mr", "ct", "mask"):
            array, affine = read_volume(phantom_dir / pid / f"{name}.nii.gz")
            write_mha(ref / pid / f"{name}.mha", array, affine)
        (pred / f"{pid}.nii.gz").write_bytes((phantom_dir / pid / "ct.nii.gz").read_bytes())

    pairs = find_synthrad_pairs(tmp_path)
    assert [p["id"] for p in pairs] == ["1BA001", "1BA002"]
    assert pairs[0]["mr"] == str(ref / "1BA001" / "mr.mha")
    assert pairs_from_triplets([(pairs[0]["mr"], pairs[0]["ct"], pairs[0]["mask"])])[0]["id"] == "1BA001"
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "mri2ct", "--pred", str(pred), "--ref", str(tmp_path), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_patients"] == 2 and report["mean"]["mae"] == 0.0


def test_evaluate_names_an_unreadable_mha_reference_in_one_line(phantom_dir, tmp_path, capfd):
    ref, pred = tmp_path / "ref" / "1BA001", tmp_path / "pred"
    ref.mkdir(parents=True)
    pred.mkdir()
    for name in ("ct", "mask"):
        write_mha(ref / f"{name}.mha", *read_volume(phantom_dir / "1BA001" / f"{name}.nii.gz"))
    (pred / "1BA001.nii.gz").write_bytes((phantom_dir / "1BA001" / "ct.nii.gz").read_bytes())
    (ref / "ct.mha").write_bytes((ref / "ct.mha").read_bytes()[:-1000])
    code = main(["evaluate", "mri2ct", "--pred", str(pred), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "m.json")])
    err = capfd.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(ref / "ct.mha") in err


def test_a_patient_folder_with_the_same_volume_in_two_formats_is_named(phantom_dir, tmp_path):
    folder = tmp_path / "1BA001"
    folder.mkdir()
    for name in ("mr", "ct", "mask"):
        (folder / f"{name}.nii.gz").write_bytes((phantom_dir / "1BA001" / f"{name}.nii.gz").read_bytes())
    write_mha(folder / "ct.mha", *read_volume(folder / "ct.nii.gz"))
    with pytest.raises(MedicalInputError, match="keep one") as err:
        find_synthrad_pairs(tmp_path)
    assert_one_sentence_naming(err.value, folder)


# ----- translate on real-data formats -----------------------------------------------------------------
def test_translate_an_lps_mha_at_other_voxels_writes_the_sct_on_its_grid(regression_ckpt, tmp_path, capsys):
    """The model was trained on 4 mm phantoms; this MR has 4 x 5 x 6 mm voxels and is stored LPS in a
    .mha (as SynthRAD2025). The sCT has the MR's grid, and is the same as for the same MR stored RAS in
    a NIfTI."""
    mr, _, mask, _, affine = make_head_phantom(np.random.default_rng(3), spacing_mm=(4.0, 5.0, 6.0))
    nib.save(nib.Nifti1Image(mr, affine), tmp_path / "mr.nii.gz")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = np.array(mr.shape[:2]) - 1  # voxel i -> n-1-i along x and y: stored LPS
    lps_affine = affine @ flip
    write_mha(tmp_path / "mr.mha", mr[::-1, ::-1], lps_affine)
    write_mha(tmp_path / "mask.mha", mask[::-1, ::-1], lps_affine)

    for name, out, extra in (("mr.mha", "sct.mha", []), ("mr.nii.gz", "sct.nii.gz", []),
                             ("mr.mha", "masked.mha", ["--mask", str(tmp_path / "mask.mha")])):
        assert main(["translate", "--mr", str(tmp_path / name), "--ckpt", str(regression_ckpt),
                     "--out", str(tmp_path / out), *extra]) == 0
    assert "resampled to the model's [4.0, 4.0, 4.0] mm" in capsys.readouterr().err

    sct, sct_affine = read_volume(tmp_path / "sct.mha")
    assert sct.shape == mr.shape
    np.testing.assert_allclose(sct_affine, lps_affine, atol=1e-4)
    np.testing.assert_allclose(nib.load(tmp_path / "sct.nii.gz").affine, affine, atol=1e-5)
    assert itk.imread(str(tmp_path / "sct.mha"))["Description"].startswith("SYNTHETIC")
    np.testing.assert_allclose(sct[::-1, ::-1], nib.load(tmp_path / "sct.nii.gz").get_fdata(), atol=1e-2)
    assert (sct == -1000.0).mean() > 0.2 and (sct > -1000.0).mean() > 0.2  # body from the derived mask, air outside
    side = json.loads((tmp_path / "sct.json").read_text())
    assert side["input_voxel_mm"] == [4.0, 5.0, 6.0] and side["model_voxel_mm"] == [4.0, 4.0, 4.0]
    masked, body = read_volume(tmp_path / "masked.mha")[0], mask[::-1, ::-1] > 0
    assert np.all(masked[~body] == -1000.0)  # air outside the given mask, on the MR's own grid
    assert masked[body].min() >= -1024.0 and masked[body].max() <= 3000.01  # HU; float32 rounding


def _garbage(tmp_path):
    path = tmp_path / "mr.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nnot really a MetaImage\n")
    return path


def _truncated(tmp_path):
    path = tmp_path / "mr.mha"
    write_mha(path, np.ones(SHAPE, np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:-500])
    return path


def _empty_folder(tmp_path):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "README.txt").write_text("no images here")
    return tmp_path / "dicom"


def _two_d(tmp_path):
    path = tmp_path / "slice.mha"
    itk.imwrite(itk.image_from_array(np.zeros((28, 24), np.float32)), str(path))
    return path


def _png(tmp_path):
    path = tmp_path / "mr.png"
    path.write_bytes(b"\x89PNG")
    return path


@pytest.mark.parametrize("make, words", [(_garbage, "could not be read"), (_truncated, "could not be read"),
                                         (_empty_folder, "no DICOM"), (_two_d, "3-D"), (_png, "NIfTI")])
def test_translate_names_bad_input_in_one_sentence_and_exits_2(regression_ckpt, tmp_path, capfd, make, words):
    bad = make(tmp_path)
    code = main(["translate", "--mr", str(bad), "--ckpt", str(regression_ckpt), "--out", str(tmp_path / "sct.mha")])
    err = capfd.readouterr().err.strip()  # capfd: ITK writes its own warnings to the process's stderr
    assert code == 2, err
    assert err.startswith("sci-diffusion: error: ") and "\n" not in err and err.endswith(".")
    assert str(bad) in err and words in err
    assert not (tmp_path / "sct.mha").exists()


def test_translate_names_a_mask_whose_shape_differs_from_the_mha_mr(regression_ckpt, tmp_path, capfd):
    write_mha(tmp_path / "mr.mha", smooth_pattern(np.eye(4), SHAPE), np.eye(4))
    nib.save(nib.Nifti1Image(np.ones((24, 28, 19), np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    code = main(["translate", "--mr", str(tmp_path / "mr.mha"), "--mask", str(tmp_path / "mask.nii.gz"),
                 "--ckpt", str(regression_ckpt), "--out", str(tmp_path / "sct.nii.gz")])
    err = capfd.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(tmp_path / "mask.nii.gz") in err and "shape" in err


def test_training_reads_the_synthrad2025_layout_as_it_reads_nifti(phantom_dir, tmp_path):
    """One pipeline for training and inference: a patient stored as .mha gives the same training slices."""
    from sci_diffusion_medical.data.slices import SliceDataset

    nifti_pair = find_synthrad_pairs(phantom_dir)[0]
    folder = tmp_path / "Task1" / nifti_pair["id"]
    folder.mkdir(parents=True)
    for key in ("mr", "ct", "mask"):
        array, affine = read_volume(nifti_pair[key])
        write_mha(folder / f"{key}.mha", array, affine)
    mha_pair = find_synthrad_pairs(tmp_path / "Task1")[0]
    assert mha_pair["mr"].endswith("mr.mha")
    from_nifti, from_mha = SliceDataset([nifti_pair], k=3), SliceDataset([mha_pair], k=3)
    assert len(from_mha) == len(from_nifti)
    for i in (0, len(from_mha) // 2):
        for key in ("mr", "ct", "mask"):
            np.testing.assert_allclose(from_mha[i][key], from_nifti[i][key], rtol=0, atol=1e-5)

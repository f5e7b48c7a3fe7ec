"""Issue 30 §5, the fixes from review: an empty reference mask, 4-D NIfTI with one time point, DICOM folders with
several series, and one mask rule everywhere. Each test fails on the code before its fix."""
import shutil

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_medical.data.transforms import mri2ct_transforms, normalise_mr
from sci_diffusion_medical.evaluation.metrics import mae, tissue_mae
from sci_diffusion_medical.io.images import read_image, read_volume
from sci_diffusion_medical.io.masks import binary_mask
from sci_diffusion_medical.io.nifti import MedicalInputError, load_volume, save_like
from sci_diffusion_medical.translation.inputs import load_inputs

from .conftest import run_expecting_error


# ----- (b) evaluate mri2ct with an empty reference mask -----------------------------------------------------
def test_evaluate_names_an_empty_reference_mask_in_one_sentence_and_exits_2(phantom_dir, tmp_path, capsys):
    ref = tmp_path / "ref"
    shutil.copytree(phantom_dir / "1BA001", ref / "1BA001")
    mask, _, _ = load_volume(ref / "1BA001" / "mask.nii.gz")
    save_like(np.zeros_like(mask, dtype=np.uint8), ref / "1BA001" / "mask.nii.gz", ref / "1BA001" / "mask.nii.gz")
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(ref / "1BA001" / "ct.nii.gz", pred / "1BA001.nii.gz")
    err = run_expecting_error(["evaluate", "mri2ct", "--pred", str(pred), "--ref", str(ref), "--out",
                               str(tmp_path / "m.json")], capsys)
    assert str(ref / "1BA001" / "mask.nii.gz") in err and "empty mask" in err and err.endswith(".")
    assert not (tmp_path / "m.json").exists()


# ----- (c) a 4-D NIfTI with one time point; DICOM folders with several series ------------------------------
def test_a_nifti_with_a_last_axis_of_1_is_read_as_its_volume_and_translates(subject, regression_ckpt, tmp_path):
    image = nib.load(subject["mr"])
    volume = np.asarray(image.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(volume[..., None], image.affine), tmp_path / "mr4d.nii.gz")
    array, affine = read_volume(tmp_path / "mr4d.nii.gz")
    np.testing.assert_array_equal(array, volume)
    np.testing.assert_allclose(affine, image.affine, atol=1e-6)
    assert main(["translate", "--mr", str(tmp_path / "mr4d.nii.gz"), "--mask", str(subject["mask"]), "--ckpt",
                 str(regression_ckpt), "--out", str(tmp_path / "sct.nii.gz")]) == 0
    assert nib.load(tmp_path / "sct.nii.gz").shape == volume.shape


def test_a_nifti_with_several_time_points_is_still_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), tmp_path / "mr.nii.gz")
    with pytest.raises(MedicalInputError, match="not a 3-D volume"):
        read_image(tmp_path / "mr.nii.gz")


@pytest.fixture
def two_series(tmp_path):
    """A folder with two DICOM MR series of different content; returns (folder, {SeriesInstanceUID: volume})."""
    import pydicom  # a dev dependency: DICOM as another tool writes it; reading goes through ITK (GDCM)

    from .test_images import write_dicom_series

    folder = tmp_path / "dicom"
    folder.mkdir()
    volumes = {}
    for n, offset in enumerate((0, 700)):
        volume = ((np.arange(24 * 28 * 6).reshape(24, 28, 6) + offset) % 1500).astype(np.int16)
        write_dicom_series(tmp_path / f"s{n}", volume, origin_lps=(-10.0, -20.0, 30.0), pixel_spacing=(0.8, 0.7),
                           slice_mm=3.0)
        for f in sorted((tmp_path / f"s{n}").iterdir()):
            f.rename(folder / f"S{n}_{f.name}")
        volumes[str(pydicom.dcmread(folder / f"S{n}_IM0001.dcm").SeriesInstanceUID)] = volume
    return folder, volumes


def test_a_dicom_folder_with_several_series_is_refused_with_the_series_listed(two_series, tmp_path, capfd):
    folder, volumes = two_series
    with pytest.raises(MedicalInputError) as err:
        read_image(folder)
    message = str(err.value)
    assert str(folder) in message and "\n" not in message and "--series" in message
    assert all(uid in message for uid in volumes)
    code = main(["translate", "--mr", str(folder), "--out", str(tmp_path / "sct.nii.gz")])
    cli_err = capfd.readouterr().err.strip()
    assert code == 2 and "\n" not in cli_err and all(uid in cli_err for uid in volumes)


def test_series_picks_one_series_of_a_dicom_folder(two_series):
    folder, volumes = two_series
    for uid, volume in volumes.items():
        np.testing.assert_array_equal(read_image(folder, series=uid).numpy(), volume)
    with pytest.raises(MedicalInputError, match="names none"):
        read_image(folder, series="1.2.3.4")


# ----- (d) one mask rule: > 0.5 in training, translate and the metrics --------------------------------------
@pytest.fixture
def fractional_mask(subject, tmp_path):
    """The subject's mask with its outer shell at 0.4 (a mask resampled linearly by another tool): (path, array)."""
    mask, _, _ = load_volume(subject["mask"])
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask > 0, iterations=2)
    fractional = np.where(eroded, 1.0, np.where(mask > 0, 0.4, 0.0)).astype(np.float32)
    save_like(fractional, subject["mask"], tmp_path / "mask.nii.gz")
    return tmp_path / "mask.nii.gz", fractional


def test_training_translate_and_metrics_read_a_fractional_mask_the_same_way(subject, fractional_mask):
    path, fractional = fractional_mask
    body = binary_mask(fractional)
    assert body.sum() < (fractional > 0).sum()  # the 0.4 shell is not body
    training = mri2ct_transforms(("mr", "ct", "mask"))({"mr": str(subject["mr"]), "ct": str(subject["ct"]),
                                                         "mask": str(path)})
    np.testing.assert_array_equal(training["mask"][0].numpy() > 0, body)
    inputs = load_inputs(subject["mr"], path)
    np.testing.assert_array_equal(inputs["mask"], body)
    np.testing.assert_array_equal(inputs["input_mask"], body)
    ct, _, _ = load_volume(subject["ct"])
    pred = ct + np.where(body, 10.0, 500.0)  # 10 HU off in the body, 500 HU off in the shell
    assert mae(pred, ct, fractional) == pytest.approx(10.0)
    assert tissue_mae(pred, ct, ct, fractional)["soft_tissue"] == pytest.approx(10.0)
    mr, _, _ = load_volume(subject["mr"])
    np.testing.assert_array_equal(normalise_mr(mr, fractional), normalise_mr(mr, body))


# ----- (a) the residual state is 0 outside the body, in training and in sampling -----------------------------
def test_the_residual_state_is_zero_outside_the_body_in_training_and_sampling(regression_ckpt):
    import torch

    from sci_diffusion_medical.models.residual import MRItoCTResidualDiffusion

    model = MRItoCTResidualDiffusion(regression_ckpt=str(regression_ckpt), channels=(8, 16), num_head_channels=8,
                                     attention_levels=(False, True), norm_num_groups=8, scale_channels=(8, 16)).eval()
    ct, mr = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros_like(ct)
    mask[..., 6:26, 4:20] = 1.0
    outside = mask == 0
    batch = model.prepare_batch({"ct": ct, "mr": mr, "mask": mask})
    assert torch.all(batch.x0[outside] == 0) and torch.all(batch.x0[~outside] != 0)
    noised = model.loss_fn.noise(batch, torch.Generator().manual_seed(0))
    assert torch.all(noised.x_t[outside] == 0) and torch.all(noised.x_t[~outside] != 0)
    mean = model.regression_mean(mr)
    states = []
    out = model.synthesise(mr, steps=3, generator=torch.Generator().manual_seed(1), mask=mask,
                           callback=lambda i, s, x, x0: states.append(x))  # CT units: mean + scale * state
    for x in states:
        torch.testing.assert_close(x[outside], mean[outside], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[outside], mean[outside], rtol=0, atol=1e-6)
    assert not torch.allclose(out[~outside], mean[~outside])  # the body is sampled


def test_a_residual_checkpoint_from_before_the_fix_samples_as_it_was_trained(residual_ckpt):
    """The bundled residual model learnt the unmasked residual: it keeps sampling so (its outputs do not move), while
    a model trained now holds the state at 0 outside the body."""
    from sci_diffusion.checkpoints import bundled_checkpoint, load_module

    assert load_module(bundled_checkpoint("sci_diffusion_medical", "translation")).hparams.zero_outside_body is False
    assert load_module(residual_ckpt).hparams.zero_outside_body is True

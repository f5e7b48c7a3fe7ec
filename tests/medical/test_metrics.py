import json

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.evaluation.directory import evaluate_directory
from sci_diffusion_medical.evaluation.metrics import (
    calibrated_coverage,
    mae,
    psnr,
    reliability_curve,
    ssim,
    tissue_mae,
    uncertainty_coverage,
    uncertainty_error_correlation,
)
from sci_diffusion_medical.io.figures import reliability_diagram
from sci_diffusion_medical.io.nifti import MedicalInputError, load_volume, save_like, save_volume
from sci_diffusion_medical.translation.volume import mean_and_std

from .conftest import assert_one_sentence_naming


@pytest.fixture
def tiny_case():
    """10x10x10 reference and prediction in HU, with values beyond [-1024, 3000], and a mask."""
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1100.0, 3200.0, (10, 10, 10))
    pred = ref + rng.normal(0.0, 150.0, ref.shape)
    pred[0, 0, :3] = [-3000.0, 5000.0, 4000.0]
    mask = np.zeros(ref.shape, np.uint8)
    mask[2:9, 1:8, 3:10] = 1
    mask[0, 0, :3] = 1
    return pred, ref, mask


def test_mae_matches_hand_computation_without_clipping(tiny_case):
    pred, ref, mask = tiny_case
    expected = np.sum(np.abs(ref * mask - pred * mask)) / np.sum(mask)
    assert mae(pred, ref, mask) == pytest.approx(expected, rel=1e-12)
    clipped = np.sum(np.abs(np.clip(ref, -1024, 3000) - np.clip(pred, -1024, 3000)) * mask) / mask.sum()
    assert mae(pred, ref, mask) != pytest.approx(clipped)


def test_psnr_matches_hand_computation_with_clip_and_mask(tiny_case):
    pred, ref, mask = tiny_case
    inside = mask > 0
    mse = np.mean((np.clip(ref, -1024, 3000)[inside] - np.clip(pred, -1024, 3000)[inside]) ** 2)
    expected = 10.0 * np.log10(4024.0**2 / mse)
    assert psnr(pred, ref, mask) == pytest.approx(expected, rel=1e-12)


def test_errors_outside_the_mask_change_no_metric(tiny_case):
    pred, ref, mask = tiny_case
    spoiled = pred.copy()
    spoiled[mask == 0] += 900.0
    assert mae(spoiled, ref, mask) == mae(pred, ref, mask)
    assert psnr(spoiled, ref, mask) == psnr(pred, ref, mask)
    assert ssim(spoiled, ref, mask) == pytest.approx(ssim(pred, ref, mask), abs=1e-12)


def test_ssim_of_identical_images_is_one(tiny_case):
    _, ref, mask = tiny_case
    assert ssim(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)
    assert psnr(ref, ref, mask) == float("inf")
    assert mae(ref, ref, mask) == 0.0


def test_ssim_crop_and_mask_match_an_explicit_skimage_call(tiny_case):
    pred, ref, mask = tiny_case
    lo, hi = -1024.0, 3000.0
    a = np.where(mask > 0, np.clip(ref, lo, hi), lo) + 1024.0
    b = np.where(mask > 0, np.clip(pred, lo, hi), lo) + 1024.0
    _, ssim_map = structural_similarity(a, b, win_size=7, data_range=4024.0, full=True)
    expected = ssim_map[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3] > 0].mean()
    assert ssim(pred, ref, mask) == pytest.approx(expected, rel=1e-12)
    # The crop and the mask both matter: neither the whole map nor the uncropped mask gives it.
    assert expected != pytest.approx(ssim_map.mean(), rel=1e-6)
    assert expected != pytest.approx(ssim_map[mask > 0].mean(), rel=1e-6)


def test_tissue_mae_splits_air_soft_tissue_and_bone_by_ct_thresholds():
    ref = np.full((4, 4, 4), 40.0)
    ref[0] = -1000.0  # air (< -200 HU)
    ref[1] = 800.0  # bone (> 200 HU)
    ref[2, 0, 0] = 200.0  # soft tissue at the threshold
    pred = ref + np.where(ref < -200, 10.0, np.where(ref > 200, 30.0, 20.0))
    assert tissue_mae(pred, ref, ref) == {"air": 10.0, "soft_tissue": 20.0, "bone": 30.0}


def test_tissue_mae_uses_phantom_labels_when_given():
    labels = np.array([0, 9, 1, 2, 5, 6, 7, 8, 3, 4], dtype=np.float32).reshape(10, 1, 1)  # as loaded
    ref = np.zeros(labels.shape)
    error = np.array([1, 3, 10, 10, 10, 10, 10, 10, 100, 200], dtype=float).reshape(labels.shape)
    result = tissue_mae(ref + error, ref, labels)
    assert result == {"air": 2.0, "soft_tissue": 10.0, "bone": 150.0}
    mask = np.ones(labels.shape)
    mask[0] = 0
    assert tissue_mae(ref + error, ref, labels, mask)["air"] == 3.0


def test_uncertainty_error_correlation_is_pearson_r_of_std_and_absolute_error_in_mask():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 6, 6))
    error = rng.uniform(-5, 5, ref.shape)
    mask = rng.uniform(size=ref.shape) > 0.3
    std = np.abs(error) * 2.0 + 1.0
    assert uncertainty_error_correlation(std, ref + error, ref, mask) == pytest.approx(1.0)
    noise = rng.uniform(size=ref.shape)
    expected = np.corrcoef(noise[mask], np.abs(error)[mask])[0, 1]
    assert uncertainty_error_correlation(noise, ref + error, ref, mask) == pytest.approx(expected)
    assert np.isnan(uncertainty_error_correlation(np.ones(ref.shape), ref + error, ref, mask))


def test_coverage_of_gaussian_errors_with_their_true_std_is_68_and_95_percent(tmp_path):
    rng = np.random.default_rng(0)
    sigma = rng.uniform(5.0, 200.0, size=(60, 60, 60))  # HU, a different std at every voxel
    ref = rng.uniform(-1000, 1000, sigma.shape)
    pred = ref + rng.normal(size=sigma.shape) * sigma
    mask = np.ones(sigma.shape, bool)
    mask[:, :, :5] = False
    pred[~mask] = 1e6  # outside the mask: ignored
    calibrated = uncertainty_coverage(sigma, pred, ref, mask)
    assert calibrated["coverage_1sigma"] == pytest.approx(0.6827, abs=0.003)  # 198,000 voxels: s.e. 0.001
    assert calibrated["coverage_2sigma"] == pytest.approx(0.9545, abs=0.002)
    overconfident = uncertainty_coverage(sigma / 2, pred, ref, mask)  # P(|z| < 0.5), P(|z| < 1)
    assert overconfident["coverage_1sigma"] == pytest.approx(0.3829, abs=0.003)
    assert overconfident["coverage_2sigma"] == pytest.approx(0.6827, abs=0.003)
    curve = reliability_curve(sigma, pred, ref, mask, bins=8)
    assert sum(curve["voxels"]) == mask.sum() and len(curve["rmse"]) == 8
    assert curve["predicted_std"] == sorted(curve["predicted_std"])
    np.testing.assert_allclose(curve["rmse"], curve["predicted_std"], rtol=0.03)  # on the diagonal
    doubled = reliability_curve(2 * sigma, pred, ref, mask, bins=8)  # underconfident: below it
    np.testing.assert_allclose(np.array(doubled["rmse"]) / doubled["predicted_std"], 0.5, rtol=0.03)
    png = reliability_diagram({"calibrated": curve, "2x std": doubled}, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_predictions(phantom_dir, pred_dir, nested: bool, offset_hu: float = 10.0, with_std: bool = False):
    for pair in find_synthrad_pairs(phantom_dir):
        ct, _, _ = load_volume(pair["ct"])
        name = pred_dir / pair["id"] / "sct.nii.gz" if nested else pred_dir / f"{pair['id']}.nii.gz"
        save_like(ct + offset_hu, pair["ct"], name)
        if with_std:
            std_name = name.with_name("sct_std.nii.gz" if nested else f"{pair['id']}_std.nii.gz")
            save_like(np.abs(np.random.default_rng(0).normal(size=ct.shape)).astype(np.float32), pair["ct"], std_name)


def test_evaluate_directory_scores_both_prediction_layouts_and_writes_json(phantom_dir, tmp_path):
    results = {}
    for nested in (False, True):
        pred_dir = tmp_path / f"pred_nested_{nested}"
        _write_predictions(phantom_dir, pred_dir, nested, with_std=nested)
        out = tmp_path / f"metrics_{nested}.json"
        report = evaluate_directory(pred_dir, phantom_dir, out)
        written = json.loads(out.read_text())
        for key in ("mae", "psnr", "ssim", "tissue_mae.air", "tissue_mae.soft_tissue", "tissue_mae.bone"):
            assert written["mean"][key] == pytest.approx(report["mean"][key])
        assert report["n_patients"] == 2 and sorted(report["patients"]) == ["1BA001", "1BA002"]
        results[nested] = report
    for report in results.values():
        assert report["mean"]["mae"] == pytest.approx(10.0, abs=1e-4)  # a constant 10 HU error
        assert report["mean"]["psnr"] == pytest.approx(20 * np.log10(4024 / 10.0), abs=0.05)
        assert 0.99 < report["mean"]["ssim"] <= 1.0
        assert report["mean"]["tissue_mae.bone"] == pytest.approx(10.0, abs=1e-4)
    assert results[False]["mean"]["ssim"] == results[True]["mean"]["ssim"]
    # A constant error has no correlation with anything: NaN in Python, null in the JSON.
    assert np.isnan(results[True]["patients"]["1BA001"]["uncertainty_error_r"])
    assert json.loads((tmp_path / "metrics_True.json").read_text())["mean"]["uncertainty_error_r"] is None


def test_evaluate_directory_names_a_missing_prediction(phantom_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    _write_predictions(phantom_dir, pred_dir, nested=False)
    (pred_dir / "1BA002.nii.gz").unlink()
    with pytest.raises(MedicalInputError) as err:
        evaluate_directory(pred_dir, phantom_dir, tmp_path / "m.json")
    assert_one_sentence_naming(err.value, pred_dir / "1BA002.nii.gz")
    assert not (tmp_path / "m.json").exists()
    report = evaluate_directory(pred_dir, phantom_dir, tmp_path / "m.json", allow_missing=True)
    assert report["missing_predictions"] == ["1BA002"] and report["n_patients"] == 1


def test_evaluate_directory_names_a_prediction_on_another_grid(phantom_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    _write_predictions(phantom_dir, pred_dir, nested=False)
    ref = phantom_dir
    ct, affine, _ = load_volume(ref / "1BA001" / "ct.nii.gz")
    shifted = affine.copy()
    shifted[0, 3] += 1.0
    save_volume(ct, shifted, pred_dir / "1BA001.nii.gz")
    with pytest.raises(MedicalInputError) as err:
        evaluate_directory(pred_dir, ref, tmp_path / "m.json")
    assert_one_sentence_naming(err.value, pred_dir / "1BA001.nii.gz")
    save_volume(ct[:-1], affine, pred_dir / "1BA001.nii.gz")
    with pytest.raises(MedicalInputError, match="shape"):
        evaluate_directory(pred_dir, ref, tmp_path / "m.json")


def test_neighbour_slice_difference_measures_stripes_between_slices():
    from sci_diffusion_medical.evaluation.metrics import neighbour_slice_difference

    z = np.arange(6, dtype=float)
    ramp = np.broadcast_to(10.0 * z, (4, 5, 6))  # 10 HU per slice along the axial axis
    mask = np.ones((4, 5, 6), bool)
    assert neighbour_slice_difference(ramp, mask) == pytest.approx(10.0)
    assert neighbour_slice_difference(ramp, mask, axis=0) == pytest.approx(0.0)
    mask[:, :, 3] = False  # pairs (2, 3) and (3, 4) leave; the rest still differ by 10
    stripes = ramp + np.where(z % 2 == 0, 0.0, 100.0)
    assert neighbour_slice_difference(stripes, mask) == pytest.approx((90 + 110 + 110) / 3)


def test_evaluate_directory_pools_every_patient_into_one_reliability_diagram(phantom_dir, tmp_path):
    pred_dir = tmp_path / "pred"
    _write_predictions(phantom_dir, pred_dir, nested=False, with_std=True)
    report = evaluate_directory(pred_dir, phantom_dir, tmp_path / "m.json", reliability_png=tmp_path / "rel.png")
    in_masks = sum(int((load_volume(p["mask"])[0] > 0).sum()) for p in find_synthrad_pairs(phantom_dir))
    assert sum(report["reliability_curve"]["voxels"]) == in_masks  # both patients, mask voxels only
    assert report["reliability_curve"]["rmse"] == pytest.approx([10.0] * 10, abs=1e-3)  # every error is +10 HU
    assert (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"
    plain = evaluate_directory(tmp_path / "pred", phantom_dir, tmp_path / "m2.json")  # no PNG asked: none drawn
    assert "reliability_png" not in plain


@pytest.mark.parametrize("k", [2, 4, 8])
def test_a_calibrated_sampler_with_k_samples_covers_what_calibrated_coverage_says(k):
    """Truth and K samples drawn from one Gaussian per voxel: the K-mean's coverage by the samples' std."""
    rng = np.random.default_rng(k)
    sigma = rng.uniform(5.0, 200.0, size=(40, 40, 40))
    centre = rng.uniform(-1000, 1000, sigma.shape)
    ref = centre + rng.normal(size=sigma.shape) * sigma
    samples = centre + rng.normal(size=(k, *sigma.shape)) * sigma
    mask = np.ones(sigma.shape, bool)
    mean, std = mean_and_std(samples, mask)
    measured, expected = uncertainty_coverage(std, mean, ref, mask), calibrated_coverage(k)
    for key in ("coverage_1sigma", "coverage_2sigma"):  # 64,000 voxels: s.e. below 0.002
        assert measured[key] == pytest.approx(expected[key], abs=0.006)
    assert calibrated_coverage(4) == pytest.approx({"coverage_1sigma": 0.563, "coverage_2sigma": 0.828}, abs=0.001)
    assert calibrated_coverage(10**6) == pytest.approx({"coverage_1sigma": 0.6827, "coverage_2sigma": 0.9545}, abs=0.001)

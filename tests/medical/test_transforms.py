import numpy as np
import pytest
import torch

from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.data.transforms import ct_to_unit, mri2ct_transforms, normalise_mr, unit_to_ct
from sci_diffusion_medical.io.nifti import MedicalInputError, load_volume, save_volume


def test_ct_to_unit_maps_the_metric_window_onto_minus_one_to_one_and_clips():
    hu = np.array([-3000.0, -1024.0, 988.0, 3000.0, 5000.0])
    np.testing.assert_allclose(ct_to_unit(hu), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-12)


def test_unit_to_ct_inverts_ct_to_unit_in_the_window_for_numpy_and_torch():
    hu = np.linspace(-1024.0, 3000.0, 101)
    np.testing.assert_allclose(unit_to_ct(ct_to_unit(hu)), hu, atol=1e-9)
    t = torch.tensor(hu, dtype=torch.float32)
    torch.testing.assert_close(unit_to_ct(ct_to_unit(t)), t, atol=1e-3, rtol=0)


def test_normalise_mr_takes_percentiles_inside_the_mask_only():
    rng = np.random.default_rng(0)
    mr = rng.uniform(0.0, 100.0, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(mr.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    mr[~mask] = 1e4  # outside-mask values must not move the percentiles
    out = normalise_mr(mr, mask)
    lo, hi = np.percentile(mr[mask], [0.5, 99.5])
    expected = np.clip((mr[mask] - lo) / (hi - lo) * 2 - 1, -1, 1)
    np.testing.assert_allclose(out[mask], expected, atol=1e-5)
    assert np.all(out[~mask] == -1.0)
    np.testing.assert_allclose(normalise_mr(mr * 3.0, mask), out, atol=1e-5)  # scanner gain cancels


def test_normalise_mr_works_on_channel_first_tensors():
    mr = torch.rand(1, 8, 8, 8) * 100
    mask = torch.zeros_like(mr)
    mask[:, 2:6, 2:6, 2:6] = 1
    out = normalise_mr(mr, mask)
    assert out.shape == mr.shape and out.dtype == torch.float32
    assert out.min() == -1.0 and out.max() == 1.0


def test_normalise_mr_rejects_an_empty_mask():
    with pytest.raises(MedicalInputError):
        normalise_mr(np.ones((4, 4, 4)), np.zeros((4, 4, 4)))


def test_pipeline_ct_equals_ct_to_unit_and_mr_is_normalised_in_mask(phantom_dir):
    pair = find_synthrad_pairs(phantom_dir)[0]
    data = mri2ct_transforms()({k: pair[k] for k in ("mr", "ct", "mask")})
    raw_ct, affine, _ = load_volume(pair["ct"])
    raw_mr, _, _ = load_volume(pair["mr"])
    raw_mask, _, _ = load_volume(pair["mask"])
    assert data["ct"].shape == (1, *raw_ct.shape)
    np.testing.assert_allclose(data["ct"][0].numpy(), ct_to_unit(raw_ct), atol=1e-6)
    np.testing.assert_allclose(data["mr"][0].numpy(), normalise_mr(raw_mr, raw_mask), atol=1e-5)
    np.testing.assert_allclose(data["mr"].affine.numpy(), affine, atol=1e-5)
    assert set(torch.unique(data["mask"]).tolist()) == {0.0, 1.0}


def test_pipeline_reorients_lps_files_to_ras(tmp_path):
    shape = (6, 7, 8)
    ct = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    lps = np.diag([-1.5, -1.5, 2.0, 1.0])
    for name, array in (("mr", ct + 1.0), ("ct", ct), ("mask", np.ones(shape))):
        save_volume(array, lps, tmp_path / f"{name}.nii.gz")
    data = mri2ct_transforms()({k: str(tmp_path / f"{k}.nii.gz") for k in ("mr", "ct", "mask")})
    assert np.all(np.diag(data["ct"].affine.numpy())[:3] > 0)
    np.testing.assert_allclose(data["ct"][0].numpy(), ct_to_unit(ct[::-1, ::-1, :]), atol=1e-6)


def test_pipeline_resamples_to_a_requested_spacing(phantom_dir):
    pair = find_synthrad_pairs(phantom_dir)[0]
    data = mri2ct_transforms(("mr", "mask"), spacing_mm=8.0)({k: pair[k] for k in ("mr", "mask")})
    assert data["mr"].shape == (1, 24, 28, 24)
    np.testing.assert_allclose(np.diag(data["mask"].affine.numpy())[:3], [8.0, 8.0, 8.0])

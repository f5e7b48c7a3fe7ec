import json

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion_medical.data.head_anatomy import LABEL, TISSUE_LABELS
from sci_diffusion_medical.data.pairs import find_synthrad_pairs, validate_pair
from sci_diffusion_medical.data.phantom import make_head_phantom

# docs/protocols.md §2, "Tissue values for a paired head phantom" (HU). "~15" for CSF is
# read as 5-25; sinus air allows partial volume with its bony walls.
REFERENCE_CT_HU = {
    "air": (-1000, -1000),
    "skin": (10, 55),
    "fat": (-100, -50),
    "cortical_bone": (1000, 1900),
    "diploe": (300, 700),
    "csf": (5, 25),
    "ventricle": (5, 25),
    "grey_matter": (37, 45),
    "white_matter": (20, 30),
    "sinus_air": (-1000, -900),
}


def _median(volume, labels, name):
    return float(np.median(volume[labels == LABEL[name]]))


def test_phantom_is_a_head_sized_ras_grid_at_2_mm(head_2mm):
    mr, ct, mask, labels, affine = head_2mm
    assert mr.shape == ct.shape == mask.shape == labels.shape == (96, 112, 96)
    assert (mr.dtype, ct.dtype, mask.dtype, labels.dtype) == (np.float32, np.float32, np.float32, np.uint8)
    np.testing.assert_allclose(np.diag(affine)[:3], [2.0, 2.0, 2.0])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    body = mask > 0
    assert not (body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any() or body[:, :, -1].any())


def test_ct_is_minus_1000_outside_the_mask_and_the_mask_covers_the_body(head_2mm):
    _, ct, mask, labels, _ = head_2mm
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert np.all(ct[mask == 0] == -1000.0)
    assert np.all(mask[labels > 0] == 1)
    assert np.all(ct == np.round(ct)) and ct.min() >= -1024


@pytest.mark.parametrize("tissue", sorted(REFERENCE_CT_HU))
def test_median_ct_of_each_tissue_label_is_within_the_reference_range(head_2mm, tissue):
    _, ct, _, labels, _ = head_2mm
    lo, hi = REFERENCE_CT_HU[tissue]
    assert lo <= _median(ct, labels, tissue) <= hi


def test_bone_is_bright_on_ct_and_dark_on_mr(head_2mm):
    mr, ct, _, labels, _ = head_2mm
    bone = labels == LABEL["cortical_bone"]
    assert np.median(ct[bone]) > 1000
    assert np.median(mr[bone]) < 0.6 * _median(mr, labels, "grey_matter")


def test_cortical_bone_and_sinus_air_are_both_dark_on_mr_but_far_apart_on_ct(head_2mm):
    mr, ct, _, labels, _ = head_2mm
    dark = 0.6 * min(_median(mr, labels, t) for t in ("skin", "grey_matter", "white_matter"))
    assert _median(mr, labels, "cortical_bone") < dark
    assert _median(mr, labels, "sinus_air") < dark
    assert _median(ct, labels, "cortical_bone") - _median(ct, labels, "sinus_air") > 2000
    # The sinuses sit next to bone: most sinus-air voxels have a bone voxel within 4 mm.
    from scipy import ndimage

    near_bone = ndimage.binary_dilation(labels == LABEL["cortical_bone"], iterations=2)
    sinus = labels == LABEL["sinus_air"]
    assert near_bone[sinus].mean() > 0.5


def test_mr_follows_the_t1_contrast_of_the_reference_table(head_2mm):
    mr, _, _, labels, _ = head_2mm
    m = {name: _median(mr, labels, name) for name in TISSUE_LABELS.values()}
    assert m["air"] < m["csf"] < m["skin"] < m["grey_matter"] < m["white_matter"] < m["fat"]
    assert m["white_matter"] < m["diploe"]
    assert 0 < m["air"] < 0.1 * m["white_matter"]  # Rician noise floor, not zero


def test_mr_has_partial_volume_between_tissues(head_2mm):
    mr, _, _, labels, _ = head_2mm
    # Voxels labelled white matter but touching CSF take values between the two tissues.
    from scipy import ndimage

    wm = labels == LABEL["white_matter"]
    border = wm & ndimage.binary_dilation(labels == LABEL["ventricle"])
    assert np.median(mr[border]) < 0.95 * _median(mr, labels, "white_matter")


def test_two_subjects_differ_in_shape_pose_and_values():
    a = make_head_phantom(np.random.default_rng(1), spacing_mm=4.0)
    b = make_head_phantom(np.random.default_rng(2), spacing_mm=4.0)
    mask_a, mask_b = a[2] > 0, b[2] > 0
    dice = 2 * (mask_a & mask_b).sum() / (mask_a.sum() + mask_b.sum())
    assert dice < 0.97
    assert not np.allclose(a[4], b[4])
    assert not np.array_equal(a[3], b[3])


def test_the_same_generator_state_gives_the_same_subject():
    a = make_head_phantom(np.random.default_rng(7), spacing_mm=4.0)
    b = make_head_phantom(np.random.default_rng(7), spacing_mm=4.0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_a_seed_draws_the_phantom_it_always_has():
    """Data sets, benchmarks and the bundled models were made from these phantoms: a seed's subject must not
    change (the order of the random draws is part of the interface). Subject (0, 1) at 4 mm, pinned when the
    phantom was split into pose, anatomy and imaging; the tolerances only absorb float rounding (a few voxels
    of 47,561 whose HU rounds the other way). Swapping two draws of the anatomy moves the CT sum by 1,000 HU."""
    mr, ct, mask, labels, affine = make_head_phantom(np.random.default_rng([0, 1]), 4.0)
    counts = np.bincount(labels.ravel(), minlength=len(TISSUE_LABELS))
    expected = [85079, 11826, 6198, 5979, 4848, 2713, 224, 3538, 8074, 545]
    assert np.abs(counts - expected).max() <= 1, counts.tolist()
    body = mask > 0
    assert abs(int(body.sum()) - 47561) <= 1
    assert abs(float(ct[body].astype(np.float64).sum()) - 6750570.0) <= 20  # HU
    assert abs(float(mr[body].astype(np.float64).sum()) - 6268069.18) <= 5  # BrainWeb T1 units
    assert np.allclose(affine[:3, 3], [-78.4104, -107.7145, -81.9637], atol=1e-3)


def test_write_phantom_dataset_uses_the_synthrad_task1_layout(phantom_dir):
    pairs = find_synthrad_pairs(phantom_dir)
    assert [p["id"] for p in pairs] == ["1BA001", "1BA002"]
    for pair in pairs:
        summary = validate_pair(pair)
        assert summary["shape"] == (48, 56, 48)
        for key in ("mr", "ct", "mask", "labels"):
            img = nib.load(pair[key])
            assert b"SYNTHETIC" in bytes(img.header["descrip"])
            assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
            assert img.header.get_xyzt_units()[0] == "mm"
    manifest = json.loads((phantom_dir / "dataset.json").read_text())
    assert manifest["synthetic"] is True and manifest["subjects"] == ["1BA001", "1BA002"]
    assert manifest["tissue_labels"]["3"] == "cortical_bone"


def test_a_shifted_scanner_changes_only_the_mr():
    """Same anatomy and CT; MR contrasts differ (grey/white closer, CSF brighter).

    The body outline is derived from the MR, so the CT is compared where both outlines agree."""
    a = make_head_phantom(np.random.default_rng(7), spacing_mm=4.0)
    b = make_head_phantom(np.random.default_rng(7), spacing_mm=4.0, scanner="shifted")
    both = (a[2] > 0) & (b[2] > 0)
    np.testing.assert_array_equal(a[1][both], b[1][both])  # CT
    np.testing.assert_array_equal(a[3], b[3])  # labels
    np.testing.assert_array_equal(a[4], b[4])  # affine

    def contrast(mr, labels, high, low):
        return _median(mr, labels, high) / _median(mr, labels, low)

    assert contrast(b[0], b[3], "white_matter", "grey_matter") < contrast(a[0], a[3], "white_matter", "grey_matter") - 0.1
    assert contrast(b[0], b[3], "csf", "white_matter") > contrast(a[0], a[3], "csf", "white_matter") + 0.1
    with pytest.raises(ValueError, match="scanner"):
        make_head_phantom(np.random.default_rng(7), spacing_mm=4.0, scanner="mri")

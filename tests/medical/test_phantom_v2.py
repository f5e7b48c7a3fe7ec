"""Head phantom v2 (issue 30 §1): bone and air alike on MR, the hard anatomy at plausible sizes, a misregistration
of the stated size, a variable field of view, contrast families; and phantom v1 exactly as it was."""
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from skimage.filters import threshold_otsu
from skimage.registration import phase_cross_correlation

from sci_diffusion.cli import main
from sci_diffusion_medical.data.contrasts import CONTRAST_FAMILIES
from sci_diffusion_medical.data.head_anatomy import draw_anatomy, draw_head_pose, tissue_fractions
from sci_diffusion_medical.data.head_anatomy_v2 import STRUCTURE, TISSUE_LABELS_V2, draw_anatomy_v2, tissue_fractions_v2
from sci_diffusion_medical.data.phantom import make_head_phantom
from sci_diffusion_medical.data.phantom_v2 import (
    MAX_DEFORMATION_MM,
    MAX_ROTATION_DEG,
    MAX_SHIFT_MM,
    Misregistration,
    ct_as_the_mr_sees_it,
    displacement_mm,
    make_head_phantom_v2,
    write_phantom_dataset_v2,
)

from .conftest import run_expecting_error

V2_LABEL = {name: index for index, name in TISSUE_LABELS_V2.items()}
SPACING = 3.0  # coarse enough to be quick, fine enough for some pure bone voxels


def still(shape, shift_mm=(0.0, 0.0, 0.0)) -> Misregistration:
    """A misregistration that is a pure shift (zero: the MR aligned with the CT)."""
    return Misregistration(np.zeros(3), np.asarray(shift_mm, float), 0.0, np.zeros((3, *shape), np.float32))


def v2_fractions(seed, spacing=SPACING):
    pose, anatomy, face = draw_anatomy_v2(np.random.default_rng(seed), np.full(3, spacing))
    return pose, tissue_fractions_v2(pose, anatomy, face)[0]


@pytest.fixture(scope="module")
def aligned():
    """Subject (0, 1) at 3 mm drawn with its MR aligned to the CT, and its tissue fractions."""
    pose, fractions = v2_fractions([0, 1])
    return make_head_phantom_v2(np.random.default_rng([0, 1]), SPACING, misregistration=still(pose.shape)), fractions


def overlap_coefficient(a: np.ndarray, b: np.ndarray, bins: int = 30) -> float:
    """Sum over common bins of the smaller of the two normalised histograms: 1 for one law, 0 for disjoint ones."""
    edges = np.linspace(0.0, float(np.percentile(np.concatenate([a, b]), 99.5)), bins + 1)
    pa, pb = np.histogram(a, edges)[0] / a.size, np.histogram(b, edges)[0] / b.size
    return float(np.minimum(pa, pb).sum())


def pure(fractions, indices):
    """Voxels more than 90 % of the given tissues (no partial volume with others)."""
    return sum(fractions[i] for i in indices) > 0.9


def test_bone_and_air_are_alike_on_v2_mr_and_apart_on_v1_mr(aligned):
    phantom, fractions = aligned
    bone = pure(fractions, (V2_LABEL["cortical_bone"], V2_LABEL["teeth"]))
    air = pure(fractions, (V2_LABEL["sinus_air"], V2_LABEL["mastoid_air"])) & (phantom.mask > 0)
    assert bone.sum() > 50 and air.sum() > 50
    assert overlap_coefficient(phantom.mr[bone], phantom.mr[air]) > 0.4
    assert np.median(phantom.ct[bone]) - np.median(phantom.ct[air]) > 2000  # while the CT tells them apart
    rng = np.random.default_rng([0, 1])  # v1 draws its pose, then its anatomy, as make_head_phantom does
    pose = draw_head_pose(rng, np.full(3, SPACING))
    v1_fractions = tissue_fractions(pose, draw_anatomy(rng, pose))
    mr, _, mask, _, _ = make_head_phantom(np.random.default_rng([0, 1]), SPACING)
    v1 = overlap_coefficient(mr[pure(v1_fractions, (3,))], mr[pure(v1_fractions, (9,)) & (mask > 0)])
    assert v1 < 0.05, v1


def test_every_structure_is_there_at_a_plausible_size():
    """Volumes (mL) of subject (0, 2) at 3 mm against ranges an adult head falls in (and v2's module docstring)."""
    phantom = make_head_phantom_v2(np.random.default_rng([0, 2]), SPACING)
    ml = SPACING**3 / 1000.0
    assert set(np.unique(phantom.labels)) == set(TISSUE_LABELS_V2)
    volume = {name: float((phantom.structures == index).sum() * ml) for name, index in STRUCTURE.items()}
    expected = {"eye_left": (4.5, 8.5), "eye_right": (4.5, 8.5), "maxillary_sinus_left": (6, 20),
                "maxillary_sinus_right": (6, 20), "nasal_cavity": (6, 20), "frontal_sinus": (0.5, 10),
                "sphenoid_sinus": (1.5, 6), "mastoid_left": (3, 15), "mastoid_right": (3, 15), "teeth": (3, 15),
                "mandible": (10, 60)}
    for name, (low, high) in expected.items():
        assert low <= volume[name] <= high, (name, volume[name])
    for side in ("mastoid_left", "mastoid_right"):
        region = phantom.structures == STRUCTURE[side]
        assert 0.15 < (phantom.labels[region] == V2_LABEL["mastoid_air"]).mean() < 0.8  # air cells in bone
    sinus = phantom.structures == STRUCTURE["maxillary_sinus_left"]
    assert np.median(phantom.ct[sinus]) < -900 and np.median(phantom.ct[phantom.labels == V2_LABEL["teeth"]]) > 1500


def test_a_shift_of_the_mr_is_recovered_by_registering_it_to_the_ct():
    """Subject (0, 3) drawn twice, its MR aligned and shifted by one voxel (3 mm, -3 mm, 0): registering the MR's head
    outline (Otsu) to the CT's (> -500 HU) by phase correlation finds the shift, relative to the aligned pair's
    (a one-voxel shift, because phase correlation of linearly interpolated images biases subvoxel shifts towards
    0; the drawn misregistrations' sizes are checked on their fields below)."""
    pose, _ = v2_fractions([0, 3])
    shift = np.array([3.0, -3.0, 0.0])
    aligned = make_head_phantom_v2(np.random.default_rng([0, 3]), SPACING, misregistration=still(pose.shape))
    moved = make_head_phantom_v2(np.random.default_rng([0, 3]), SPACING, misregistration=still(pose.shape, shift))
    both = (aligned.mask > 0) & (moved.mask > 0)  # the body mask follows the MR, as SynthRAD's does
    np.testing.assert_array_equal(aligned.ct[both], moved.ct[both])  # the CT is the reference anatomy
    ct_head = (aligned.ct > -500).astype(float)

    def found(mr):  # mm; the MR shows what lies this far on
        return -phase_cross_correlation((mr > threshold_otsu(mr)).astype(float), ct_head, upsample_factor=20)[0] * SPACING

    np.testing.assert_allclose(found(moved.mr) - found(aligned.mr), shift, atol=0.2)
    assert moved.record["misregistration"]["shift_mm"] == shift.tolist()


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_the_drawn_misregistration_is_of_the_stated_size(seed):
    phantom = make_head_phantom_v2(np.random.default_rng([0, seed]), SPACING)
    mis = phantom.record["misregistration"]
    assert 0 <= mis["rotation_deg"] <= MAX_ROTATION_DEG and np.linalg.norm(mis["shift_mm"]) <= MAX_SHIFT_MM
    assert 0.5 <= mis["deformation_mm"] <= MAX_DEFORMATION_MM
    deformation = np.linalg.norm(phantom.misregistration.deformation, axis=0)
    assert deformation.max() == pytest.approx(mis["deformation_mm"], rel=1e-4)
    field = np.linalg.norm(displacement_mm(phantom.affine, phantom.misregistration), axis=0)
    head = phantom.mask > 0
    axes = [phantom.affine[a, a] * np.arange(n) + phantom.affine[a, 3] for a, n in enumerate(phantom.mask.shape)]
    radius = np.linalg.norm(np.stack(np.meshgrid(*axes, indexing="ij")), axis=0)[head]  # mm from the head centre
    rotation = np.radians(mis["rotation_deg"]) * radius  # chord <= arc: the most a rotation moves each voxel
    bound = rotation + np.linalg.norm(mis["shift_mm"]) + mis["deformation_mm"]
    assert np.all(field[head] <= bound + 1e-3)
    # The stated worst case: 2 degrees at the bottom of the neck (<= 185 mm below the centre) + 1.5 + 2 mm.
    assert field[head].max() <= np.radians(MAX_ROTATION_DEG) * 185.0 + MAX_SHIFT_MM + MAX_DEFORMATION_MM
    assert field[head].mean() > 0.1


def test_seeds_reproduce_and_subjects_differ_in_field_of_view():
    a = make_head_phantom_v2(np.random.default_rng([7, 1]), 6.0)
    b = make_head_phantom_v2(np.random.default_rng([7, 1]), 6.0)
    for key in ("mr", "ct", "mask", "labels", "structures", "affine"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.record == b.record
    heights = {make_head_phantom_v2(np.random.default_rng([7, i]), 6.0).mr.shape for i in (2, 3, 4)}
    assert len({shape[2] for shape in heights | {a.mr.shape}}) > 1 and {shape[:2] for shape in heights} == {(32, 37)}


def test_the_held_out_family_changes_only_the_mr_and_reorders_its_tissues():
    t1 = make_head_phantom_v2(np.random.default_rng([0, 8]), 6.0, contrast="t1")
    t2 = make_head_phantom_v2(np.random.default_rng([0, 8]), 6.0, contrast="t2")
    both = (t1.mask > 0) & (t2.mask > 0)
    np.testing.assert_array_equal(t1.ct[both], t2.ct[both])
    np.testing.assert_array_equal(t1.labels, t2.labels)
    assert t1.record["misregistration"] == t2.record["misregistration"]
    s1, s2 = t1.record["mr_signals"], t2.record["mr_signals"]
    assert s1["csf"] < s1["white_matter"] and s2["csf"] > s2["white_matter"]  # CSF dark on T1, bright on T2
    assert s1["grey_matter"] < s1["white_matter"] and s2["grey_matter"] > s2["white_matter"]
    with pytest.raises(ValueError, match="contrast"):
        make_head_phantom_v2(np.random.default_rng(0), 6.0, contrast="flair")


def test_the_calibration_family_is_a_third_law_over_scanners():
    """pd (calibration only) changes only the MR, like t2, and orders its tissues as neither t1 nor t2 does."""
    t1 = make_head_phantom_v2(np.random.default_rng([0, 8]), 6.0, contrast="t1")
    pd = make_head_phantom_v2(np.random.default_rng([0, 8]), 6.0, contrast="pd")
    both = (t1.mask > 0) & (pd.mask > 0)
    np.testing.assert_array_equal(t1.ct[both], pd.ct[both])
    assert t1.record["misregistration"] == pd.record["misregistration"]
    s = pd.record["mr_signals"]
    assert s["grey_matter"] > s["white_matter"] and s["csf"] > s["grey_matter"]  # water content: not T1's order
    assert s["fat"] > 0.5 * s["csf"] and CONTRAST_FAMILIES["pd"].bias != CONTRAST_FAMILIES["t2"].bias  # not T2's


def test_the_registration_floor_is_the_ct_moved_with_the_mr():
    """Aligned, the floor is the CT itself; with the MR shifted by one voxel along x (it shows what lies one voxel
    on), the floor at voxel i is the CT at voxel i + 1."""
    pose, _ = v2_fractions([0, 3])
    aligned = make_head_phantom_v2(np.random.default_rng([0, 3]), SPACING, misregistration=still(pose.shape))
    body = aligned.mask > 0
    floor = ct_as_the_mr_sees_it(aligned)
    np.testing.assert_array_equal(floor[body], aligned.ct[body])
    assert np.all(floor[~body] == -1000.0)
    moved = make_head_phantom_v2(np.random.default_rng([0, 3]), SPACING,
                                 misregistration=still(pose.shape, (SPACING, 0.0, 0.0)))
    floor = ct_as_the_mr_sees_it(moved)
    inside = moved.mask[:-1] > 0
    np.testing.assert_allclose(floor[:-1][inside], moved.ct[1:][inside], atol=1e-3)
    assert np.abs(floor[:-1][inside] - moved.ct[:-1][inside]).mean() > 10.0  # the shift is not nothing


def test_pooled_sets_of_two_families_keep_their_subjects_apart(tmp_path):
    """Two families written with different centres under one root are found as distinct subjects."""
    from sci_diffusion_medical.data.pairs import find_synthrad_pairs

    a = write_phantom_dataset_v2(tmp_path / "t1", 1, 6.0, seed=0, contrast="t1")
    c = write_phantom_dataset_v2(tmp_path / "pd", 1, 6.0, seed=4, contrast="pd", centre="C")
    assert (a[0]["id"], c[0]["id"]) == ("1BA001", "1BC001")
    assert sorted(p["id"] for p in find_synthrad_pairs(tmp_path)) == ["1BA001", "1BC001"]


def test_phantom_v1_is_byte_for_byte_what_it_was():
    """Checksums of subject (0, 3) at 6 mm (every array make_head_phantom returns) and of the shifted scanner's
    subject (0, 1) at 4 mm, written by the code before issue 30 (commit 6c26ad1) on x86-64 Linux."""
    def checksum(volumes):
        digest = hashlib.sha256()
        for v in volumes:
            digest.update(np.ascontiguousarray(v).tobytes())
        return digest.hexdigest()[:16]

    assert checksum(make_head_phantom(np.random.default_rng([0, 3]), 6.0)) == "99dd78feb8ffd950"
    assert checksum(make_head_phantom(np.random.default_rng([0, 1]), 4.0, scanner="shifted")) == "651d3992c54a4cab"


def test_the_phantom_verb_writes_v2_with_its_structures_and_records(tmp_path, capsys):
    out = tmp_path / "v2"
    assert main(["phantom", "--version", "2", "--contrast", "t2", "--subjects", "1", "--spacing", "6",
                 "--out", str(out)]) == 0
    capsys.readouterr()  # its progress lines
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["version"] == 2 and manifest["contrast"] == "t2" and manifest["structures"]["10"] == "teeth"
    assert set(manifest["records"]["1BA001"]["misregistration"]) == {"rotation_deg", "rotation_axis", "shift_mm",
                                                                      "deformation_mm"}
    image = nib.load(out / "1BA001" / "structures.nii.gz")
    assert b"SYNTHETIC" in bytes(image.header["descrip"]) and np.asarray(image.dataobj).max() == 11
    err = run_expecting_error(["phantom", "--contrast", "t2", "--subjects", "1", "--out", str(tmp_path / "x")], capsys)
    assert "--version 2" in err
    err = run_expecting_error(["phantom", "--version", "2", "--scanner", "shifted", "--subjects", "1", "--out",
                               str(tmp_path / "y")], capsys)
    assert "--contrast" in err


def test_heads_of_different_heights_train_in_whole_slice_batches(tmp_path):
    """v2's variable field of view changes a head's height, not its axial slices: the v2 configs fit on whole slices
    in batches (the data module writes the v2 phantoms itself)."""
    from sci_diffusion_medical.data.datamodule import MRItoCTDataModule

    from .conftest import TINY_FIT, tiny_fit

    root = tmp_path / "v2"
    dm = MRItoCTDataModule(root=str(root), phantom_subjects=3, phantom_spacing_mm=6.0, phantom_version=2,
                           val_subjects=1, crop_size=None, batch_size=4)
    dm.prepare_data()
    dm.setup()
    heights = {v["mr"].shape[3] for v in dm.train_set.volumes + dm.val_set.volumes}
    assert len(heights) > 1 and dm.train_dataloader().batch_size == 4
    whole_slices = [arg for arg in TINY_FIT if not arg.startswith("--data.crop_size")] + ["--data.crop_size=null"]
    assert tiny_fit("mri2ct_v2_regression.yaml", root, tmp_path / "fit", ["--model.channels=[8,16]",
                    "--model.num_res_units=1", "--data.phantom_spacing_mm=6.0"], base=whole_slices).is_file()

"""The fidelity measures of issue 31 §3 (evaluation/fidelity.py, anatomy.py, diversity.py) on real phantom v2 heads
at 4 mm and on copies of them broken in known ways: each break must move its own measure, the right way, and leave
the others where real subjects put them."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sci_diffusion_medical.data.head_anatomy_v2 import TISSUE_LABELS_V2
from sci_diffusion_medical.data.phantom_v2 import make_head_phantom_v2, write_phantom_dataset_v2
from sci_diffusion_medical.evaluation.anatomy import STRIPING_TOLERANCE, brain_component_share, surface_to_volume
from sci_diffusion_medical.evaluation.fidelity import (
    BONE_MIN_HU,
    FidelitySubject,
    fidelity_subject,
    group_ct_medians,
    label_targets,
    measure_dataset,
    measure_subjects,
    tissue_distributions,
)

LABEL = {name: index for index, name in TISSUE_LABELS_V2.items()}
AXIS_NAMES = ("sagittal", "coronal", "axial")
LABEL_TARGETS = ("grey_matter_ct", "white_matter_ct", "csf_ct", "bone_ct", "air_ct")


@pytest.fixture(scope="module")
def real() -> list[FidelitySubject]:
    """Three phantom v2 subjects at 4 mm, read as the fidelity reads them."""
    subjects = []
    for i in range(3):
        p = make_head_phantom_v2(np.random.default_rng([31, i]), spacing_mm=4.0)
        subjects.append(fidelity_subject(f"R{i}", p.ct, p.mr, p.labels, p.mask, TISSUE_LABELS_V2, 4.0))
    return subjects


def changed(subject: FidelitySubject, **arrays) -> FidelitySubject:
    return dataclasses.replace(subject, **{"id": subject.id + "x", **arrays})


def test_real_heads_against_other_real_heads_meet_the_label_and_anatomy_targets(tmp_path):
    """Two folders of real subjects (different seeds), read from disk as a synthetic data set would be."""
    write_phantom_dataset_v2(tmp_path / "a", 2, 4.0, seed=1)
    write_phantom_dataset_v2(tmp_path / "b", 2, 4.0, seed=2)
    result = measure_dataset(tmp_path / "a", tmp_path / "b")
    targets = result["targets"]
    assert all(targets[t]["met"] for t in LABEL_TARGETS), {t: targets[t] for t in LABEL_TARGETS}
    assert abs(targets["grey_matter_ct"]["difference_hu"]) < 10
    assert targets["brain_in_one_piece"]["met"] and targets["brain_in_one_piece"]["value"] > 0.99
    for axis in AXIS_NAMES:
        assert targets[f"no_striping_{axis}"]["met"] and abs(targets[f"no_striping_{axis}"]["value"] - 1) < 0.15
    assert 0.85 < result["anatomy"]["roughness"]["all"]["ratio"] < 1.15
    assert result["spacing_mm"] == [4.0, 4.0, 4.0] and len(result["subjects"]["real"]) == 2
    assert result["tissues"]["grey_matter"]["ct"]["w1"] < 20  # HU; grey matter is drawn at 38-44 HU per subject
    assert result["tissues"]["grey_matter"]["mr"]["w1"] < 0.3  # normalised units, [-1, 1]


def test_a_set_measured_against_itself_meets_every_target_exactly(real):
    result = measure_subjects(real, real)
    assert result["targets_met"] == f"{len(result['targets'])}/{len(result['targets'])}"
    assert all(row["ratio"] == pytest.approx(1.0) for row in result["anatomy"]["slice_difference_hu"].values())
    assert result["diversity"]["difference"] == pytest.approx(0.0)
    assert result["tissues"]["grey_matter"]["ct"]["w1"] == pytest.approx(0.0)  # all of its voxels: no subsample
    assert result["tissues"]["cortical_bone"]["ct"]["w1"] < 5.0  # two subsamples of 20,000 of the same voxels


def test_permuted_labels_fail_the_label_targets_each_the_way_the_ct_moved(real):
    """Grey matter <-> cortical bone and white matter <-> sinus air swapped in the labels, the CT kept."""
    swap = {LABEL["grey_matter"]: LABEL["cortical_bone"], LABEL["cortical_bone"]: LABEL["grey_matter"],
            LABEL["white_matter"]: LABEL["sinus_air"], LABEL["sinus_air"]: LABEL["white_matter"]}
    lut = np.arange(256)
    for a, b in swap.items():
        lut[a] = b
    broken = [changed(s, labels=lut[s.labels].astype(np.int32)) for s in real]
    targets = measure_subjects(broken, real)["targets"]
    assert not any(targets[t]["met"] for t in ("grey_matter_ct", "white_matter_ct", "bone_ct", "air_ct"))
    assert targets["grey_matter_ct"]["difference_hu"] > 500  # bone's HU under the grey matter label
    assert targets["white_matter_ct"]["difference_hu"] < -500  # air's HU under the white matter label
    assert targets["bone_ct"]["value"] < BONE_MIN_HU and targets["air_ct"]["value"] > 0
    assert targets["csf_ct"]["met"]  # untouched


def test_ct_shuffled_across_the_body_fails_bone_and_air_and_moves_the_wasserstein_distance(real):
    rng = np.random.default_rng(0)

    def shuffled(s):
        ct = s.ct.copy()
        ct[s.body] = rng.permutation(ct[s.body])
        return changed(s, ct=ct)

    result = measure_subjects([shuffled(s) for s in real], real)
    targets = result["targets"]
    assert not targets["bone_ct"]["met"] and targets["bone_ct"]["value"] < BONE_MIN_HU
    assert not targets["air_ct"]["met"] and targets["air_ct"]["difference_hu"] > 500
    assert result["tissues"]["grey_matter"]["ct"]["w1"] > 100 > 10 * result["tissues"]["grey_matter"]["ct"]["w1_real_vs_real"]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stripes_across_one_axis_fail_the_striping_target_on_that_axis_only(real, axis):
    """Every other slice along ``axis`` brighter by 200 HU inside the body."""
    def striped(s):
        offset = np.zeros(s.ct.shape, np.float32)
        index = [slice(None)] * 3
        index[axis] = slice(0, None, 2)
        offset[tuple(index)] = 200.0
        return changed(s, ct=np.where(s.body, s.ct + offset, s.ct).astype(np.float32))

    targets = measure_subjects([striped(s) for s in real], real)["targets"]
    for other, name in enumerate(AXIS_NAMES):
        row = targets[f"no_striping_{name}"]
        if other == axis:
            assert not row["met"] and row["value"] > 1 + STRIPING_TOLERANCE
        else:
            assert row["met"] and row["value"] == pytest.approx(1.0)


def test_salt_and_pepper_labels_raise_the_roughness_and_break_the_brain_apart(real):
    rng = np.random.default_rng(1)

    def speckled(s):
        labels = s.labels.copy()
        flip = s.body & (rng.random(s.labels.shape) < 0.15)
        labels[flip] = rng.integers(1, max(TISSUE_LABELS_V2) + 1, int(flip.sum()))
        return changed(s, labels=labels)

    noisy = [speckled(s) for s in real]
    anatomy = measure_subjects(noisy, real)["anatomy"]
    assert anatomy["roughness"]["all"]["ratio"] > 1.5
    assert anatomy["roughness"]["white_matter"]["ratio"] > 1.5
    share = anatomy["brain_component_share"]
    assert share["real"]["min"] > 0.99 and share["synthetic"]["mean"] < share["real"]["mean"] - 0.03
    for clean, rough in zip(real, noisy):
        assert brain_component_share(rough.labels, rough.names) < brain_component_share(clean.labels, clean.names)


def test_surface_to_volume_of_a_cube_is_its_area_over_its_volume():
    labels = np.zeros((10, 10, 10), np.int32)
    labels[2:6, 2:6, 2:6] = 1  # 4 voxels a side, 2 mm: 8 mm edge
    sv = surface_to_volume([(labels, {0: "air", 1: "skin"})], (2.0, 2.0, 2.0))
    assert sv["skin"] == pytest.approx(6 * 8.0**2 / 8.0**3)


def test_copies_of_one_subject_are_far_less_diverse_than_real_subjects(real):
    copies = [changed(real[0], id=f"C{i}") for i in range(3)]
    diversity = measure_subjects(copies, real)["diversity"]
    assert diversity["synthetic"] == pytest.approx(1.0)
    assert diversity["real"] < 0.8 and diversity["difference"] > 0.2
    assert not diversity["target"]["met"] and diversity["pairs"] == {"synthetic": 3, "real": 3}


def test_labels_without_a_target_group_are_refused_not_passed(real):
    names = {k: ("airway" if v == "sinus_air" else v) for k, v in TISSUE_LABELS_V2.items()}
    renamed = [dataclasses.replace(s, names=names) for s in real]
    with pytest.raises(ValueError, match="air"):
        group_ct_medians(renamed, "synthetic")
    with pytest.raises(ValueError, match="sinus_air"):
        measure_subjects(renamed, real)


def test_label_targets_hold_at_their_bounds_and_say_which_way_they_miss():
    real = {"grey_matter": 40.0, "white_matter": 25.0, "csf": 12.0, "bone": 1100.0, "air": -995.0}
    at_bounds = label_targets({"grey_matter": 70.0, "white_matter": -5.0, "csf": 42.0, "bone": 700.0, "air": -800.0},
                              real)
    assert all(row["met"] for row in at_bounds.values())
    missed = label_targets({"grey_matter": 70.5, "white_matter": -5.5, "csf": None, "bone": 699.0, "air": -799.0}, real)
    assert not any(row["met"] for row in missed.values())
    assert missed["grey_matter_ct"]["difference_hu"] == 30.5 and missed["white_matter_ct"]["difference_hu"] == -30.5


def test_wasserstein_distances_are_seeded_and_measure_a_shift(real):
    """Subsampled to 500 voxels per tissue: the same seed gives the same numbers; grey matter moved by 100 HU is
    100 HU away."""
    gm = LABEL["grey_matter"]
    shifted = [changed(s, ct=np.where(s.labels == gm, s.ct + 100.0, s.ct).astype(np.float32)) for s in real]
    first = tissue_distributions(shifted, real, samples=500, seed=3)
    again = tissue_distributions(shifted, real, samples=500, seed=3)
    assert first == again
    assert first["grey_matter"]["ct"]["w1"] == pytest.approx(100.0, abs=5.0)
    assert first["grey_matter"]["ct"]["synthetic"]["median"] == pytest.approx(
        first["grey_matter"]["ct"]["real"]["median"] + 100.0)
    assert first["white_matter"]["ct"]["w1"] < 5.0

"""Issue 30 §2: split-conformal intervals calibrated on held-out subjects cover as asked on other subjects, on a toy
where the truth's law is known and the model's samples are too narrow (as the bundled residual model's are)."""
import math

import numpy as np
import pytest

from sci_diffusion.errors import UserError
from sci_diffusion_medical.evaluation.conformal import fit_calibration, interval_coverage
from sci_diffusion_medical.translation.calibration import (
    check_calibration_fits,
    conformal_factors,
    read_calibration,
)

K, VOXELS = 4, 4000


def toy_subjects(count: int, seed: int, narrow: float = 0.6):
    """Subjects of VOXELS voxels: truth = mu + sigma * t(5) * (a per-subject scale), HU; the model's K samples are
    Gaussian around mu with ``narrow`` times the right spread: overconfident, and wrong in shape (t against normal)."""
    rng = np.random.default_rng(seed)
    subjects = []
    for _ in range(count):
        mu, sigma = rng.normal(0.0, 400.0, VOXELS), rng.uniform(5.0, 200.0, VOXELS)
        truth = mu + sigma * rng.standard_t(5, VOXELS) * rng.uniform(0.85, 1.15)
        samples = mu + narrow * sigma * rng.normal(size=(K, VOXELS))
        subjects.append((truth, samples.mean(axis=0), samples.std(axis=0, ddof=1)))
    return subjects


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_intervals_calibrated_on_held_out_subjects_cover_as_asked_on_new_ones(level):
    calibration = fit_calibration(toy_subjects(10, seed=0), samples=K, subjects=[f"c{i}" for i in range(10)])
    test = toy_subjects(10, seed=1)
    ct, pred, std = (np.concatenate(column) for column in zip(*test))
    covered = interval_coverage(calibration, ct, pred, std, level)["coverage"]
    assert abs(covered - level) < 0.03, covered
    naive = np.mean(np.abs(ct - pred) <= 1.6449 * std)  # the Gaussian 90 % interval of the samples alone
    assert naive < 0.75  # what calibration repairs


def test_a_single_answer_gets_a_constant_width_that_covers_as_asked():
    cal_subjects = [(truth, pred, None) for truth, pred, _ in toy_subjects(8, seed=2)]
    calibration = fit_calibration(cal_subjects, samples=1, subjects=[])
    assert calibration.score_kind == "absolute"
    ct, pred = (np.concatenate(c) for c in zip(*[(t, p) for t, p, _ in toy_subjects(8, seed=3)]))
    out = interval_coverage(calibration, ct, pred, None, 0.9)
    assert abs(out["coverage"] - 0.9) < 0.03 and out["mean_width_hu"] == pytest.approx(2 * calibration.factor(0.9))


def test_the_conformal_quantile_is_the_ceil_n_plus_1_level_th_smallest_score():
    scores = np.arange(1.0, 20.0)  # n = 19
    factors = conformal_factors(scores, levels=(0.5, 0.9, 0.95, 0.99))
    assert factors[:3] == (10.0, 18.0, 19.0)  # ceil(20 * level): ranks 10, 18, 19
    assert math.isinf(factors[3])  # rank 20 > n: no finite interval covers 99 % with 19 scores


def test_a_calibration_survives_its_file_and_refuses_other_settings(tmp_path):
    calibration = fit_calibration(toy_subjects(2, seed=4), samples=K, subjects=["a", "b"],
                                  provenance={"checkpoint_sha256": "abc", "sampler": "ddim", "steps": 10})
    calibration.save(tmp_path / "cal.json")
    again = read_calibration(tmp_path / "cal.json")
    assert again == calibration
    assert again.factor(0.9) == pytest.approx(calibration.factors[calibration.levels.index(0.9)])
    check_calibration_fits(again, "cal.json", K, "abc", "ddim", 10)
    with pytest.raises(UserError, match="--samples 4, not 8"):
        check_calibration_fits(again, "cal.json", 8, "abc", "ddim", 10)
    with pytest.raises(UserError, match="checkpoint abc"):
        check_calibration_fits(again, "cal.json", K, "xyz", "ddim", 10)
    with pytest.raises(UserError, match="--interval must lie"):
        again.factor(1.0)
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="not a sci-diffusion interval calibration"):
        read_calibration(tmp_path / "other.json")

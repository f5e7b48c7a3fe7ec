"""Issue 30 §2-§4 metrics against analytic cases: the rank histogram, [min, max] coverage and CRPS of K samples,
the calibrated reference for K, texture, ambiguous voxels, bootstrap intervals and the paired test."""
import numpy as np
import pytest
from scipy import ndimage

from sci_diffusion_medical.evaluation.ensemble import (
    calibrated_reference,
    crps,
    ensemble_scores,
    expected_minmax_coverage,
    gaussian_crps,
    minmax_coverage,
    rank_histogram,
    truth_ranks,
)
from sci_diffusion_medical.evaluation.statistics import bootstrap_interval, mean_with_interval, paired_comparison
from sci_diffusion_medical.evaluation.texture import ambiguous_fraction, gradient_texture

N, K = 40_000, 8


def _draws(shift=0.0, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=N)
    return shift + spread * rng.normal(size=(K, N)), truth


def test_exchangeable_samples_give_a_flat_rank_histogram():
    hist = rank_histogram(*_draws())
    assert len(hist["counts"]) == K + 1 and sum(hist["counts"]) == N
    assert hist["chi2"] < K + 5 * np.sqrt(2 * K)  # chi-square with K degrees of freedom: mean K, sd sqrt(2K)
    assert hist["p_value"] > 1e-3


@pytest.mark.parametrize("shift, spread", [(0.5, 1.0), (0.0, 0.5), (0.0, 2.0)])
def test_biased_or_mis_spread_samples_give_a_large_chi_square(shift, spread):
    hist = rank_histogram(*_draws(shift, spread))
    assert hist["chi2"] > 1000 and hist["p_value"] < 1e-10
    if spread < 1:  # too narrow: the truth falls outside, ranks 0 and K pile up (a U shape)
        assert min(hist["frequencies"][0], hist["frequencies"][-1]) > 2 / (K + 1)


def test_ties_with_the_truth_are_broken_uniformly():
    samples, truth = np.zeros((4, N)), np.zeros(N)  # every sample equals the truth: every rank 0..4 is as likely
    ranks = truth_ranks(samples, truth, seed=1)
    assert ranks.min() == 0 and ranks.max() == 4
    assert rank_histogram(samples, truth)["chi2"] < 4 + 5 * np.sqrt(8)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_minmax_of_k_exchangeable_samples_covers_k_minus_1_over_k_plus_1(k):
    samples, truth = _draws(seed=k)
    coverage = minmax_coverage(samples[:k], truth)
    expected = expected_minmax_coverage(k)
    assert expected == pytest.approx((k - 1) / (k + 1))
    assert abs(coverage - expected) < 4 * np.sqrt(expected * (1 - expected) / N)


def test_fair_crps_of_gaussian_samples_matches_the_closed_form():
    rng = np.random.default_rng(3)
    mean, std = rng.normal(size=N), rng.uniform(0.5, 2.0, N)
    truth = mean + std * rng.normal(size=N) + 0.3
    samples = mean + std * rng.normal(size=(K, N))
    exact = gaussian_crps(mean, std, truth).mean()
    assert crps(samples, truth).mean() == pytest.approx(exact, rel=0.02)
    assert crps(samples, truth, fair=False).mean() > exact * 1.03  # the empirical CRPS is biased up at K = 8


def test_crps_by_hand_and_for_one_sample():
    samples, truth = np.array([[0.0], [2.0]]), np.array([1.0])
    assert crps(samples, truth)[0] == pytest.approx(1.0 - 2.0 / 2)  # mean |x - y| = 1, sum_{i<j} |xi - xj| = 2
    assert crps(samples, truth, fair=False)[0] == pytest.approx(1.0 - 2.0 / 4)
    x, y = np.random.default_rng(0).normal(size=(1, 50)), np.random.default_rng(1).normal(size=50)
    np.testing.assert_allclose(crps(x, y), np.abs(x[0] - y))


def test_the_calibrated_reference_follows_k():
    four, many = calibrated_reference(4), calibrated_reference(1000)
    assert four["coverage_1sigma"] == pytest.approx(0.563, abs=1e-3) and four["coverage_2sigma"] == pytest.approx(0.828, abs=1e-3)
    assert four["minmax_coverage"] == pytest.approx(0.6) and four["rank_frequency"] == pytest.approx(0.2)
    assert many["coverage_1sigma"] == pytest.approx(0.683, abs=2e-3) and many["coverage_2sigma"] == pytest.approx(0.954, abs=2e-3)


def test_ensemble_scores_of_one_volume():
    samples, truth = _draws()
    scores = ensemble_scores(samples.reshape(K, 200, 200), truth.reshape(200, 200))
    assert scores["minmax_expected"] == pytest.approx(7 / 9) and abs(scores["minmax_coverage"] - 7 / 9) < 0.01
    assert scores["crps"] < scores["mae_of_mean"]


# ----- texture and ambiguous voxels --------------------------------------------------------------------------
@pytest.fixture
def texture():
    rng = np.random.default_rng(0)
    ct = ndimage.gaussian_filter(rng.normal(size=(40, 40, 40)), 1.0) * 300.0 + 40.0
    mask = np.zeros(ct.shape, np.uint8)
    mask[4:-4, 4:-4, 4:-4] = 1
    return ct, mask


def test_gradient_texture_of_a_ct_against_itself_and_a_flattened_copy(texture):
    ct, mask = texture
    same = gradient_texture(ct, ct, mask, (2.0, 2.0, 2.0))
    assert same["gradient_ratio"] == pytest.approx(1.0) and same["gradient_w1"] == pytest.approx(0.0, abs=1e-9)
    flat = gradient_texture(40.0 + 0.5 * (ct - 40.0), ct, mask, (2.0, 2.0, 2.0))  # every gradient halved
    assert flat["gradient_ratio"] == pytest.approx(0.5)
    assert flat["gradient_w1"] == pytest.approx(0.5 * same["gradient_mean_ref"], rel=1e-9)
    smooth = gradient_texture(ndimage.gaussian_filter(ct, 1.5), ct, mask, (2.0, 2.0, 2.0))
    assert smooth["gradient_ratio"] < 0.8 and smooth["gradient_w1"] > 0
    one_mm = gradient_texture(ct, ct, mask, (1.0, 1.0, 1.0))  # HU per mm: twice the gradient on a grid twice as fine
    assert one_mm["gradient_mean_ref"] == pytest.approx(2.0 * same["gradient_mean_ref"])


def test_ambiguous_fraction_counts_in_between_values_in_true_bone_and_air():
    labels = np.full((10, 10, 10), 1, np.uint8)  # soft tissue
    labels[:, :, :3] = 3  # cortical bone
    labels[:, :, 7:] = 9  # sinus air
    pred = np.where(labels == 3, 1200.0, np.where(labels == 9, -1000.0, 40.0))
    assert ambiguous_fraction(pred, labels) == {"bone": 0.0, "air": 0.0, "bone_and_air": 0.0}
    pred[:5, :, :3] = 0.0  # half the bone blurred to 0 HU
    pred[:, :, 7] = -501.0  # just outside the band
    pred[:, :, 8] = 300.0  # at its top: in
    out = ambiguous_fraction(pred, labels)
    assert out["bone"] == pytest.approx(0.5) and out["air"] == pytest.approx(1 / 3)
    assert out["bone_and_air"] == pytest.approx((15 + 10) / 60)
    mask = np.zeros(labels.shape)
    mask[5:] = 1
    assert ambiguous_fraction(pred, labels, mask)["bone"] == 0.0  # the blurred half is outside the mask


# ----- statistics over subjects ------------------------------------------------------------------------------
def test_the_bootstrap_interval_covers_the_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        low, high = bootstrap_interval(rng.normal(10.0, 3.0, 30), seed=int(rng.integers(1 << 30)))
        hits += low <= 10.0 <= high
    assert 0.88 <= hits / 200 <= 0.99
    x = rng.normal(10.0, 3.0, 400)
    low, high = bootstrap_interval(x)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half) and high == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert mean_with_interval([1.0, float("nan"), 3.0, 2.0])["n"] == 3
    assert np.isnan(bootstrap_interval([5.0])[0])


def test_the_paired_test_says_which_model_wins_on_the_same_subjects():
    rng = np.random.default_rng(1)
    b = rng.normal(80.0, 10.0, 12)  # per-subject MAE of model B; subjects vary far more than the difference
    a = b - 4.0 + rng.normal(0.0, 1.0, 12)
    result = paired_comparison(a, b)
    assert result["a_beats_b"] and not result["b_beats_a"] and result["p_value"] < 0.01
    assert result["difference_interval"][1] < 0 < 4.5 + result["difference_interval"][0]
    assert paired_comparison(b, a)["b_beats_a"]
    assert paired_comparison(a, b, lower_is_better=False)["b_beats_a"]  # for a score, higher wins
    tie = paired_comparison(b + rng.normal(0.0, 1.0, 12), b)
    assert not tie["a_beats_b"] and not tie["b_beats_a"]
    with pytest.raises(ValueError, match="at least 2"):
        paired_comparison([1.0], [2.0])

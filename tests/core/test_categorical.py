"""The categorical diffusion (sci_diffusion/categorical.py) against what it must be: the marginal prior is the
forward process's stationary law, the posterior is Bayes' rule on the transition matrices, and the core's
ancestral samplers fed the exact data estimate give back a known categorical distribution (alone, and
jointly with a Gaussian variable in one stacked state)."""
import pytest
import torch

from sci_diffusion.categorical import CategoricalDenoisingLoss, CategoricalProcess, CategoricalSpace
from sci_diffusion.generators import PerSampleGenerator
from sci_diffusion.inpainting import inpaint
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.samplers import SAMPLERS, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, StackedSpace

SCHEDULE = NoiseSchedule.from_name("polynomial_2", 1000)
DATA = torch.tensor([0.6, 0.25, 0.1, 0.05], dtype=torch.float64)  # the categorical law to recover
MARGINAL = CategoricalProcess.from_counts(torch.tensor([10.0, 30.0, 40.0, 20.0]), SCHEDULE)  # a prior other than DATA
UNIFORM = CategoricalProcess.from_counts(torch.ones(4), SCHEDULE, prior="uniform")
K = 4


def matrix(process: CategoricalProcess, keep: float) -> torch.Tensor:
    """``Qbar = keep I + (1 - keep) 1 m^T`` ``(K, K)``, row i = q(. | x_0 = i)."""
    return keep * torch.eye(K, dtype=torch.float64) + (1 - keep) * process.prior[None, :]


@pytest.mark.parametrize("process", [MARGINAL, UNIFORM], ids=["marginal", "uniform"])
def test_the_prior_is_the_stationary_law_of_the_forward_process(process):
    for t in (0.1, 0.5, 0.9):
        keep = float(process.keep(torch.tensor(t)))
        assert torch.allclose(process.prior @ matrix(process, keep), process.prior, rtol=0, atol=1e-12)
    ends = process.forward_probs(torch.eye(K, dtype=torch.float64), process.keep(torch.tensor(1.0)))
    assert torch.allclose(ends, process.prior.expand(K, K), atol=1e-4)  # every class forgotten at t = 1
    assert float(process.keep(torch.tensor(0.0))) == 1.0


def test_the_marginal_prior_is_the_data_marginal_with_a_floor_for_absent_classes():
    process = CategoricalProcess.from_counts(torch.tensor([3.0, 1.0, 0.0]), SCHEDULE)
    assert process.prior[:2] == pytest.approx([0.75, 0.25], abs=1e-6) and 0 < process.prior[2] < 1e-6


def test_forward_transitions_compose():
    keep_s, keep_t = 0.8, 0.3
    step = matrix(MARGINAL, keep_t / keep_s)  # Q_{t|s}
    assert torch.allclose(matrix(MARGINAL, keep_s) @ step, matrix(MARGINAL, keep_t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("process", [MARGINAL, UNIFORM], ids=["marginal", "uniform"])
def test_the_posterior_is_bayes_rule_and_normalised(process):
    keep_t, keep_s = 0.3, 0.7
    step, from_data_s, from_data_t = matrix(process, keep_t / keep_s), matrix(process, keep_s), matrix(process, keep_t)
    x0_probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for j in range(K):
        x_t = torch.eye(K, dtype=torch.float64)[[j]]
        # sum_i p(x0 = i) q(x_t = j | x_s = k) q(x_s = k | x0 = i) / q(x_t = j | x0 = i), over k
        expected = sum(x0_probs[i] * step[:, j] * from_data_s[i] / from_data_t[i, j] for i in range(K))
        got = process.posterior(x_t, x0_probs[None], torch.tensor(keep_t, dtype=torch.float64),
                                torch.tensor(keep_s, dtype=torch.float64))[0]
        assert torch.allclose(got, expected, rtol=0, atol=1e-12)
        assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)
    at_data = process.posterior(x_t, x0_probs[None], torch.tensor(keep_t, dtype=torch.float64),
                                torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(at_data, x0_probs[None], rtol=0, atol=1e-12)  # at s = 0 the step draws x_0 itself


def exact_class_probs(process: CategoricalProcess, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``p(x_0 | x_t)`` ``(R, K)`` of the DATA law: ``DATA_i q(x_t | x_0 = i)``, normalised."""
    keep = process.keep(t)
    likelihood = keep * x_t + (1 - keep) * (x_t @ process.prior)[:, None]  # q(x_t = j | x_0 = i), over i
    joint = DATA.to(x_t) * likelihood
    return joint / joint.sum(-1, keepdim=True)


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp2m_sde"])
@pytest.mark.parametrize("process", [MARGINAL, UNIFORM], ids=["marginal", "uniform"])
def test_ancestral_sampling_with_the_exact_estimate_recovers_the_distribution(sampler, process):
    rows = 40_000
    space = CategoricalSpace(process, torch.arange(rows), rows)
    g = torch.Generator().manual_seed(0)
    x_T = space.noise(torch.zeros(rows, K, dtype=torch.float64), g)
    assert torch.allclose(x_T.mean(0), process.prior, atol=0.01)  # x_T is the prior
    x = SAMPLERS[sampler](lambda x, t, cond: exact_class_probs(process, x, t), x_T, SCHEDULE,
                          sampler_times(sampler, SCHEDULE, 10), space, generator=g)
    assert ((x == 0) | (x == 1)).all() and (x.sum(1) == 1).all()
    assert torch.allclose(x.mean(0), DATA, atol=0.01), x.mean(0)  # 4 standard errors: 0.01


MEANS, SPREAD = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64), 0.3  # y | c ~ N(MEANS[c], SPREAD^2)


def exact_joint_estimate(x: torch.Tensor, t: torch.Tensor, samples: int) -> torch.Tensor:
    """The exact data estimate of the stacked state ``[y rows (padded); c rows]``: ``E[y_0 | y_t, c_t]`` and
    ``p(c_0 | y_t, c_t)`` for ``c ~ DATA``, ``y | c ~ N(MEANS[c], SPREAD^2)``."""
    y_t, c_t = x[:samples, :1], x[samples:]
    alpha, sigma = SCHEDULE.alpha(t).to(x), SCHEDULE.sigma(t).to(x)
    variance = alpha**2 * SPREAD**2 + sigma**2  # of y_t given c_0
    log_y = -0.5 * (y_t - alpha * MEANS) ** 2 / variance  # (S, K) over c_0
    class_probs = exact_class_probs(MARGINAL, c_t, t) * torch.softmax(log_y, dim=-1)
    class_probs = class_probs / class_probs.sum(-1, keepdim=True)
    y0_given_c = MEANS + alpha * SPREAD**2 / variance * (y_t - alpha * MEANS)  # E[y_0 | y_t, c_0]
    y0 = (class_probs * y0_given_c).sum(-1, keepdim=True)
    return torch.cat([torch.nn.functional.pad(y0, (0, K - 1)), class_probs])


@pytest.mark.parametrize("sampler", ["ddpm", "dpmpp2m_sde", "ddim"])  # ddim: Gaussian deterministic, classes drawn
def test_a_gaussian_and_a_categorical_variable_are_drawn_jointly_in_one_stacked_state(sampler):
    samples = 10_000
    ids = torch.arange(samples)
    space = StackedSpace([(EuclideanSpace(batch=ids, num_samples=samples), samples, 1),
                          (CategoricalSpace(MARGINAL, ids, samples), samples, K)])
    g = torch.Generator().manual_seed(1)
    x_T = space.noise(torch.zeros(2 * samples, K, dtype=torch.float64), g)
    assert (x_T[:samples, 1:] == 0).all()  # the Gaussian block's padding
    x = SAMPLERS[sampler](lambda x, t, cond: exact_joint_estimate(x, t, samples), x_T, SCHEDULE,
                          sampler_times(sampler, SCHEDULE, 25), space, generator=g)
    y, c = x[:samples, 0], x[samples:].argmax(1)
    assert torch.allclose(torch.bincount(c, minlength=K) / samples, DATA.float(), atol=0.015)  # 3 standard errors
    for k in range(3):  # the rarest class has too few draws for a tight mean
        assert float(y[c == k].mean()) == pytest.approx(float(MEANS[k]), abs=0.05)
        assert float(y[c == k].std()) == pytest.approx(SPREAD, abs=0.05)


@pytest.mark.parametrize("sampler", ["dpmpp2m", "heun", "pc"])
def test_samplers_without_a_categorical_step_refuse_in_one_sentence(sampler):
    space = CategoricalSpace(MARGINAL, torch.arange(3), 3)
    x_T = space.noise(torch.zeros(3, K))
    with pytest.raises(ValueError, match="no update for a categorical variable.*use ddpm, dpmpp2m_sde or ddim"):
        SAMPLERS[sampler](lambda x, t, cond: x, x_T, SCHEDULE, sampler_times(sampler, SCHEDULE, 4), space)


def test_a_samples_classes_do_not_depend_on_its_batch():
    one = CategoricalSpace(UNIFORM, torch.zeros(50, dtype=torch.long), 1)
    two = CategoricalSpace(UNIFORM, torch.cat([torch.zeros(50), torch.ones(30)]).long(), 2)
    alone = one.noise(torch.zeros(50, K), PerSampleGenerator([7]))
    together = two.noise(torch.zeros(80, K), PerSampleGenerator([7, 8]))
    assert torch.equal(alone, together[:50])


def test_the_forward_draw_keeps_the_class_early_and_forgets_it_late():
    rows = 20_000
    space = CategoricalSpace(MARGINAL, torch.arange(rows), rows)
    x0 = torch.nn.functional.one_hot(torch.zeros(rows, dtype=torch.long), K).double()
    g = torch.Generator().manual_seed(2)
    early = space.categorical_forward(x0, x0, torch.full((rows,), 0.05, dtype=torch.float64), g)
    late = space.categorical_forward(x0, x0, torch.ones(rows, dtype=torch.float64), g)
    keep = float(MARGINAL.keep(torch.tensor(0.05)))
    assert float(early[:, 0].mean()) == pytest.approx(keep + (1 - keep) * float(MARGINAL.prior[0]), abs=0.01)
    assert torch.allclose(late.mean(0), MARGINAL.prior, atol=0.01)


class ZeroNetwork(torch.nn.Module):
    """Predicts 0 everywhere: eps = 0 on the Gaussian rows, uniform logits on the categorical rows."""

    def forward(self, x_t, t, cond=None, context=None):
        return torch.zeros_like(x_t)


def test_the_loss_is_the_gaussian_regression_plus_the_weighted_cross_entropy():
    samples = 6
    ids = torch.arange(samples)
    space = StackedSpace([(EuclideanSpace(batch=ids, num_samples=samples), samples, 2),
                          (CategoricalSpace(MARGINAL, torch.arange(2 * samples) // 2, samples), 2 * samples, K)])
    x0 = torch.cat([torch.nn.functional.pad(torch.randn(samples, 2), (0, K - 2)),
                    torch.nn.functional.one_hot(torch.arange(2 * samples) % K, K).float()])
    batch = DiffusionBatch(x0, space)
    loss = CategoricalDenoisingLoss(SCHEDULE, "eps", categorical_weight=2.0)
    g = torch.Generator().manual_seed(3)
    value = loss(ZeroNetwork(), batch, g)
    eps = loss.noise(batch, torch.Generator().manual_seed(3)).eps  # the same draws again
    regression = eps[:samples, :2].pow(2).mean()  # the Gaussian entries only: no padding, no categorical rows
    assert float(value) == pytest.approx(float(regression) + 2.0 * float(torch.log(torch.tensor(K))), rel=1e-5)


def test_inpainting_refuses_a_categorical_state_in_one_sentence():
    space = CategoricalSpace(MARGINAL, torch.arange(3), 3)
    x_T = space.noise(torch.zeros(3, K))
    with pytest.raises(ValueError, match="inpainting sampler has no update for a categorical variable"):
        inpaint(lambda x, t, cond: x, x_T, SCHEDULE, sampler_times("ddpm", SCHEDULE, 4), space, x_T, torch.zeros_like(x_T))

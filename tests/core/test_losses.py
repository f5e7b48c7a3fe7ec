"""The training loss as its own object (``losses.DenoisingLoss``): the forward process, the time draw,
condition dropout and the weighting, each checked against what it must be."""
import pytest
import torch

from sci_diffusion.losses import DenoisingLoss
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.parameterisation import to_x0
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace

SCHEDULE = NoiseSchedule.from_name("cosine", 1000)


class OracleModel(torch.nn.Module):
    """A network that knows the clean data ``x0``: from ``x_t`` and ``t`` it answers the exact eps, x0 or v,
    so the loss of a correct forward process is zero. It records the conditions it is given."""

    def __init__(self, x0: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.prediction, self.conds, self.times = x0, prediction, [], []

    def forward(self, x_t, t, cond=None, context=None):
        self.conds.append(cond)
        self.times.append(t)
        a, s = SCHEDULE.alpha(t.double())[:, None].float(), SCHEDULE.sigma(t.double())[:, None].float()
        eps = (x_t - a * self.x0) / s
        return {"eps": eps, "x0": self.x0, "v": a * eps - s * self.x0}[self.prediction]

    condition_groups = 1

    def drop_condition(self, cond, drop, batch):
        """Each group one column of ``cond``: a dropped group is zeroed."""
        return cond * (~drop).to(cond.dtype).expand_as(cond)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["none", "min_snr"])
def test_a_network_that_answers_the_true_target_has_zero_loss(prediction, weighting):
    """The loss draws x_t = alpha x0 + sigma eps and regresses the prediction's own target: an oracle that
    inverts the forward process scores 0, and a network that is off by 0.1 everywhere does not."""
    x0 = torch.randn(256, 3)
    loss = DenoisingLoss(SCHEDULE, prediction, "l2", weighting)
    oracle = OracleModel(x0, prediction)
    batch = DiffusionBatch(x0, EuclideanSpace())
    assert float(loss(oracle, batch, torch.Generator().manual_seed(0))) < 1e-8
    off = OracleModel(x0, prediction)
    off.forward = lambda x_t, t, cond=None, context=None: OracleModel.forward(off, x_t, t) + 0.1
    assert float(loss(off, batch, torch.Generator().manual_seed(0))) > 1e-4


def test_times_are_drawn_uniformly_from_the_training_grid():
    x0 = torch.zeros(20000, 1)
    model = OracleModel(x0, "x0")
    DenoisingLoss(SCHEDULE, "x0")(model, DiffusionBatch(x0, EuclideanSpace()), torch.Generator().manual_seed(0))
    steps = (model.times[0].double() * 1000).round()
    assert torch.allclose(steps, model.times[0].double() * 1000, atol=1e-3)  # t in {1..T} / T
    assert steps.min() >= 1 and steps.max() <= 1000
    assert abs(float(steps.mean()) - 500.5) < 10 and abs(float(steps.std()) - 288.7) < 10


def test_a_low_noise_expert_draws_its_times_from_the_start_of_the_grid_only():
    """``max_time = 0.15``: steps uniform on 1..150 (mean 75.5, sd 43.3), none later; a module passes its
    ``loss_max_time`` on, and a max_time outside (0, 1] is refused in one sentence."""
    from sci_diffusion.toy import MixtureDiffusion

    x0 = torch.zeros(20000, 1)
    model = OracleModel(x0, "x0")
    DenoisingLoss(SCHEDULE, "x0", max_time=0.15)(model, DiffusionBatch(x0, EuclideanSpace()),
                                                  torch.Generator().manual_seed(0))
    steps = (model.times[0].double() * 1000).round()
    assert steps.min() == 1 and steps.max() == 150
    assert abs(float(steps.mean()) - 75.5) < 2 and abs(float(steps.std()) - 43.3) < 2
    assert MixtureDiffusion(hidden=8, val_num=0, loss_max_time=0.15).loss_fn.max_time == 0.15
    with pytest.raises(ValueError, match=r"max_time in \(0, 1\]"):
        DenoisingLoss(SCHEDULE, "x0", max_time=0.0)


def test_condition_dropout_applies_in_training_only_at_its_rate():
    x0, cond = torch.randn(4000, 2), torch.ones(4000, 2)
    batch = DiffusionBatch(x0, EuclideanSpace(), cond=cond)
    model = OracleModel(x0, "x0").train()
    DenoisingLoss(SCHEDULE, "x0", cond_dropout=0.3)(model, batch, torch.Generator().manual_seed(0))
    dropped = (model.conds[-1] == 0).all(1).float().mean()
    assert abs(float(dropped) - 0.3) < 0.03
    model.eval()
    DenoisingLoss(SCHEDULE, "x0", cond_dropout=0.3)(model, batch, torch.Generator().manual_seed(0))
    assert torch.equal(model.conds[-1], cond)


def test_condition_groups_are_dropped_one_by_one_besides_the_whole_condition():
    """Three groups, the whole condition dropped at 0.3 and each group at 0.5 on its own: a group is gone with
    probability 0.3 + 0.7 x 0.5 = 0.65, all three with 0.3 + 0.7 x 0.5^3 = 0.3875, and two groups' drops are
    independent apart from the shared whole-condition drop (both gone: 0.3 + 0.7 x 0.25 = 0.475)."""
    n = 40000
    x0, cond = torch.randn(n, 2), torch.ones(n, 3)
    model = OracleModel(x0, "x0").train()
    model.condition_groups = 3
    DenoisingLoss(SCHEDULE, "x0", cond_dropout=0.3, group_dropout=0.5)(
        model, DiffusionBatch(x0, EuclideanSpace(), cond=cond), torch.Generator().manual_seed(0))
    gone = model.conds[-1] == 0
    assert torch.allclose(gone.float().mean(0), torch.full((3,), 0.65), atol=0.01)
    assert abs(float(gone.all(1).float().mean()) - 0.3875) < 0.01
    assert abs(float((gone[:, 0] & gone[:, 1]).float().mean()) - 0.475) < 0.01


def test_the_same_generator_gives_the_same_loss_and_another_one_another():
    x0 = torch.randn(64, 2)
    model = OracleModel(x0, "x0")
    model.forward = lambda x_t, t, cond=None, context=None: torch.zeros_like(x_t)
    loss = DenoisingLoss(SCHEDULE, "eps")
    batch = DiffusionBatch(x0, EuclideanSpace())
    a, b = (loss(model, batch, torch.Generator().manual_seed(s)) for s in (1, 1))
    c = loss(model, batch, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_modules_loss_is_the_one_its_hyperparameters_describe():
    from sci_diffusion.toy import MixtureDiffusion

    model = MixtureDiffusion(hidden=8, val_num=0, prediction="v", loss_weighting="min_snr", cond_dropout=0.2)
    assert model.loss_fn == DenoisingLoss(model.schedule, "v", "l2", "min_snr", 0.2)
    x0 = torch.randn(8, 2)
    noised = model.loss_fn.noise(DiffusionBatch(x0, EuclideanSpace()), torch.Generator().manual_seed(0))
    torch.testing.assert_close(to_x0(noised.alpha * noised.eps - noised.sigma * x0, noised.x_t, noised.alpha,
                                     noised.sigma, "v").float(), x0, rtol=0, atol=1e-5)

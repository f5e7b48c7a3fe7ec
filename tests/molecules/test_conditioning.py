"""Property conditioning: normalisation from the training set, condition dropout, and both kinds of
guidance on the molecule state space."""
import numpy as np
import pytest
import torch
from torch import nn

from sci_diffusion.checkpoints import load_module, read_checkpoint
from sci_diffusion.errors import UserError
from sci_diffusion.guidance import ClassifierFreeGuidance
from sci_diffusion_molecules.data.atom_state import molecule_space
from sci_diffusion_molecules.data.conditioning import PropertyConditioning, parse_targets
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.generation.sampling import Guidance, paired_condition_denoiser, sample_molecules
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion


def test_a_conditional_checkpoint_stores_its_training_sets_mean_and_mad(conditional_checkpoint):
    dm = QM9DataModule(batch_size=16, limit=64, subset="Db")
    gap = dm.train_properties()[1][:, 1].astype(np.float64)  # column 1 of PROPERTY_NAMES is gap
    record = read_checkpoint(conditional_checkpoint)["sci_diffusion"]["conditioning"]
    assert record["names"] == ["gap"] and record["units"] == ["eV"]
    assert record["mean"] == pytest.approx([gap.mean()], rel=1e-6)
    assert record["mad"] == pytest.approx([np.abs(gap - gap.mean()).mean()], rel=1e-6)
    module = load_module(conditional_checkpoint, domain="molecules")
    assert module.conditioning == ["gap"] and module.hparams.cond_dropout == 0.1
    # the joint table of (atom count, gap) the protocol draws targets from is Db's own
    np.testing.assert_allclose(module.property_conditioning.values[:, 0], gap, rtol=1e-6)


def test_condition_is_the_normalised_targets_and_a_presence_flag_each():
    info = PropertyConditioning(["gap", "alpha"], np.array([6.8, 75.0]), np.array([1.0, 6.0]),
                                np.array([9, 19]), np.array([[6.0, 70.0], [7.0, 80.0]]))
    asked = torch.tensor([[7.8, 63.0], [float("nan"), 63.0], [7.8, float("nan")]], dtype=torch.float64)
    cond = info.condition(asked)
    torch.testing.assert_close(cond, torch.tensor([[1.0, -2.0, 1.0, 1.0], [0.0, -2.0, 0.0, 1.0],
                                                   [1.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(info.targets_of(cond), asked, equal_nan=True)  # the round trip, absences included
    counts, values = info.draw_joint(200, torch.Generator().manual_seed(0))
    # drawn jointly: every size comes with its own molecule's values
    assert {(n, tuple(v)) for n, v in zip(counts, values.tolist())} == {(9, (6.0, 70.0)), (19, (7.0, 80.0))}


def test_a_multi_property_model_takes_any_subset_of_targets_and_drops_its_properties_one_by_one():
    info = PropertyConditioning(["gap", "alpha"], np.array([6.8, 75.0]), np.array([1.0, 6.0]),
                                np.array([9, 19]), np.array([[6.0, 70.0], [7.0, 80.0]]))
    np.testing.assert_array_equal(info.targets_from_mapping({"alpha": 71.0}), [np.nan, 71.0])
    assert info.outside_training_range(np.array([np.nan, 90.0])) == [
        "alpha=90 Bohr^3 lies outside the training range [70, 80] Bohr^3"]
    with pytest.raises(UserError, match="at least one"):
        info.targets_from_mapping({})
    with pytest.raises(UserError, match="not on 'mu'"):
        info.targets_from_mapping({"mu": 1.0})
    model = MoleculeDiffusion(hidden=16, layers=1, ema_decay=0, conditioning=["gap", "alpha"])
    assert model.condition_width == 4 and model.condition_groups == 2
    cond = torch.tensor([[1.0, -2.0, 1.0, 1.0]]).repeat(3, 1)
    dropped = model.drop_condition(cond, torch.tensor([[True, False], [False, True], [True, True]]), None)
    torch.testing.assert_close(dropped, torch.tensor([[0.0, -2.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0], [0.0] * 4]))


def test_condition_dropout_trains_the_unconditional_path_at_its_rate():
    torch.manual_seed(0)
    model = MoleculeDiffusion(hidden=16, layers=1, ema_decay=0, conditioning=["gap"], cond_dropout=0.3)
    seen = []
    real_forward = model.net.forward
    model.net.forward = lambda x, t, cond, batch, g: seen.append(cond) or real_forward(x, t, cond, batch, g)
    model.property_conditioning = PropertyConditioning(["gap"], np.array([6.8]), np.array([1.0]),
                                                       np.array([5]), np.array([[6.8]]))
    batch = next(iter(QM9DataModule(batch_size=400, limit=400).train_dataloader()))
    model.train()
    model.loss_fn(model, model.prepare_batch(batch), torch.Generator().manual_seed(0))
    dropped = (seen[-1] == 0).all(1)
    assert 0.22 < dropped.float().mean() < 0.38  # 400 draws at p = 0.3
    assert (seen[-1][~dropped, 1] == 1).all()  # kept conditions carry their presence flag
    model.eval()
    model.loss_fn(model, model.prepare_batch(batch), torch.Generator().manual_seed(0))
    assert not (seen[-1] == 0).all(1).any()  # validation never drops


def test_a_dropped_condition_is_a_different_input_from_a_zero_target():
    """The presence flag: a target at Db's mean (normalised 0) is not the unconditional input."""
    torch.manual_seed(0)
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0, conditioning=["gap"]).eval()
    batch = torch.tensor([0, 0, 0, 1, 1])
    x = molecule_space(batch, 2).noise(torch.zeros(5, 9), torch.Generator().manual_seed(0))
    at_mean = model(x, torch.tensor(0.5), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), (batch, 2))
    dropped = model(x, torch.tensor(0.5), None, (batch, 2))
    assert (at_mean - dropped).abs().max() > 1e-4


def test_paired_cfg_matches_two_calls_and_scale_one_is_the_conditional_model():
    torch.manual_seed(0)
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0, conditioning=["gap"]).eval()
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    x = molecule_space(batch, 2).noise(torch.zeros(7, 9), torch.Generator().manual_seed(1))
    t, cond = torch.tensor(0.3), torch.tensor([[1.5, 1.0], [-0.5, 1.0]])
    denoiser = model.denoiser(context=(batch, 2))
    with torch.no_grad():
        d_cond, d_null = paired_condition_denoiser(model, batch, 2)(x, t, cond, None)
        torch.testing.assert_close(d_cond, denoiser(x, t, cond), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d_null, denoiser(x, t, None), atol=1e-5, rtol=1e-5)
        guided = ClassifierFreeGuidance(denoiser, 3.0, paired=paired_condition_denoiser(model, batch, 2))(x, t, cond)
        torch.testing.assert_close(guided, d_null + 3.0 * (d_cond - d_null), atol=1e-4, rtol=1e-4)
        assert torch.equal(ClassifierFreeGuidance(denoiser, 1.0)(x, t, cond), denoiser(x, t, cond))


def test_a_guidance_interval_reaches_the_sampler_and_outside_it_sampling_is_the_conditional_models():
    torch.manual_seed(0)
    model = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0, conditioning=["gap"]).eval()
    cond = torch.tensor([[1.5, 1.0], [-0.5, 1.0], [0.3, 1.0]])  # normalised targets and the presence flag

    def draw(guidance):
        """The final state (positions and atom features, before decoding) of the three molecules."""
        states = []
        list(sample_molecules(model, [5, 7, 6], "dpmpp2m", 4, torch.Generator().manual_seed(2), cond=cond,
                              guidance=guidance, precision="fp32", callback=lambda i, t, x, x0, n: states.append(x)))
        return states[-1]

    plain = draw(None)
    never = draw(Guidance(3.0, interval=(0.0, 0.0005)))  # the grid's times are >= 1/T = 0.001: never guided
    always = draw(Guidance(3.0))
    late = draw(Guidance(3.0, interval=(0.0, 0.5)))  # the grid: 1, 0.927, 0.109, 0.001
    torch.testing.assert_close(never, plain, atol=1e-5, rtol=1e-5)
    for a, b in [(always, plain), (late, plain), (late, always)]:
        assert (a - b).abs().max() > 1e-3


class GaussianEps(nn.Module):
    """The exact eps-predictor for data ~ N(0, s^2 I) (positions in the zero-CoM subspace)."""

    def __init__(self, schedule, s: float = 1.0) -> None:
        super().__init__()
        self.schedule, self.s = schedule, s
        self.anchor = nn.Parameter(torch.zeros(1))  # sample_molecules reads the device from a parameter

    def posterior_mean(self, x_t, t):
        a, sig = self.schedule.alpha(t).to(x_t.dtype), self.schedule.sigma(t).to(x_t.dtype)
        return a * self.s**2 / (a**2 * self.s**2 + sig**2) * x_t

    def forward(self, x_t, t, cond, batch, num_graphs):
        a, sig = self.schedule.alpha(t).to(x_t.dtype), self.schedule.sigma(t).to(x_t.dtype)
        return (x_t - a * self.posterior_mean(x_t, t)) / sig


class SpreadRegressor:
    """A noise-aware toy 'property': the mean squared distance of a molecule's atoms from its
    centre, read from the exact posterior mean of x0 (differentiable in x_t)."""

    properties = ["gap"]

    def __init__(self, net: GaussianEps) -> None:
        self.net, self.schedule = net, net.schedule  # it reads x_t on the generator's own schedule

    def to_units(self, values):
        return values

    def predict_noisy(self, x_t, t, batch, num_graphs):
        pos = self.net.posterior_mean(x_t, t)[:, :3]
        sums = torch.zeros(num_graphs, dtype=pos.dtype).index_add_(0, batch, pos.pow(2).sum(1))
        return (sums / torch.bincount(batch, minlength=num_graphs).to(pos.dtype))[:, None]


def test_gradient_guidance_moves_a_toy_property_the_requested_way():
    model = MoleculeDiffusion(hidden=8, layers=1, ema_decay=0, conditioning=["gap"]).eval()
    model.net = GaussianEps(model.schedule)
    model.property_conditioning = PropertyConditioning(["gap"], np.zeros(1), np.ones(1), np.array([8]), np.zeros((1, 1)))
    regressor = SpreadRegressor(model.net)
    counts = [8] * 300

    def mean_spread(target: float | None, scale: float) -> float:
        cond = model.property_conditioning.condition(torch.full((len(counts), 1), target or 0.0))
        guidance = Guidance(1.0, regressor, scale) if scale else None
        mols = sample_molecules(model, counts, "dpmpp2m_sde", 30, torch.Generator().manual_seed(0),
                                cond=cond, guidance=guidance, precision="fp32")
        return float(np.mean([(pos ** 2).sum(1).mean() for _, pos in mols]))

    plain = mean_spread(None, 0.0)
    assert plain == pytest.approx(3 * 7 / 8, rel=0.1)  # N(0, I) in the 21-dim zero-CoM subspace of 8 atoms
    assert mean_spread(0.5, 2.0) < 0.6 * plain  # measured 1.41 against 2.70
    assert mean_spread(6.0, 2.0) > 1.8 * plain  # measured 6.23


def test_gradient_guidance_refuses_a_regressor_that_reads_another_noise_level():
    """A regressor trained on the cosine schedule sees, at each t, another noise level than the generator's
    polynomial_2 gives it; a clean classifier sees none: both refused in one sentence; a matching one guides."""
    from sci_diffusion.errors import UserError
    from sci_diffusion_molecules.models.property_model import PropertyPredictor

    model = MoleculeDiffusion(hidden=8, layers=1, ema_decay=0, conditioning=["gap"]).eval()
    model.property_conditioning = PropertyConditioning(["gap"], np.zeros(1), np.ones(1), np.array([5]), np.zeros((1, 1)))
    cond = model.property_conditioning.condition(torch.ones(1, 1))

    def guide(**kwargs):
        regressor = PropertyPredictor(["gap"], hidden=8, layers=1, **kwargs).eval()
        regressor.normalisation = model.property_conditioning
        return list(sample_molecules(model, [5], "ddim", 2, torch.Generator().manual_seed(0), cond=cond,
                                     guidance=Guidance(1.0, regressor, 1.0), precision="fp32"))

    with pytest.raises(UserError, match="trained on the noise schedule cosine with T = 1000, the generator samples on "
                                        "polynomial_2 with T = 1000"):
        guide(noise_aware=True, schedule="cosine")
    with pytest.raises(UserError, match="noise-aware regressor"):
        guide(noise_aware=False)
    assert len(guide(noise_aware=True, schedule="polynomial_2", timesteps=500)) == 1  # the same noise levels


@pytest.mark.parametrize("text, message", [
    (["foo=1"], "Unknown property 'foo'"),
    (["gap=abc"], "not a number"),
    (["gap=nan"], "finite number"),
    (["gap"], "NAME=VALUE"),
    (["gap=1", "gap=2"], "twice"),
])
def test_targets_that_are_not_a_known_property_and_a_finite_number_are_refused(text, message):
    with pytest.raises(UserError, match=message):
        parse_targets(text)


def test_targets_parse_from_several_words_or_one_comma_list():
    assert parse_targets(["gap=6.5", "homo=-6.1"]) == parse_targets(["gap=6.5,homo=-6.1"]) == {"gap": 6.5, "homo": -6.1}


def _saved(module: MoleculeDiffusion, path, domain: str = "molecules"):
    """``module`` as a minimal sci-diffusion checkpoint file (weights and the record the warm start reads)."""
    torch.save({"state_dict": module.state_dict(),
                "sci_diffusion": {"domain": domain, "module_class": f"{type(module).__module__}:{type(module).__qualname__}",
                                  "config": {}}}, path)
    return str(path)


def test_a_conditional_model_fine_tuned_from_an_unconditional_one_starts_as_it(tmp_path):
    torch.manual_seed(0)
    plain = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0).eval()
    conditional = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0, conditioning=["gap"],
                                    init_from=_saved(plain, tmp_path / "plain.ckpt")).eval()
    conditional.start_from_checkpoint()  # what setup("fit") does
    batch = torch.tensor([0, 0, 0, 1, 1])
    x = molecule_space(batch, 2).noise(torch.zeros(5, 9), torch.Generator().manual_seed(0))
    cond = torch.tensor([[1.2, 1.0], [-0.7, 1.0]])
    with torch.no_grad():
        torch.testing.assert_close(conditional(x, torch.tensor(0.4), cond, (batch, 2)),
                                   plain(x, torch.tensor(0.4), None, (batch, 2)))


def test_a_warm_start_that_does_not_fit_is_refused_in_one_sentence(tmp_path):
    plain = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0)
    with pytest.raises(UserError, match="does not fit this model: net.embed.weight"):
        MoleculeDiffusion(hidden=32, layers=2, init_from=_saved(plain, tmp_path / "a.ckpt")).start_from_checkpoint()
    with pytest.raises(UserError, match="holds a model of the 'medical' domain"):
        MoleculeDiffusion(hidden=16, layers=2, init_from=_saved(plain, tmp_path / "b.ckpt", "medical")).start_from_checkpoint()

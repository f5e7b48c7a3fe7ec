"""Progressive distillation (``sci_diffusion.distillation``): the two-step target, rounds on the analytic mixture,
the module's plumbing (a teacher checkpoint, the student's recorded grid) and the refusals."""
import copy

import lightning as L
import pytest
import torch

from sci_diffusion.checkpoints import file_sha256, load_module
from sci_diffusion.distillation import ProgressiveDistillationLoss, distilled_times, halve_grid, two_step_target
from sci_diffusion.errors import UserError
from sci_diffusion.gaussian_mixture import GaussianMixture, sliced_wasserstein
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.samplers import ddim, ddim_step, sampler_times, step_coefficients
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, ZeroCoMSpace
from sci_diffusion.time_grids import time_grid
from sci_diffusion.toy import MixtureDataModule, MixtureDiffusion

from .bond_state import bond_state

SCHEDULE = NoiseSchedule.from_name("cosine", 1000)


def _tilted_denoiser(x, t, cond=None):
    """A smooth, time-dependent stand-in for a network's data estimate."""
    return torch.tanh(x) * (1.0 + t) + 0.1 * t


@pytest.mark.parametrize("interval", [(0, 1, 2), (4, 5, 6)])  # a middle interval, and the last (t'' = 0)
def test_one_ddim_step_to_the_target_lands_where_the_teachers_two_steps_land(interval):
    """The defining property (Salimans & Ho, Algorithm 2): from ``x_t``, one DDIM step with the target as its data
    estimate reaches the teacher's ``x_t''``; in a zero-centre-of-mass space as well."""
    times = time_grid(SCHEDULE, 6)
    batch = torch.tensor([0, 0, 0, 1, 1])
    space = ZeroCoMSpace(batch=batch, num_samples=2)
    x_t = space.noise(torch.zeros(5, 3), torch.Generator().manual_seed(0))
    t, t_mid, t_next = (times[i] for i in interval)
    target = two_step_target(_tilted_denoiser, x_t, (t, t_mid, t_next), SCHEDULE, space)
    coeffs = [step_coefficients(SCHEDULE, u) for u in (t, t_mid, t_next)]
    (a_t, s_t, _), (a_m, s_m, _), (a_n, s_n, _) = coeffs
    x_mid = space.project(ddim_step(x_t, _tilted_denoiser(x_t, t.float()), a_t, s_t, a_m, s_m, 0.0, None))
    two = space.project(ddim_step(x_mid, _tilted_denoiser(x_mid, t_mid.float()), a_m, s_m, a_n, s_n, 0.0, None))
    one = ddim_step(x_t, target, a_t, s_t, a_n, s_n, 0.0, None)
    assert torch.allclose(one, two, atol=1e-5)
    assert not torch.allclose(target, _tilted_denoiser(x_t, t.float()), atol=1e-3)  # not the teacher's own estimate
    assert torch.allclose(space.centre_of_mass(target), torch.zeros(2, 3), atol=1e-5)


def test_categorical_rows_take_the_teachers_class_probabilities():
    """Bond orders have no deterministic step: there the target is the teacher's ``p(x_0 | x_t)`` at ``t``."""
    samples = 4
    space, x_t, probs, teacher = bond_state(SCHEDULE, samples=samples)

    times = time_grid(SCHEDULE, 4)
    target = two_step_target(teacher, x_t, (times[0], times[1], times[2]), SCHEDULE, space,
                             generator=torch.Generator().manual_seed(1))
    assert torch.equal(target[samples:], probs)
    assert not torch.allclose(target[:samples, :2], teacher(x_t, times[0])[:samples, :2])


def test_a_teacher_grid_halves_only_with_an_even_step_count():
    grid = time_grid(SCHEDULE, 8)
    assert torch.equal(halve_grid(grid), grid[[0, 2, 4, 6, 8]])
    with pytest.raises(ValueError, match="even number of teacher steps"):
        halve_grid(time_grid(SCHEDULE, 5))


def _distil_rounds(model: MixtureDiffusion, gmm: GaussianMixture, rounds: int, steps: int) -> torch.Tensor:
    """``rounds`` rounds of progressive distillation from 64 teacher steps; returns the student's grid."""
    grid, gen, space = time_grid(model.schedule, 64), torch.Generator().manual_seed(0), EuclideanSpace()
    base = model.loss_fn
    for _ in range(rounds):
        frozen = copy.deepcopy(model).requires_grad_(False).eval()
        loss_fn = ProgressiveDistillationLoss(base, grid, lambda context, m=frozen: m.denoiser(context))
        opt = torch.optim.Adam(model.parameters(), 5e-4)
        decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, steps)
        model.train()
        for _ in range(steps):
            loss = loss_fn(model, DiffusionBatch(gmm.sample(512, gen).float(), space), gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
        grid = loss_fn.student_times
    return grid


def test_four_distilled_steps_reach_the_teachers_fifty_step_distance(monkeypatch):
    """A v-prediction teacher on the analytic mixture, distilled 64 -> 32 -> 16 -> 8 -> 4: the student's 4 DDIM
    steps come within 1.3 x the teacher's 50-step sliced W2 to exact draws, where the teacher's own 4 steps are
    more than twice as far. With the teacher's second step taken from the wrong time, the student only learns the
    teacher's one step, and stays as far as the teacher's 4 steps."""
    torch.manual_seed(0)
    gmm, space = GaussianMixture.default_2d(), EuclideanSpace()
    reference = gmm.sample(4000, torch.Generator().manual_seed(1)).float()

    def distance(model, times):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x = ddim(model.eval().denoiser(), space.noise(torch.zeros(4000, 2), g), model.schedule, times, space)
        return sliced_wasserstein(x, reference)

    teacher = MixtureDiffusion(hidden=128, depth=3, prediction="v", ema_decay=0)
    gen, opt = torch.Generator().manual_seed(0), torch.optim.Adam(teacher.parameters(), 2e-3)
    decay = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.05, 2500)
    for _ in range(2500):
        loss = teacher.loss_fn(teacher, DiffusionBatch(gmm.sample(512, gen).float(), space), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    teacher_50 = distance(teacher, time_grid(teacher.schedule, 50))
    teacher_4 = distance(teacher, time_grid(teacher.schedule, 64)[::16])
    assert teacher_4 > 2 * teacher_50  # few steps cost the teacher

    student = copy.deepcopy(teacher)
    grid = _distil_rounds(student, gmm, rounds=4, steps=400)
    assert len(grid) == 5
    assert distance(student, grid) < 1.3 * teacher_50

    import sci_diffusion.distillation as distillation
    right = distillation.two_step_target
    monkeypatch.setattr(distillation, "two_step_target",
                        lambda teacher, x_t, times, *a, **k: right(teacher, x_t, (times[0], times[0], times[2]), *a, **k))
    broken = copy.deepcopy(teacher)
    # half the rounds' steps: the broken student starts as the teacher, at teacher_4, and only learns its one step
    assert distance(broken, _distil_rounds(broken, gmm, rounds=4, steps=200)) > 0.8 * teacher_4


def test_a_distillation_round_trains_from_a_teacher_checkpoint_and_the_student_records_its_grid(tmp_path):
    """``distill_from``: the student starts from the teacher's weights, trains through Lightning with the teacher
    beside it (not in its checkpoint), and loads later without the teacher file, sampling on its own grid only."""
    L.seed_everything(0)
    trainer = L.Trainer(max_steps=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(MixtureDiffusion(hidden=16, ema_decay=0, prediction="v"), MixtureDataModule(num_train=1024))
    teacher_file = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(teacher_file)

    student = MixtureDiffusion(hidden=16, ema_decay=0, prediction="v", distill_from=str(teacher_file), distill_steps=4)
    assert student.hparams.init_from == str(teacher_file) and student.hparams.teacher_sha256 == file_sha256(teacher_file)
    assert torch.equal(student.sampling_times, time_grid(student.schedule, 8)[::2])
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(student, MixtureDataModule(num_train=1024))
    student_file = tmp_path / "student.ckpt"
    trainer.save_checkpoint(student_file)
    assert not any(k.startswith("_teacher") for k in torch.load(student_file, weights_only=False)["state_dict"])

    teacher_file.unlink()
    loaded = load_module(student_file)
    assert torch.equal(distilled_times(loaded, "ddim", 4), student.sampling_times)
    with pytest.raises(UserError, match="distilled for 4 steps; sample it with --steps 4, not 50"):
        distilled_times(loaded, "ddim", 50)
    with pytest.raises(UserError, match="distilled for the ddim sampler.*not dpmpp2m"):
        distilled_times(loaded, "dpmpp2m", 4)
    plain = MixtureDiffusion(hidden=16, ema_decay=0)  # not distilled: any step count and sampler
    assert torch.equal(distilled_times(plain, "dpmpp2m", 10), sampler_times("dpmpp2m", plain.schedule, 10))

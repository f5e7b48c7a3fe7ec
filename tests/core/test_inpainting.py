"""Inpainting (RePaint) in the core: the exact conditional of the analytic mixture, and the frame of a
zero-centre-of-mass space."""
from __future__ import annotations

import pytest
import torch

from sci_diffusion.gaussian_mixture import GaussianMixture
from sci_diffusion.inpainting import inpaint
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, ProductSpace, ZeroCoMSpace
from sci_diffusion.time_grids import time_grid


def w1(a: torch.Tensor, b: torch.Tensor) -> float:
    """1-D Wasserstein-1 distance between two equal-sized samples."""
    return float((torch.sort(a).values - torch.sort(b).values).abs().mean())


def test_the_conditional_of_the_mixture_is_the_exact_one():
    gmm = GaussianMixture.default_2d()
    cond = gmm.conditional([0], torch.tensor([-1.0]))
    # By hand: only component 0 is near x = -1; its conditional mean is 0 + (0.10 / 0.30)(-1 + 1.5).
    assert cond.weights[0] > 0.999
    assert float(cond.means[0, 0]) == pytest.approx(0.5 / 3)
    assert float(cond.covs[0, 0, 0]) == pytest.approx(0.15 - 0.1**2 / 0.3)


def test_repaint_samples_the_exact_conditional_of_the_mixture_and_plain_replacement_does_not():
    gmm, schedule = GaussianMixture.default_2d(), NoiseSchedule.from_name("polynomial_2", 1000)
    n, value = 4000, -1.0
    conditional = gmm.conditional([0], torch.tensor([value]))
    exact = conditional.sample(n, torch.Generator().manual_seed(1))[:, 0]
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = value
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)

    held = {}  # step -> (time, the known coordinate of the state)

    def record(i, t, x, x0):
        held[i] = (t, x[:, 0].clone())

    def run(resample: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x_T = torch.randn(n, 2, dtype=torch.float64, generator=g)
        return inpaint(gmm.exact_denoiser(schedule), x_T, schedule, time_grid(schedule, 100), EuclideanSpace(), known, mask,
                       resample=resample, generator=g, callback=record)

    repaint, replaced = run(5), run(1)
    for i in (20, 50, 80):  # on the way, the known coordinate is its forward-noised value
        t, x_known = held[i]
        alpha, sigma = float(schedule.alpha(torch.tensor(t))), float(schedule.sigma(torch.tensor(t)))
        assert float(x_known.mean()) == pytest.approx(alpha * value, abs=4 * sigma / n**0.5 + 1e-9)
        assert float(x_known.std()) == pytest.approx(sigma, rel=0.05)
    assert torch.equal(repaint[:, 0], known[:, 0])  # the known coordinate is held exactly
    noise_floor = w1(exact, conditional.sample(n, torch.Generator().manual_seed(2))[:, 0])  # about 0.01
    assert w1(repaint[:, 1], exact) < 3 * noise_floor + 0.01
    assert w1(replaced[:, 1], exact) > 0.1  # replacement alone misses the conditional


def test_in_a_zero_com_space_the_known_fragment_keeps_its_shape_and_the_graph_its_frame():
    # Two graphs of 5 and 4 atoms; in each, the first two atoms are a known fragment.
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1])
    space = ProductSpace([(ZeroCoMSpace(batch, 2), 3), (EuclideanSpace(batch=batch, num_samples=2), 2)])
    schedule = NoiseSchedule.from_name("polynomial_2", 1000)
    known = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    mask = torch.tensor([1, 1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.float64)[:, None]

    def gaussian_denoiser(x, t, cond=None):  # E[x0 | x_t] for unit Gaussian data in the space
        a, s = schedule.alpha(t).double(), schedule.sigma(t).double()
        return space.project(a / (a**2 + s**2) * x)

    g = torch.Generator().manual_seed(0)
    x = inpaint(gaussian_denoiser, space.noise(known, g), schedule, time_grid(schedule, 20), space, known, mask, resample=2,
                generator=g)
    positions, features = x[:, :3], x[:, 3:]
    for graph in (0, 1):
        rows = (batch == graph).nonzero().flatten()
        fragment = rows[:2]
        shift = positions[fragment] - known[fragment, :3]
        torch.testing.assert_close(shift[0], shift[1])  # one translation: the fragment keeps its shape
        torch.testing.assert_close(positions[rows].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(features[mask[:, 0] > 0], known[mask[:, 0] > 0, 3:])  # features are held exactly
    assert torch.isfinite(x).all() and not torch.allclose(positions[2:5], known[2:5, :3])


def test_project_moving_zeroes_the_centre_of_mass_by_translating_only_the_movable_rows():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    space = ZeroCoMSpace(batch, 3)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    movable = torch.tensor([1, 0, 0, 1, 1, 0, 0], dtype=torch.float64)[:, None]  # graph 2: nothing movable
    out = space.project_moving(x, movable)
    torch.testing.assert_close(space.centre_of_mass(out), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[1:3], x[1:3])  # fixed rows of graph 0 stay
    torch.testing.assert_close(out[5:], space.project(x)[5:])  # no movable row: the whole graph moves
    moved = out[:5] - x[:5]
    torch.testing.assert_close(moved[3], moved[4])  # one translation per graph
    torch.testing.assert_close(EuclideanSpace().project_moving(x, movable), x)  # nothing to keep in R^n

"""A small atoms-and-bonds state that the distillation tests share: Gaussian rows beside categorical bond rows."""
from __future__ import annotations

from collections.abc import Callable

import torch

from sci_diffusion.categorical import CategoricalProcess, CategoricalSpace
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import EuclideanSpace, StackedSpace


def bond_state(schedule: NoiseSchedule, k: int = 3, samples: int = 4
               ) -> tuple[StackedSpace, torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]]:
    """``(space, x_t, probs, teacher)``: ``samples`` Gaussian rows (2 used columns of ``k``) stacked on ``samples``
    categorical rows of ``k`` classes, a noise draw ``x_t (2 samples, k)``, fixed class probabilities ``probs
    (samples, k)``, and a teacher whose Gaussian estimate is ``0.5 x + t`` and whose class probabilities are ``probs``."""
    process = CategoricalProcess.from_counts(torch.tensor([5.0, 3.0, 2.0]), schedule)
    ids = torch.arange(samples)
    space = StackedSpace([(EuclideanSpace(batch=ids, num_samples=samples), samples, 2),
                          (CategoricalSpace(process, ids, samples), samples, k)])
    x_t = space.noise(torch.zeros(2 * samples, k), torch.Generator().manual_seed(0))
    probs = torch.softmax(torch.arange(samples * k, dtype=torch.float32).reshape(samples, k) / 5, dim=1)

    def teacher(x, t, cond=None):
        return torch.cat([torch.nn.functional.pad(0.5 * x[:samples, :2] + t, (0, k - 2)), probs])

    return space, x_t, probs, teacher

"""Gaussian paths that are not variance preserving: the rectified-flow (linear) interpolant.

The core reads a noise schedule as a Gaussian path ``x_t = alpha_t x_0 + sigma_t eps`` on ``t in [0, 1]``
(``t = 1`` noise) through ``T``, ``alpha(t)``, ``sigma(t)``, ``log_snr(t)`` and ``t_from_log_snr``; nothing
in the loss, the denoiser, the time grids or the ODE samplers needs ``alpha^2 + sigma^2 = 1``. The
rectified-flow path (Liu et al. 2023; Lipman et al. 2023's optimal-transport path with sigma_min = 0)

    x_t = (1 - t) x_0 + t eps:  alpha_t = 1 - t,  sigma_t = t,  lambda_t = log((1 - t) / t)

is therefore one more path with the same reading interface, and the samplers serve it as they are:

- DDIM (``eta = 0``) with an x0 denoiser ``D`` steps ``x_s = (1 - s) D + s (x_t - (1 - t) D) / t``, which is
  exactly Euler on the flow ODE ``dx/dt = (x - D(x, t)) / t`` (velocity ``eps - x_0``): the flow's sampler;
- DPM-Solver++(2M) is the exponential integrator of the same ODE (its first step, from ``lambda = -inf``,
  is a DDIM step, and so is its second: the multistep slope across an infinite log-SNR step is zero);
- the ancestral and SDE samplers (ddpm, ddim with eta > 0, dpmpp2m_sde, pc) use the Gaussian posterior
  ``q(x_s | x_t, x_0)``, exact for the path with independent noise; a model trained with a noise-data
  coupling (``DenoisingLoss.coupling``) has another ``x_t | x_0`` and is sampled exactly only by the ODE;
- Heun integrates in ``x / alpha``, which does not exist at ``t = 1`` (``alpha = 0``): it refuses there.

The network predicts ``x_0`` (:func:`check_prediction`): an eps network's ``x_0 = (x_t - sigma eps) / alpha``
divides by ``alpha_1 = 0``, and v-prediction's conversions hold only on a variance-preserving path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .names import SCHEDULE_NAMES
from .schedules import NoiseSchedule

RECTIFIED_FLOW = "rectified_flow"
PATH_NAMES = (*SCHEDULE_NAMES, RECTIFIED_FLOW)


@dataclass(frozen=True)
class RectifiedFlowPath:
    """The linear path ``alpha_t = 1 - t``, ``sigma_t = t`` on ``t in [0, 1]``, read as a NoiseSchedule is.

    Args:
        T: the training grid: the loss draws ``t`` from ``{1..T} / T`` and the time grids' last network
            evaluation is at ``1 / T``, as for a NoiseSchedule.
    """

    T: int = 1000
    name: str = RECTIFIED_FLOW

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or int(self.T) != self.T or self.T < 1:
            raise ValueError(f"A rectified-flow path needs a whole number of training steps T >= 1, not {self.T!r}.")

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale ``1 - t`` (float64, ``t``'s shape, ``t`` clamped to [0, 1])."""
        return 1.0 - torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale ``t`` (float64, ``t``'s shape, clamped to [0, 1])."""
        return torch.as_tensor(t, dtype=torch.float64).clamp(0.0, 1.0)

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``lambda_t = log((1 - t) / t)``: +inf at t = 0, -inf at t = 1."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def sigma_ve(self, t: torch.Tensor | float) -> torch.Tensor:
        """Variance-exploding noise level ``t / (1 - t)`` (+inf at t = 1)."""
        return torch.exp(-self.log_snr(t))

    def t_from_log_snr(self, lam: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: ``t = 1 / (1 + e^lambda)``."""
        return torch.sigmoid(-torch.as_tensor(lam, dtype=torch.float64))


GaussianPath = NoiseSchedule | RectifiedFlowPath
"""What the loss, the denoiser, the time grids and the samplers read a schedule as."""


def noise_path(name: str, T: int = 1000) -> GaussianPath:
    """The path a model names: one of the variance-preserving schedules (``NoiseSchedule.from_name``) or
    ``"rectified_flow"``, with ``T`` training steps.

    Raises:
        ValueError: an unknown name (one sentence naming the choices).
    """
    if name == RECTIFIED_FLOW:
        return RectifiedFlowPath(T)
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"Unknown noise schedule {name!r}; choose one of {', '.join(PATH_NAMES)}.")
    return NoiseSchedule.from_name(name, T)


def check_prediction(path: GaussianPath, prediction: str) -> None:
    """Raise ``ValueError`` (one sentence) when a network of parameterisation ``prediction`` cannot be read on
    ``path``: a rectified-flow path takes x0-prediction only (module docstring)."""
    if isinstance(path, RectifiedFlowPath) and prediction != "x0":
        raise ValueError(f"A rectified-flow path trains an x0-predicting network, not {prediction!r}: eps would be "
                         "divided by alpha = 0 at t = 1, and v's conversions hold only on a variance-preserving path.")

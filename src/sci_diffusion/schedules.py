"""Variance-preserving noise schedules, read in discrete and in continuous time.

A schedule is a table of ``alpha_bar`` (= alpha^2) on the grid ``t_i = i / T``, ``i = 0..T``,
where ``t = 0`` is (almost) clean data and ``t = 1`` is (almost) pure noise. Between grid
points the schedule is read by linear interpolation of ``log(alpha_bar)``, which is exact on
the grid, monotone, and keeps the inverse ``t(lambda)`` cheap. All quantities follow
docs/protocols.md §3:

- ``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)``;
- ``lambda = log(alpha / sigma)`` (half the log-SNR);
- ``sigma_ve = sigma / alpha`` (the variance-exploding noise level used by Heun).

Discrete index ``i`` of a T-step DDPM (diffusers / MONAI count ``k = 0..T-1``) is ``i = k + 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .names import SCHEDULE_NAMES


def _linear_alpha_bar(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear betas (Ho et al. 2020), as in diffusers' ``beta_schedule="linear"``."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def _cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021) cosine schedule, betas clipped at ``max_beta``."""
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)])
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def _polynomial_alpha_bar(T: int, power: float = 2.0, s: float = 1e-5) -> np.ndarray:
    """EDM's ``polynomial_2`` (Hoogeboom et al. 2022): ``(1-(t/T)^2)^2`` with ratio clipping
    at 0.001 and the precision step ``(1-2s) alpha^2 + s``."""
    steps = T + 1
    x = np.linspace(0, steps, steps)
    alphas2 = (1 - np.power(x / steps, power)) ** 2
    # clip_noise_schedule: every ratio alpha^2_t / alpha^2_{t-1} >= 0.001
    alphas2 = np.concatenate([np.ones(1), alphas2], axis=0)
    ratios = np.clip(alphas2[1:] / alphas2[:-1], a_min=0.001, a_max=1.0)
    alphas2 = np.cumprod(ratios)
    return (1 - 2 * s) * alphas2 + s


def _sigmoid_alpha_bar(T: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> np.ndarray:
    """Sigmoid schedule of Jabri et al. (2023), ``alpha_bar(t) = (v(end) - v(t')) / (v(end) - v(start))``."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    t = np.linspace(0.0, 1.0, T + 1)
    v_start, v_end = sig(start / tau), sig(end / tau)
    alpha_bar = (v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start)
    return np.clip(alpha_bar, 1e-9, 1.0)


_BUILDERS = {
    "linear": _linear_alpha_bar,
    "cosine": _cosine_alpha_bar,
    "polynomial_2": _polynomial_alpha_bar,
    "sigmoid": _sigmoid_alpha_bar,
}


@dataclass(frozen=True, eq=False)  # eq on a NumPy table would raise; two schedules are equal only if identical
class NoiseSchedule:
    """A VP noise schedule on ``t in [0, 1]`` backed by a ``(T + 1,)`` table of ``alpha_bar``.

    Args:
        alpha_bar: ``(T + 1,)`` float64 array, ``alpha_bar[i]`` at ``t = i / T``, strictly
            decreasing, in ``(0, 1]``.
        name: the schedule's name, for checkpoints and logs.
    """

    alpha_bar_table: np.ndarray
    name: str = "custom"

    @classmethod
    def from_name(cls, name: str, T: int = 1000, **kwargs: float) -> NoiseSchedule:
        """Build one of ``SCHEDULE_NAMES`` with ``T`` discrete steps."""
        if name not in _BUILDERS:
            raise ValueError(f"Unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}.")
        return cls(np.asarray(_BUILDERS[name](T, **kwargs), dtype=np.float64), name)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: np.ndarray | torch.Tensor, name: str = "custom") -> NoiseSchedule:
        """Adopt a diffusers/MONAI ``alphas_cumprod`` (length T, index k = 0..T-1): ``i = k + 1``."""
        ac = np.asarray(alphas_cumprod, dtype=np.float64)
        return cls(np.concatenate([[1.0], ac]), name)

    def __post_init__(self) -> None:
        table = np.asarray(self.alpha_bar_table, dtype=np.float64)
        if table.ndim != 1 or len(table) < 2 or np.any(np.diff(table) >= 0) or table[-1] <= 0 or table[0] > 1:
            raise ValueError("alpha_bar must be a strictly decreasing table in (0, 1] with at least 2 entries.")
        object.__setattr__(self, "alpha_bar_table", table)
        object.__setattr__(self, "_log_ab", np.log(table))
        object.__setattr__(self, "_device_tables", {})

    def _table(self, which: str, device: torch.device) -> torch.Tensor:
        """The float64 table ``"alpha_bar"`` or ``"log_alpha_bar"`` on ``device``, copied there once:
        a training step on a GPU evaluates the schedule several times, and a copy from host memory
        each time would make the host wait for the device."""
        key = (which, torch.device(device))
        if key not in self._device_tables:
            values = self.alpha_bar_table if which == "alpha_bar" else self._log_ab
            self._device_tables[key] = torch.as_tensor(values, device=device)
        return self._device_tables[key]

    # ----- discrete time --------------------------------------------------------------------
    @property
    def T(self) -> int:
        """Number of discrete steps (the table has ``T + 1`` entries)."""
        return len(self.alpha_bar_table) - 1

    def discrete_alpha_bar(self, i: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """``alpha_bar`` at integer step(s) ``i in 0..T``; float64 tensor of ``i``'s shape."""
        i = torch.as_tensor(i, dtype=torch.long)
        return self._table("alpha_bar", i.device)[i]

    # ----- continuous time ------------------------------------------------------------------
    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """``log alpha_bar(t)``, piecewise linear between grid points. Shape of ``t``, float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        pos = (t.clamp(0.0, 1.0) * self.T)
        lo = pos.floor().clamp(max=self.T - 1).long()
        frac = pos - lo
        table = self._table("log_alpha_bar", t.device)  # results live on t's device
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        return self.log_alpha_bar(t).exp()

    def alpha(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale ``alpha_t = sqrt(alpha_bar)``."""
        return (0.5 * self.log_alpha_bar(t)).exp()

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale ``sigma_t = sqrt(1 - alpha_bar)``."""
        return (-torch.expm1(self.log_alpha_bar(t))).clamp(min=0).sqrt()

    def log_snr(self, t: torch.Tensor | float) -> torch.Tensor:
        """``lambda_t = log(alpha_t / sigma_t)`` (+inf where sigma = 0)."""
        lab = self.log_alpha_bar(t)
        return 0.5 * (lab - torch.log(-torch.expm1(lab)))

    def sigma_ve(self, t: torch.Tensor | float) -> torch.Tensor:
        """Variance-exploding noise level ``sigma_t / alpha_t = sqrt((1 - alpha_bar)/alpha_bar)``."""
        return torch.exp(-self.log_snr(t))

    def t_from_log_snr(self, lam: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`log_snr`: the ``t in [0, 1]`` with ``lambda_t = lam`` (clamped)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        target = -torch.nn.functional.softplus(-2 * lam)  # log sigmoid(2 lam) = log alpha_bar
        xs = torch.as_tensor(self._log_ab[::-1].copy(), device=lam.device)  # increasing
        ts = torch.linspace(1.0, 0.0, self.T + 1, dtype=torch.float64, device=lam.device)
        target = target.clamp(float(xs[0]), float(xs[-1]))
        idx = torch.searchsorted(xs, target.reshape(-1)).clamp(1, self.T).reshape(target.shape)
        x0, x1 = xs[idx - 1], xs[idx]
        w = torch.where(x1 > x0, (target - x0) / (x1 - x0), torch.zeros_like(target))
        return ts[idx - 1] + w * (ts[idx] - ts[idx - 1])

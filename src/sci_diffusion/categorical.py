"""Discrete diffusion over K classes (D3PM, Austin et al. 2021; DiGress and MiDi, Vignac et al. 2023), as a
state space the core's samplers and training loss serve beside the Gaussian ones.

A categorical variable (a bond order on an atom pair, an atom type) is a one-hot row ``x`` of K classes.
The forward process keeps it with probability ``abar_t`` and otherwise redraws it from a prior ``m``:

    q(x_t | x_0) = Cat(x_t; abar_t x_0 + (1 - abar_t) m),   Qbar_t = abar_t I + (1 - abar_t) 1 m^T,

with ``abar_t`` a noise schedule's ``alpha_bar(t)`` (the Gaussian part's signal variance, so both run on
one time grid). These matrices compose as ``Qbar_s Q_{t|s} = Qbar_t`` with ``Q_{t|s}`` of keep
probability ``abar_t / abar_s``, and ``m`` is the process's stationary distribution: ``m^T Qbar_t = m^T``
(``t = 1`` of a schedule that ends near ``abar = 0`` is ``m`` itself). The prior is the data's class
marginal (MiDi and DiGress: "marginal transitions", the default) or uniform.

The reverse step draws from ``p(x_s | x_t) = sum_x0 q(x_s | x_t, x_0) p(x_0 | x_t)`` with the network's
class probabilities for ``p(x_0 | x_t)`` (DiGress, Eq. 4); the training loss is the cross-entropy of those
probabilities against the clean class. :class:`CategoricalSpace` holds the variable's rows; in a
:class:`~sci_diffusion.state_spaces.StackedSpace` it joins Gaussian rows (atoms), so that one state
tensor flows through the samplers: the ancestral samplers (``ddpm``, ``dpmpp2m_sde``) take this reverse
step for the categorical rows, and the others refuse a state with categorical rows in one sentence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .generators import PerSampleGenerator
from .losses import DenoisingLoss, NoisedBatch
from .schedules import NoiseSchedule
from .state_spaces import GraphRowsSpace, per_sample_noise

if TYPE_CHECKING:  # annotations only
    from .module import DiffusionBatch

PRIORS = ("marginal", "uniform")
PRIOR_FLOOR = 1e-7  # MiDi adds it to every class's marginal: a class absent from the data keeps some prior mass


@dataclass(frozen=True, eq=False)
class CategoricalProcess:
    """The forward process ``Qbar_t = abar_t I + (1 - abar_t) 1 m^T`` over K classes (module docstring).

    Args:
        prior: ``(K,)`` the stationary distribution ``m`` (non-negative, sums to 1).
        schedule: whose ``alpha_bar(t)`` is the keep probability ``abar_t``; ``abar_0 = 1`` exactly, as a time
            grid's last time is the data itself.
    """

    prior: Tensor
    schedule: NoiseSchedule

    def __post_init__(self) -> None:
        prior = torch.as_tensor(self.prior, dtype=torch.float64).reshape(-1)
        if len(prior) < 2 or (prior < 0).any() or abs(float(prior.sum()) - 1.0) > 1e-6:
            raise ValueError("A categorical prior needs at least 2 non-negative class probabilities that sum to 1.")
        object.__setattr__(self, "prior", prior / prior.sum())

    @classmethod
    def from_counts(cls, counts: Tensor, schedule: NoiseSchedule, prior: str = "marginal") -> CategoricalProcess:
        """The process whose prior is the class marginal of ``counts`` ``(K,)`` (``"marginal"``) or uniform."""
        counts = torch.as_tensor(counts, dtype=torch.float64)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, not {prior!r}.")
        if prior == "uniform":
            return cls(torch.full_like(counts, 1.0 / len(counts)), schedule)
        marginal = counts / counts.sum() + PRIOR_FLOOR  # as MiDi: no class without mass, so the posterior stays finite
        return cls(marginal / marginal.sum(), schedule)

    @property
    def num_classes(self) -> int:
        return len(self.prior)

    def keep(self, t: Tensor) -> Tensor:
        """``abar_t`` (float64, ``t``'s shape): the probability that a class survives from 0 to ``t``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.where(t > 0, self.schedule.alpha_bar(t), torch.ones_like(t))

    def forward_probs(self, x0: Tensor, keep: Tensor) -> Tensor:
        """``q(x_t | x_0)`` ``(R, K)`` of one-hot (or probability) rows ``x0`` ``(R, K)``, ``keep`` = ``abar_t``
        per row ``(R, 1)`` or a scalar."""
        return keep * x0 + (1 - keep) * self.prior.to(x0)

    def posterior(self, x_t: Tensor, x0_probs: Tensor, keep_t: Tensor, keep_s: Tensor) -> Tensor:
        """``p(x_s | x_t) = sum_i p(x_0 = i) q(x_s | x_t, x_0 = i)`` ``(R, K)`` for ``s < t`` (DiGress, Eq. 4).

        Args:
            x_t: ``(R, K)`` one-hot states at ``t``.
            x0_probs: ``(R, K)`` class probabilities of ``x_0`` (the network's); negative entries (guidance
                extrapolates) are clipped and each row renormalised.
            keep_t, keep_s: ``abar`` at ``t`` and ``s``, scalars or ``(R, 1)``.
        """
        m = self.prior.to(x_t)
        x0_probs = x0_probs.to(x_t).clamp(min=0)
        x0_probs = x0_probs / x0_probs.sum(-1, keepdim=True).clamp(min=torch.finfo(x_t.dtype).tiny)
        keep_ts = keep_t / keep_s
        m_j = (x_t * m).sum(-1, keepdim=True)  # the prior's mass on each row's current class j
        to_x_t = keep_ts * x_t + (1 - keep_ts) * m_j  # q(x_t = j | x_s = k), over k
        from_x0 = keep_t * x_t + (1 - keep_t) * m_j  # q(x_t = j | x_0 = i), over i
        w = x0_probs / from_x0
        through_s = keep_s * w + (1 - keep_s) * m * w.sum(-1, keepdim=True)  # sum_i w_i q(x_s = k | x_0 = i)
        return to_x_t * through_s

    @staticmethod
    def cross_entropy(logits: Tensor, x0: Tensor) -> Tensor:
        """``-log p(x_0)`` per row ``(R,)`` of ``logits`` ``(R, K)`` against one-hot ``x0`` ``(R, K)``:
        the training loss on ``x_0``'s class."""
        return -(torch.log_softmax(logits.float(), dim=-1) * x0.float()).sum(-1)


def draw_classes(probs: Tensor, uniform: Tensor) -> Tensor:
    """One-hot ``(R, K)`` draws from unnormalised class probabilities ``probs`` ``(R, K)`` by inverse
    transform with ``uniform`` ``(R, 1)`` numbers in [0, 1)."""
    cumulative = probs.cumsum(-1)
    index = (cumulative < uniform * cumulative[:, -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)
    return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)


@dataclass
class CategoricalSpace(GraphRowsSpace):
    """Rows of one-hot classes ``(R, K)`` under a :class:`CategoricalProcess`, grouped into samples by
    ``batch`` ``(R,)`` (e.g. the molecule of each atom pair).

    Its "noise" is a draw from the prior (the process's ``t = 1``), so a sampler's ``x_T = space.noise(...)``
    starts it where the forward process ends. Draws take a sample's uniforms from that sample's generator
    (``Phi(z)`` of its standard normals), so a sample's classes do not depend on its batch.
    """

    process: CategoricalProcess
    batch: Tensor
    num_samples: int
    categorical = True

    def project(self, x: Tensor) -> Tensor:
        return x

    def uniforms(self, like: Tensor, generator: torch.Generator | PerSampleGenerator | None) -> Tensor:
        """``(R, 1)`` float64 uniform numbers in [0, 1), each row's from its sample's generator."""
        shape = torch.zeros(like.shape[0], 1, dtype=torch.float64, device=like.device)
        if isinstance(generator, PerSampleGenerator):
            z = per_sample_noise(generator, self.batch, shape)
        else:
            device = like.device if generator is None else generator.device
            z = torch.randn(shape.shape, generator=generator, dtype=torch.float64, device=device).to(like.device)
        return torch.special.ndtr(z).clamp(max=1 - 1e-12)

    def noise(self, like: Tensor, generator: torch.Generator | PerSampleGenerator | None = None) -> Tensor:
        prior = self.process.prior.to(like.device).expand(like.shape[0], -1)
        return draw_classes(prior, self.uniforms(like, generator)).to(like.dtype)

    def _keep(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar`` at a 0-d ``t`` or per-sample ``t`` ``(num_samples,)``, as a scalar or per row ``(R, 1)``."""
        keep = self.process.keep(t.to(like.device))
        return keep if keep.dim() == 0 else keep[self.batch][:, None]

    def categorical_forward(self, x_t: Tensor, x0: Tensor, t: Tensor, generator=None) -> Tensor:
        """A draw of ``x_t ~ q(x_t | x_0 = x0)`` ``(R, K)`` at per-sample or 0-d times ``t`` (``x_t``'s
        Gaussian draw is replaced)."""
        probs = self.process.forward_probs(x0.double(), self._keep(t, x0))
        return draw_classes(probs, self.uniforms(x0, generator)).to(x0.dtype)

    def categorical_reverse(self, x_t: Tensor, x0: Tensor, x_s: Tensor, t: Tensor, s: Tensor, generator=None) -> Tensor:
        """A draw of ``x_s ~ p(x_s | x_t)`` ``(R, K)`` with ``x0`` the data estimate's class probabilities (the
        Gaussian update ``x_s`` is replaced)."""
        probs = self.process.posterior(x_t.double(), x0.double(), self._keep(t, x_t), self._keep(s, x_t))
        return draw_classes(probs, self.uniforms(x_t, generator)).to(x_s.dtype)

    def categorical_mask(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)

    def categorical_loss(self, pred: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """``(summed cross-entropy, rows)`` of the logits ``pred`` ``(R, K)`` against ``x0``."""
        return CategoricalProcess.cross_entropy(pred, x0).sum(), torch.tensor(float(x0.shape[0]), device=x0.device)


@dataclass
class CategoricalDenoisingLoss(DenoisingLoss):
    """:class:`~sci_diffusion.losses.DenoisingLoss` for a state with categorical parts: the categorical entries
    of ``x_t`` are drawn from their own forward process at the same time as the Gaussian ones, the Gaussian
    regression leaves them (and any padding) out, and the loss adds ``categorical_weight`` times the mean
    cross-entropy of the network's logits for them against the clean classes (MiDi: 2 for bonds against 3
    for positions). The categorical rows take no known mask or SNR weight.

    Args:
        categorical_weight: the cross-entropy's weight relative to the Gaussian regression (weight 1).
    """

    categorical_weight: float = 1.0

    def noise_at(self, batch: DiffusionBatch, t: Tensor, generator: torch.Generator | None = None) -> NoisedBatch:
        noised = super().noise_at(batch, t, generator)
        noised.x_t = batch.space.categorical_forward(noised.x_t, batch.x0, noised.t, generator)
        return noised

    def terms(self, pred: Tensor, batch: DiffusionBatch, noised: NoisedBatch, mask: Tensor | None) -> Tensor:
        gaussian = 1 - batch.space.categorical_mask(batch.x0)
        regression = super().terms(pred, batch, noised, gaussian if mask is None else mask * gaussian)
        total, rows = batch.space.categorical_loss(pred, batch.x0)
        return regression + self.categorical_weight * total / rows.clamp(min=1)

"""A Gaussian mixture whose exact denoiser is known in closed form.

It is the analytic yardstick of the core: a sampler fed :meth:`GaussianMixture.exact_denoiser`
must reproduce the mixture, so sampler error is measured with no network in the way.

For ``x_t = alpha x_0 + sigma eps`` and ``x_0 ~ sum_k w_k N(mu_k, C_k)``:
``x_t ~ sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I)``, and
``E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + alpha C_k (alpha^2 C_k + sigma^2 I)^-1 (x_t - alpha mu_k))``
with posterior responsibilities ``r_k``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .schedules import NoiseSchedule


@dataclass
class GaussianMixture:
    """Weights ``(K,)``, means ``(K, D)`` and covariances ``(K, D, D)`` (float64)."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    @classmethod
    def default_2d(cls) -> GaussianMixture:
        """Three unequal, anisotropic components in 2-D (the test and benchmark target)."""
        weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
        means = torch.tensor([[-1.5, 0.0], [1.5, 1.0], [0.5, -1.8]], dtype=torch.float64)
        covs = torch.tensor(
            [[[0.30, 0.10], [0.10, 0.15]], [[0.10, -0.05], [-0.05, 0.20]], [[0.05, 0.0], [0.0, 0.05]]],
            dtype=torch.float64,
        )
        return cls(weights, means, covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact draws, ``(n, D)`` float64."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[k] + torch.einsum("nij,nj->ni", chol[k], z)

    def _log_resp(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Log responsibilities ``(n, K)`` and the per-component gains ``(K, D, D)``."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov_t = alpha**2 * self.covs + sigma**2 * eye  # (K, D, D)
        dist = torch.distributions.MultivariateNormal(alpha * self.means, covariance_matrix=cov_t)
        log_p = dist.log_prob(x[:, None, :]) + self.weights.log()  # (n, K)
        gain = alpha * self.covs @ torch.linalg.inv(cov_t)
        return log_p - log_p.logsumexp(1, keepdim=True), gain

    def posterior_mean(self, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
        """``E[x_0 | x_t]`` for ``x_t`` of shape ``(n, D)``; returned in ``x_t``'s dtype."""
        x = x_t.to(torch.float64)
        alpha, sigma = torch.as_tensor(alpha, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
        log_r, gain = self._log_resp(x, alpha, sigma)
        per_k = self.means + torch.einsum("kij,nkj->nki", gain, x[:, None, :] - alpha * self.means)
        return (log_r.exp()[..., None] * per_k).sum(1).to(x_t.dtype)

    def exact_denoiser(self, schedule: NoiseSchedule):
        """The optimal denoiser ``D(x_t, t, cond) = E[x_0 | x_t]`` under ``schedule``."""

        def denoise(x_t: Tensor, t: Tensor, cond=None) -> Tensor:
            return self.posterior_mean(x_t, schedule.alpha(t), schedule.sigma(t))

        return denoise

    def conditional(self, known_dims: list[int], values: Tensor) -> GaussianMixture:
        """The exact mixture of the other coordinates given ``x[known_dims] = values`` (float64).

        Each component conditions as a Gaussian (Schur complement); its weight becomes
        ``w_k N(values; mu_k[known], C_k[known, known])``, renormalised.
        """
        values = torch.as_tensor(values, dtype=torch.float64)
        free = [d for d in range(self.dim) if d not in known_dims]
        kk = self.covs[:, known_dims][:, :, known_dims]
        fk = self.covs[:, free][:, :, known_dims]
        ff = self.covs[:, free][:, :, free]
        gain = fk @ torch.linalg.inv(kk)  # (K, F, Kn)
        means = self.means[:, free] + torch.einsum("kfn,kn->kf", gain, values - self.means[:, known_dims])
        covs = ff - gain @ fk.transpose(1, 2)
        log_w = self.weights.log() + torch.distributions.MultivariateNormal(
            self.means[:, known_dims], covariance_matrix=kk).log_prob(values)
        return GaussianMixture((log_w - log_w.logsumexp(0)).exp(), means, covs)

    def assign(self, x: Tensor) -> Tensor:
        """Most likely component of each point of ``x`` ``(n, D)``: ``(n,)`` long."""
        log_r, _ = self._log_resp(x.to(torch.float64), torch.tensor(1.0, dtype=torch.float64),
                                  torch.tensor(0.0, dtype=torch.float64))
        return log_r.argmax(1)


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds ``(n, D)``.

    Each random unit direction gives a 1-D W2 from sorted projections; the result is the square
    root of their mean. Zero for identical sets, and consistent as ``n`` grows.
    """
    if a.shape != b.shape:
        raise ValueError("sliced_wasserstein needs two point clouds of the same shape.")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a.to(torch.float64) @ dirs).sort(0)
    pb, _ = (b.to(torch.float64) @ dirs).sort(0)
    return float((pa - pb).pow(2).mean().sqrt())


def mixture_statistics(gmm: GaussianMixture, x: Tensor) -> dict[str, Tensor]:
    """Empirical weights ``(K,)``, means ``(K, D)`` and covariances ``(K, D, D)`` of ``x``,
    with each point assigned to its most likely component."""
    k = gmm.assign(x)
    x = x.to(torch.float64)
    weights = torch.stack([(k == j).double().mean() for j in range(len(gmm.weights))])
    means = torch.stack([x[k == j].mean(0) for j in range(len(gmm.weights))])
    covs = torch.stack([torch.cov(x[k == j].T) for j in range(len(gmm.weights))])
    return {"weights": weights, "means": means, "covs": covs}

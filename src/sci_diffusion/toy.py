"""A 2-D Gaussian-mixture task for the training plumbing: an MLP denoiser and its data module.

It exercises :class:`~sci_diffusion.module.DiffusionModule` end to end in seconds (``fit``, EMA,
periodic sampling, checkpoints, resume), with an exact answer to compare against.
``sci-diffusion fit --config configs/gmm/gmm_mlp.yaml``.
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from .gaussian_mixture import GaussianMixture, sliced_wasserstein
from .module import DiffusionBatch, DiffusionModule
from .samplers import get_sampler, sampler_times
from .state_spaces import EuclideanSpace


class TimeMLP(nn.Module):
    """``net(x (B, D), t (B,) or 0-d) -> (B, D)`` with a sinusoidal time embedding."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_features: int = 16) -> None:
        super().__init__()
        self.time_features = time_features
        layers: list[nn.Module] = [nn.Linear(dim + time_features, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None, context: Any = None) -> Tensor:
        t = t.to(x.dtype).expand(x.shape[0]) if t.dim() == 0 else t.to(x.dtype)
        freqs = torch.exp(torch.arange(self.time_features // 2, dtype=x.dtype) * (math.log(1000.0) / (self.time_features // 2)))
        angles = t[:, None] * freqs[None] * math.pi
        return self.mlp(torch.cat([x, angles.sin(), angles.cos()], dim=1))


class MixtureDiffusion(DiffusionModule):
    """Diffusion on ``GaussianMixture.default_2d()`` with a :class:`TimeMLP`.

    Args:
        hidden, depth: MLP size.
        val_num: points sampled at validation for the distance metric.
        **kwargs: the core DiffusionModule's arguments.
    """

    domain = "gmm"

    def __init__(self, hidden: int = 128, depth: int = 3, val_num: int = 2000, **kwargs: Any) -> None:
        kwargs.setdefault("schedule", "cosine")
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def build_network(self) -> nn.Module:
        return TimeMLP(2, self.hparams.hidden, self.hparams.depth)

    def prepare_batch(self, batch: Any) -> DiffusionBatch:
        (x0,) = batch
        return DiffusionBatch(x0, EuclideanSpace())

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)
        space = EuclideanSpace()
        x_T = space.noise(torch.zeros(self.hparams.val_num, 2), gen)
        times = sampler_times(self.hparams.val_sampler, self.schedule, self.hparams.val_steps)
        x = get_sampler(self.hparams.val_sampler)(self.denoiser(), x_T, self.schedule, times, space, generator=gen)
        ref = GaussianMixture.default_2d().sample(self.hparams.val_num, torch.Generator().manual_seed(1))
        return {"sliced_w2": sliced_wasserstein(x, ref)}


class MixtureDataModule(L.LightningDataModule):
    """Exact draws from ``GaussianMixture.default_2d()``: ``num_train`` for training, 1,000 for validation."""

    def __init__(self, num_train: int = 20000, batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        gmm = GaussianMixture.default_2d()
        g = torch.Generator().manual_seed(self.hparams.seed)
        self.train_x = gmm.sample(self.hparams.num_train, g).float()
        self.val_x = gmm.sample(1000, g).float()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.train_x), batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_x), batch_size=self.hparams.batch_size)

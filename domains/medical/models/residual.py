"""``MRItoCTResidualDiffusion``: a regression mean plus a diffusion model of what it gets wrong.

After NVIDIA's CorrDiff (``../shared/REFERENCE.md`` §2, docs/protocols.md §2): a frozen regression
U-Net (``regression.MRItoCTRegression``, trained first) predicts the mean CT slice ``mu``; a
conditional MONAI ``DiffusionModelUNet`` learns only the residual ``r = (ct - mu) / s``,
conditioned on the k MR slices and on ``mu`` (channel concatenation, ``in_channels = 2 + k``).

A sample is ``mu + s * r`` (``s`` = ``residual_scale``, or a per-voxel map below), so K samples
share the regression's mean and differ only where the residual model is unsure: their mean is the
synthetic CT and their spread the uncertainty.
A residual model whose residual is zero is exactly the regression model.

**Heteroscedastic residuals** (``scale_channels``): the regression errs little in soft tissue and a
lot at bone and air edges, but one ``residual_scale`` for every voxel makes the diffusion model learn
*where* the error lives before it can sample it, and an undertrained one spreads its samples about
evenly over the body. With ``scale_channels`` a small MONAI ``UNet`` predicts a per-voxel scale
``s(mr, mu)`` of the regression's error (a Laplace fit, ``s = sqrt(2) b``, so that ``(ct - mu) / s``
has about unit variance), trained beside the diffusion network; the diffused residual is
``(ct - mu) / s`` and a sample ``mu + s * r``.

The regression network is part of this module (``self.regression``, frozen, in its checkpoint's
state dict) and its architecture is in the hyperparameters (``regression``), so a trained residual
checkpoint is self-contained: the regression checkpoint it started from is needed only to train.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sci_diffusion.checkpoints import module_class_name, read_checkpoint
from sci_diffusion.distillation import distilled_times
from sci_diffusion.generators import PerSampleGenerator
from sci_diffusion.losses import DenoisingLoss
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.samplers import get_sampler
from sci_diffusion.state_spaces import EuclideanSpace

from .diffusion import MRItoCTDiffusion, slice_batch
from .regression import MRItoCTRegression, regression_unet

REGRESSION_KEYS = ("k", "channels", "num_res_units")  # what rebuilds the regression network


def read_regression_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(architecture, network weights)`` of a trained ``MRItoCTRegression`` checkpoint (EMA weights),
    or of the frozen regression inside a trained ``MRItoCTResidualDiffusion`` checkpoint (so a new
    residual model can start from the same mean as a bundled one).

    Raises:
        ValueError: the checkpoint holds another kind of model.
    """
    ckpt = read_checkpoint(path)
    meta = ckpt["sci_diffusion"]
    held = module_class_name(meta)
    if held == MRItoCTResidualDiffusion.__qualname__:
        architecture, prefix = meta["config"]["regression"], "regression."  # a residual model's frozen regression
    elif held == MRItoCTRegression.__qualname__:
        architecture, prefix = meta["config"], "net."
    else:
        raise ValueError(f"{path} holds a {meta['module_class']}, not an MRItoCTRegression to build residuals on.")
    weights = {key[len(prefix):]: value for key, value in ckpt["state_dict"].items() if key.startswith(prefix)}
    return {key: architecture[key] for key in REGRESSION_KEYS}, weights


def laplace_scale_nll(error: Tensor, scale: Tensor, mask: Tensor) -> Tensor:
    """Mean Laplace negative log-likelihood of ``error`` inside ``mask`` (all ``(B, 1, H, W)``), up to a constant,
    with the scale given as ``scale = sqrt(2) b`` (the Laplace's standard deviation): ``log b + |error| / b``.

    Over a constant ``scale`` it is smallest at ``sqrt(2) * mean |error|``.
    """
    b = scale / math.sqrt(2.0)
    nll = (b.log() + error.abs() / b) * mask
    return nll.sum() / mask.sum().clamp(min=1.0)


class ResidualLoss(DenoisingLoss):
    """The residual model's training loss: the core's diffusion loss on the scaled residual, plus (with
    ``scale_channels``, when the batch carries a scale map) the scale map's Laplace negative log-likelihood of
    the regression error ``ct - mu`` in the body mask (``laplace_scale_nll``), logged as ``scale_nll``."""

    def __call__(self, model: MRItoCTResidualDiffusion, batch: ResidualBatch,
                 generator: torch.Generator | None = None) -> Tensor:
        loss = super().__call__(model, batch, generator)
        if batch.scale is None:
            return loss
        # batch.x0 * scale is ct - mu, in CT units; the scale keeps its gradient here only
        scale_loss = laplace_scale_nll(batch.x0 * batch.scale.detach(), batch.scale, batch.mask)
        if model._trainer is not None:
            model.log(f"{'train' if model.training else 'val'}/scale_nll", scale_loss, batch_size=batch.num_samples)
        return loss + scale_loss


@dataclass
class ResidualBatch(DiffusionBatch):
    """A residual model's training batch: ``x0`` is ``(ct - mean) / s`` with ``s`` detached, and ``scale``
    is the scale map ``s`` ``(B, 1, H, W)`` with its gradient (None without ``scale_channels``), so the
    Laplace loss trains the scale network from the same forward pass."""

    scale: Tensor | None = None


class MRItoCTResidualDiffusion(MRItoCTDiffusion):
    """Residual diffusion for MRI-to-CT: ``ct = regression(mr) + residual_scale * r``, ``r`` diffused.

    Args:
        regression_ckpt: the trained ``MRItoCTRegression`` checkpoint whose (EMA) network becomes the
            frozen mean; read only when ``regression`` is None (a fresh model), so a saved residual
            model loads without it.
        regression: the regression network's architecture ``{"k", "channels", "num_res_units"}``;
            filled in from ``regression_ckpt`` when None.
        residual_scale: the residual is divided by this before diffusion, in the [-1, 1] CT units
            (1 unit = 2012 HU). The bundled regression's residual has a standard deviation of about
            0.09 inside the body on a 2 mm phantom, so 0.1 gives the diffusion model data of about
            unit variance, as its noise schedule assumes. With ``scale_channels`` it is the scale map's
            starting point: ``s = residual_scale * exp(net)``, clamped to ``exp([-4, 2])`` times it.
        scale_channels: the channels of a MONAI ``UNet`` (k MR slices and the mean in, one residual
            unit of its own) that predicts the per-voxel scale ``s`` of the regression's error, trained
            with the Laplace negative log-likelihood of ``ct - mu`` in the body mask beside the
            diffusion loss (module docstring); None: one ``residual_scale`` for every voxel.
        zero_outside_body: hold the residual state at 0 outside the body mask in training and sampling (issue 30;
            outside, ``(ct - mu) / s`` with ``s`` as small as 0.002 fed GroupNorm and attention values that mean
            nothing). A checkpoint written before this option samples without it, as it was trained
            (``on_load_checkpoint``): zeroing only at sampling moved the bundled model's sCT by 2.6 HU on average
            in the body (its MAE by +0.8 HU) on a 4 mm phantom.
        **kwargs: ``MRItoCTDiffusion``'s network size and the core's diffusion arguments.
    """

    loss_class = ResidualLoss  # the diffusion loss plus the scale map's Laplace term

    def __init__(self, regression_ckpt: str | None = None, regression: dict[str, Any] | None = None,
                 residual_scale: float = 0.1, scale_channels: Sequence[int] | None = None, zero_outside_body: bool = True,
                 **kwargs: Any) -> None:
        if residual_scale <= 0:
            raise ValueError(f"residual_scale must be positive, got {residual_scale}.")
        weights = None
        if regression is None:
            if regression_ckpt is None:
                raise ValueError("A residual model needs its regression model: give regression_ckpt.")
            regression, weights = read_regression_checkpoint(regression_ckpt)
        regression = {key: regression[key] for key in REGRESSION_KEYS}
        if int(regression["k"]) != int(kwargs.get("k", 3)):
            raise ValueError(f"The regression model takes k={regression['k']} MR slices but this model k={kwargs.get('k', 3)}.")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.hparams["regression"] = regression  # saved with the checkpoint: it rebuilds self.regression
        self.regression = regression_unet(**regression)
        if weights is not None:
            self.regression.load_state_dict(weights)
        self.regression.requires_grad_(False)
        self.regression.eval()
        # Built here, after the core built ``self.net``: a scale network of its own, trained beside it.
        self.scale_net = None if scale_channels is None else regression_unet(self.context_channels, scale_channels, 1)

    @property
    def context_channels(self) -> int:
        """Channels concatenated to ``x_t``: the k MR slices and the regression mean."""
        return int(self.hparams.k) + 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint trained before ``zero_outside_body`` existed learnt the unmasked residual: it samples so."""
        super().on_load_checkpoint(checkpoint)
        config = (checkpoint.get("sci_diffusion") or {}).get("config") or checkpoint.get("hyper_parameters") or {}
        if "zero_outside_body" not in config:
            self.hparams["zero_outside_body"] = False

    def body_space(self, mask: Tensor | None) -> EuclideanSpace:
        """The residual's state space: held at 0 outside the body ``mask`` ``(B, 1, H, W)`` with
        ``zero_outside_body`` and a mask, else unmasked."""
        return EuclideanSpace(mask=mask if self.hparams.get("zero_outside_body", True) else None)

    def train(self, mode: bool = True) -> MRItoCTResidualDiffusion:
        super().train(mode)
        if hasattr(self, "regression"):
            self.regression.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def regression_mean(self, mr: Tensor) -> Tensor:
        """The frozen regression's CT slices ``(B, 1, H, W)`` in [-1, 1] from MR stacks ``(B, k, H, W)``."""
        return self.run_network(mr, net=self.regression).clamp(-1.0, 1.0)

    def residual_scale_map(self, context: Tensor) -> Tensor:
        """The residual's scale in CT units, ``(B, 1, H, W)`` (or a 0-d tensor without ``scale_channels``),
        from the context ``(B, k + 1, H, W)``: the MR slices and the regression mean."""
        scale = torch.tensor(float(self.hparams.residual_scale), dtype=context.dtype, device=context.device)
        if self.scale_net is None:
            return scale
        return scale * self.run_network(context, net=self.scale_net).clamp(-4.0, 2.0).exp()

    def prepare_batch(self, batch: dict[str, Any]) -> ResidualBatch:
        """The diffused state is the scaled residual, held at 0 outside the body with ``zero_outside_body`` (the body
        mask is then the state space's, so the noise is 0 there too). The context is the MR stack and the mean."""
        ct, mr, mask = slice_batch(batch)
        mean = self.regression_mean(mr)
        context = torch.cat([mr, mean], 1)
        scale = self.residual_scale_map(context)  # with its gradient, for the Laplace loss only
        space = self.body_space(mask)
        return ResidualBatch(x0=space.project((ct - mean) / scale.detach()), space=space, cond=None, context=context,
                             mask=mask, scale=None if self.scale_net is None else scale)

    def residual_denoiser(self, mr: Tensor, mean: Tensor, scale: Tensor):
        """The x0-denoiser of the scaled residual given MR stacks, the regression mean ``(B, 1, H, W)``
        and the residual's scale (``residual_scale_map``).

        Its estimate is clipped voxel by voxel to ``[(-1 - mean) / s, (1 - mean) / s]``: the residuals
        that keep the CT in its [-1, 1] range (the plain model clips its CT estimate to [-1, 1] the same way).
        """
        return self.denoiser(context=torch.cat([mr, mean], 1), clip=((-1.0 - mean) / scale, (1.0 - mean) / scale))

    @torch.no_grad()
    def synthesise(self, mr: Tensor, noise: Tensor | None = None, sampler: str = "ddim", steps: int = 20,
                   generator: torch.Generator | PerSampleGenerator | None = None, spacing: str | None = None,
                   callback=None, mask: Tensor | None = None) -> Tensor:
        """One sample of CT slices ``(B, 1, H, W)`` in [-1, 1]: the regression mean plus a sampled residual.

        Arguments as ``MRItoCTDiffusion.synthesise``; ``noise`` is the residual's starting noise, and
        ``callback`` sees the states as CTs (the mean plus the scaled residual state and estimate). ``mask``
        ``(B, 1, H, W)`` 0/1 is the body: the residual state is held at 0 outside it, as in training (the sample
        there is the mean) unless the model predates ``zero_outside_body``; None holds it nowhere.
        """
        mean, scale = self.mean_and_scale(mr)
        return self.sample_around(mr, mean, scale, noise, sampler, steps, generator, spacing, callback, mask)

    @torch.no_grad()
    def synthesise_samples(self, mr: Tensor, generators: Sequence[torch.Generator | PerSampleGenerator], sampler: str = "ddim",
                           steps: int = 20, spacing: str | None = None, mask: Tensor | None = None) -> list[Tensor]:
        """K samples of the same CT slices, one per generator: K ``(B, 1, H, W)`` tensors in [-1, 1], each what
        ``synthesise`` draws with that generator. The regression mean and the scale map do not depend on the noise,
        so they are computed once for all K (about 6 % of a 10-step sample's time)."""
        mean, scale = self.mean_and_scale(mr)
        return [self.sample_around(mr, mean, scale, None, sampler, steps, g, spacing, None, mask) for g in generators]

    def mean_and_scale(self, mr: Tensor) -> tuple[Tensor, Tensor]:
        """The regression mean ``(B, 1, H, W)`` of MR stacks ``(B, k, H, W)`` and the residual's scale there."""
        mean = self.regression_mean(mr)
        return mean, self.residual_scale_map(torch.cat([mr, mean], 1))

    def sample_around(self, mr: Tensor, mean: Tensor, scale: Tensor, noise: Tensor | None, sampler: str, steps: int,
                      generator, spacing: str | None, callback, mask: Tensor | None) -> Tensor:
        """``mean + scale * r`` with the residual ``r`` sampled from ``noise`` (drawn from ``generator`` when None)."""
        space = self.body_space(mask)
        if noise is None:
            noise = space.noise(mean, generator)
        as_ct = None if callback is None else (lambda i, s, x, x0: callback(i, s, mean + scale * x, mean + scale * x0))  # noqa: E731
        times = distilled_times(self, sampler, steps, spacing)
        residual = get_sampler(sampler)(self.residual_denoiser(mr, mean, scale), noise.to(mr), self.schedule, times,
                                        space, generator=generator, callback=as_ct)
        return (mean + scale * residual).clamp(-1.0, 1.0)

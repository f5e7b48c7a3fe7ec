"""``MRItoCTResidualDiffusion``: a regression mean plus a diffusion model of what it gets wrong.

After NVIDIA's CorrDiff (``../shared/REFERENCE.md`` §2, docs/protocols.md §2): a frozen regression
U-Net (``regression.MRItoCTRegression``, trained first) predicts the mean CT slice ``mu``; a
conditional MONAI ``DiffusionModelUNet`` learns only the residual ``r = (ct - mu) / residual_scale``,
conditioned on the k MR slices and on ``mu`` (channel concatenation, ``in_channels = 2 + k``).

A sample is ``mu + residual_scale * r``, so K samples share the regression's mean and differ only
where the residual model is unsure: their mean is the synthetic CT and their spread the uncertainty.
A residual model whose residual is zero is exactly the regression model.

The regression network is part of this module (``self.regression``, frozen, in its checkpoint's
state dict) and its architecture is in the hyperparameters (``regression``), so a trained residual
checkpoint is self-contained: the regression checkpoint it started from is needed only to train.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sci_diffusion.generators import PerSampleGenerator
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.samplers import get_sampler, resolve_spacing
from sci_diffusion.state_spaces import EuclideanSpace

from .module import MRItoCTDiffusion, slice_batch
from .regression import MRItoCTRegression, regression_unet

REGRESSION_KEYS = ("k", "channels", "num_res_units")  # what rebuilds the regression network


def read_regression_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(architecture, network weights)`` of a trained ``MRItoCTRegression`` checkpoint (EMA weights).

    Raises:
        ValueError: the checkpoint holds another kind of model.
    """
    from sci_diffusion.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    meta = ckpt["sci_diffusion"]
    if not meta["module_class"].endswith(f":{MRItoCTRegression.__qualname__}"):
        raise ValueError(f"{path} holds a {meta['module_class']}, not an MRItoCTRegression to build residuals on.")
    architecture = {key: meta["config"][key] for key in REGRESSION_KEYS}
    weights = {key[len("net."):]: value for key, value in ckpt["state_dict"].items() if key.startswith("net.")}
    return architecture, weights


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
            unit variance, as its noise schedule assumes.
        **kwargs: ``MRItoCTDiffusion``'s network size and the core's diffusion arguments.
    """

    def __init__(self, regression_ckpt: str | None = None, regression: dict[str, Any] | None = None,
                 residual_scale: float = 0.1, **kwargs: Any) -> None:
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

    @property
    def context_channels(self) -> int:
        """Channels concatenated to ``x_t``: the k MR slices and the regression mean."""
        return int(self.hparams.k) + 1

    def train(self, mode: bool = True) -> MRItoCTResidualDiffusion:
        super().train(mode)
        if hasattr(self, "regression"):
            self.regression.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def regression_mean(self, mr: Tensor) -> Tensor:
        """The frozen regression's CT slices ``(B, 1, H, W)`` in [-1, 1] from MR stacks ``(B, k, H, W)``."""
        return self.run_network(mr, net=self.regression).clamp(-1.0, 1.0)

    def prepare_batch(self, batch: dict[str, Any]) -> DiffusionBatch:
        """The diffused state is the scaled residual; the context is the MR stack and the mean."""
        ct, mr, mask = slice_batch(batch)
        mean = self.regression_mean(mr)
        residual = (ct - mean) / self.hparams.residual_scale
        return DiffusionBatch(x0=residual, space=EuclideanSpace(), cond=None, context=torch.cat([mr, mean], 1), mask=mask)

    def residual_denoiser(self, mr: Tensor, mean: Tensor):
        """The x0-denoiser of the scaled residual given MR stacks and the regression mean ``(B, 1, H, W)``.

        Its estimate is clipped voxel by voxel to ``[(-1 - mean) / s, (1 - mean) / s]``: the residuals
        that keep the CT in its [-1, 1] range (the plain model clips its CT estimate to [-1, 1] the same way).
        """
        s = self.hparams.residual_scale
        return self.denoiser(context=torch.cat([mr, mean], 1), clip=((-1.0 - mean) / s, (1.0 - mean) / s))

    @torch.no_grad()
    def synthesise(self, mr: Tensor, noise: Tensor | None = None, sampler: str = "ddim", steps: int = 20,
                   generator: torch.Generator | PerSampleGenerator | None = None, spacing: str | None = None,
                   callback=None) -> Tensor:
        """One sample of CT slices ``(B, 1, H, W)`` in [-1, 1]: the regression mean plus a sampled residual.

        Arguments as ``MRItoCTDiffusion.synthesise``; ``noise`` is the residual's starting noise, and
        ``callback`` sees the states as CTs (the mean plus the scaled residual state and estimate).
        """
        space = EuclideanSpace()
        mean = self.regression_mean(mr)
        if noise is None:
            noise = space.noise(mean, generator)
        scale = self.hparams.residual_scale
        as_ct = None if callback is None else (lambda i, s, x, x0: callback(i, s, mean + scale * x, mean + scale * x0))  # noqa: E731
        residual = get_sampler(sampler)(self.residual_denoiser(mr, mean), noise.to(mr), self.schedule, steps, space,
                                        generator=generator, spacing=resolve_spacing(sampler, spacing), callback=as_ct)
        return (mean + self.hparams.residual_scale * residual).clamp(-1.0, 1.0)

"""Whole-volume MRI-to-CT translation on arrays: the model's slices of a volume, K samples of each, and
their mean and spread.

The MR is normalised inside the body mask, cut into 2.5-D stacks of k slices along the model's axis
(only slices that hold body), padded in-plane exactly as the training slices were, and translated in
batches. A diffusion model draws K samples (their mean is the synthetic CT, their per-voxel standard
deviation the uncertainty); a regression model gives one deterministic answer. Everything outside the
body mask is -1000 HU, as in SynthRAD.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, DivisiblePad, SpatialPad
from tqdm.auto import tqdm

from sci_diffusion.errors import UserError
from sci_diffusion.generators import PerSampleGenerator, per_sample_seeds

from ..data.phantom import CT_BACKGROUND_HU
from ..data.slices import axis_index
from ..data.transforms import normalise_mr, unit_to_ct
from ..io.masks import binary_mask
from .model import is_deterministic


def sliding_windows(module: torch.nn.Module, min_size: Sequence[int] | None) -> contextlib.AbstractContextManager:
    """The block in which a model trained on ``min_size`` crops sees larger slices in crop-sized windows
    (``SliceTranslation.sliding_window``); a plain block for a model without windows."""
    return module.sliding_window(min_size) if hasattr(module, "sliding_window") else contextlib.nullcontext()


@torch.no_grad()
def translate_volume(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, samples: int = 1,
                     sampler: str = "ddim", steps: int = 20, seed: int = 0, batch_size: int = 16,
                     axis: str | int = "axial", divisible: int = 16, min_size: Sequence[int] | None = None,
                     progress: bool = False, spacing: str | None = None, shared_noise: bool = False) -> np.ndarray:
    """K synthetic CTs of one RAS volume.

    Args:
        module: an ``MRItoCTDiffusion`` or ``MRItoCTRegression`` in eval mode.
        mr: (X, Y, Z) MR in the scanner's units, RAS voxel order.
        mask: (X, Y, Z) body mask; voxels > 0.5 are body (``io.masks.binary_mask``). Must not be empty.
        samples: K; must be 1 for a deterministic model.
        sampler, steps: a core sampler name (``ddim``, ``dpmpp2m``, ...) and its step count.
        seed: one seed per (sample, slice) is drawn from this seed, and each slice's starting noise
            and sampler noise come from its own generator (EDM's per-sample generators), so
            ``batch_size`` does not change the result for any sampler (up to float rounding).
        batch_size: slices per network call.
        axis, divisible, min_size: slicing axis, padding multiple and training crop size of the model's
            data (``model.slice_geometry``); slices are padded to what the network saw in training, and a
            model trained on crops sees slices larger than its crop through MONAI's
            ``SlidingWindowInferer`` in crop-sized windows (``SliceTranslation.sliding_window``).
        spacing: the sampler's time grid (``sci_diffusion.time_grids.SPACINGS``); None: its default.
        shared_noise: every slice of a sample starts from the same noise (and, for stochastic
            samplers, draws the same noise), so that neighbouring slices, whose MR differs little,
            also get similar samples; otherwise each slice has its own seed.

    Returns:
        (K, X, Y, Z) float32 CT in HU; -1000 outside the mask.
    """
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}.")
    if is_deterministic(module) and samples > 1:
        raise UserError(f"{type(module).__name__} is deterministic: use --samples 1 (and no --uncertainty) with it.")
    device = next(module.parameters()).device
    a = axis_index(axis)
    stacks, bodies, occupied, (top, left, h, w), slices_shape = model_slices(module, mr, mask, a, divisible, min_size)
    n = len(occupied)
    seeds = per_sample_seeds(torch.Generator().manual_seed(int(seed)), samples * n)  # sample j, slice i: j * n + i
    if shared_noise:  # one seed per sample, shared by its slices (the padded slices all have one shape)
        seeds = [seeds[j * n] for j in range(samples) for _ in range(n)]
    out = np.full((samples, *slices_shape), CT_BACKGROUND_HU, dtype=np.float32)
    bar = tqdm(total=-(-n // batch_size), desc="translate", unit="batch", disable=not progress, leave=False)
    with sliding_windows(module, min_size):
        for b in range(0, n, batch_size):
            mr_b, body_b = stacks[b:b + batch_size].to(device), bodies[b:b + batch_size].to(device)
            generators = [PerSampleGenerator(seeds[j * n + b:j * n + b + len(mr_b)], device) for j in range(samples)]
            preds = samples_of_slices(module, mr_b, generators, sampler=sampler, steps=steps, spacing=spacing, mask=body_b)
            rows = occupied[b:b + batch_size].numpy()
            for j, pred in enumerate(preds):
                out[j, rows] = unit_to_ct(pred[:, 0, top:top + h, left:left + w].float().cpu()).numpy()
            bar.update(1)
    bar.close()
    out = np.moveaxis(out, 1, a + 1)
    out[:, ~binary_mask(mask)] = CT_BACKGROUND_HU
    return out


def samples_of_slices(module: torch.nn.Module, mr: torch.Tensor, generators: Sequence[PerSampleGenerator],
                      **kwargs: Any) -> list[torch.Tensor]:
    """K samples ``(B, 1, H, W)`` of one batch of slices, one per generator: the model's ``synthesise_samples``
    where it has one (the residual model computes its mean and scale once for all K), else K ``synthesise`` calls."""
    if hasattr(module, "synthesise_samples"):
        return module.synthesise_samples(mr, generators, **kwargs)
    return [module.synthesise(mr, generator=g, **kwargs) for g in generators]


def slice_padding(multiple: int, min_size: Sequence[int] | None, value: float) -> Compose:
    """MONAI's padding of a ``(C, S, H, W)`` stack of slices to what the network saw in training: first to the
    training crop ``min_size`` (``SpatialPad``, for models trained on crops), then to a multiple of ``multiple``
    in-plane (``DivisiblePad``, as ``slices.SliceDataset`` pads whole slices), both symmetric with ``value``."""
    min_h, min_w = (-1, -1) if min_size is None else (int(min_size[0]), int(min_size[1]))
    return Compose([SpatialPad((-1, min_h, min_w), mode="constant", value=value),
                    DivisiblePad((1, multiple, multiple), mode="constant", value=value)])


def padded_origin(padding: Compose, shape: Sequence[int]) -> tuple[int, int]:
    """``(top, left)``: where an ``(H, W)`` slice of an ``(S, H, W)`` stack of ``shape`` lands once ``slice_padding``
    has padded it."""
    top = left = 0
    shape = tuple(shape)
    for pad in padding.transforms:
        widths = pad.compute_pad_width(shape)[1:]  # (before, after) per axis, the channel's dropped: S, H, W
        top, left = top + widths[1][0], left + widths[2][0]
        shape = tuple(n + a + b for n, (a, b) in zip(shape, widths))
    return top, left


def model_slices(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, axis: int, divisible: int = 16,
                 min_size: Sequence[int] | None = None):
    """The network inputs of every body slice of a volume on the model's grid.

    Returns:
        ``(stacks (N, k, H', W'), bodies (N, 1, H', W') float 0/1 (the centre slice's body mask), occupied (N,)
        slice indices along ``axis``, (top, left, h, w) of the unpadded slice inside the padded one, (S, h, w) the
        volume's shape with ``axis`` first)``. The MR is normalised in the mask; slices are padded symmetrically as
        in training (``slice_padding``): the U-Nets' group and instance norms take statistics over the whole slice,
        so its extent must match training's.
    """
    body = torch.from_numpy(np.ascontiguousarray(binary_mask(mask)))
    mr_unit = normalise_mr(torch.from_numpy(np.ascontiguousarray(mr, dtype=np.float32)), body)
    vol, body_s = mr_unit.movedim(axis, 0), body.movedim(axis, 0)  # (S, H, W)
    occupied = torch.nonzero(body_s.flatten(1).any(1)).flatten()
    multiple = math.lcm(int(divisible), int(getattr(module, "size_multiple", 1)))
    padded = torch.as_tensor(slice_padding(multiple, min_size, -1.0)(vol[None])[0])  # MR background is -1
    padded_body = torch.as_tensor(slice_padding(multiple, min_size, 0.0)(body_s[None].float())[0])
    top, left = padded_origin(slice_padding(multiple, min_size, 0.0), vol.shape)
    k = int(module.hparams.k)
    index = (occupied[:, None] + torch.arange(k)[None] - k // 2).clamp(0, vol.shape[0] - 1)
    return padded[index], padded_body[occupied, None], occupied, (top, left, *vol.shape[1:]), tuple(vol.shape)


def slice_trajectory(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, sampler: str, steps: int, seed: int = 0,
                     spacing: str | None = None, axis: str | int = "axial", divisible: int = 16,
                     min_size: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """How one sCT slice forms: the sampler's state and its CT estimate after every step, for the body's
    middle slice along ``axis`` (``translate --trajectory-png``). The slice draws the noise it draws in
    ``translate_volume``'s first sample with the same ``seed``, so its last frame is that slice.

    Returns:
        One dict per step: ``{"step", "t", "state", "estimate"}`` with (h, w) float32 HU images.
    """
    if is_deterministic(module):
        raise UserError(f"{type(module).__name__} is deterministic: it has no sampling trajectory to draw.")
    a = axis_index(axis)
    stacks, bodies, occupied, (top, left, h, w), _ = model_slices(module, mr, mask, a, divisible, min_size)
    middle = len(occupied) // 2
    frames: list[dict[str, Any]] = []

    def keep(i: int, s: float, x: torch.Tensor, x0: torch.Tensor) -> None:
        crop = lambda v: unit_to_ct(v[0, 0, top:top + h, left:left + w].float().cpu()).numpy()  # noqa: E731
        frames.append({"step": i + 1, "t": s, "state": crop(x), "estimate": crop(x0)})

    device = next(module.parameters()).device
    seeds = per_sample_seeds(torch.Generator().manual_seed(int(seed)), len(occupied))  # translate_volume's, sample 1
    generator = PerSampleGenerator([seeds[middle]], device)
    with sliding_windows(module, min_size), torch.no_grad():
        module.synthesise(stacks[middle:middle + 1].to(device), sampler=sampler, steps=steps, generator=generator,
                          spacing=spacing, callback=keep, mask=bodies[middle:middle + 1].to(device))
    return frames


def mean_and_std(samples_hu: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (HU) and per-voxel sample standard deviation (HU, ddof 1; 0 outside the mask) of (K, X, Y, Z)."""
    mean = samples_hu.mean(axis=0)
    if samples_hu.shape[0] < 2:
        return mean, None
    std = samples_hu.std(axis=0, ddof=1)
    std[~binary_mask(mask)] = 0.0
    return mean, std

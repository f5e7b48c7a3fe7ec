"""Whole-volume MRI-to-CT translation with a trained model: NIfTI in, synthetic CT (HU) out.

The volume is reoriented to RAS, the MR normalised inside the body mask, cut into 2.5-D stacks of
k slices along the model's axis (only slices that hold body), padded in-plane exactly as the
training slices were, and translated in batches. A diffusion model draws K samples (their mean is the
synthetic CT, their per-voxel standard deviation the uncertainty); a regression model gives one
deterministic answer. Everything outside the body mask is -1000 HU, as in SynthRAD.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sci_diffusion import __version__
from sci_diffusion.atomic import check_writable
from sci_diffusion.checkpoints import bundled_checkpoint, load_module, read_checkpoint
from sci_diffusion.errors import UserError
from sci_diffusion.generators import PerSampleGenerator, per_sample_seeds

from ..data.phantom import CT_BACKGROUND_HU, body_mask_from_mr
from ..data.slices import axis_index
from ..data.transforms import normalise_mr, unit_to_ct
from ..io.images import OUTPUT_SUFFIXES, load_for_model, save_on_input_grid, to_input_grid
from ..io.nifti import MedicalInputError


# ----- models ---------------------------------------------------------------------------------------
def load_translation_model(ckpt: str | os.PathLike | None = None, device: str | None = None) -> torch.nn.Module:
    """The medical model of ``ckpt`` (the bundled residual model when None), in eval mode.

    Raises:
        UserError: no checkpoint, not a checkpoint, or one from another domain.
    """
    path = Path(ckpt) if ckpt is not None else bundled_checkpoint("sci_diffusion_medical", "translation")
    module = load_module(path, domain="medical")
    if not hasattr(module, "synthesise"):
        raise UserError(f"Checkpoint {path} holds a {type(module).__name__}, which cannot translate MR to CT.")
    meta = read_checkpoint(path)["sci_diffusion"]
    module.data_config = dict(meta.get("data_config") or {})
    module.voxel_mm = meta.get("voxel_mm")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return module.to(device)


def model_name(module: torch.nn.Module) -> str:
    return f"{type(module).__module__}:{type(module).__qualname__}"


# ----- geometry -------------------------------------------------------------------------------------
def ras_orientation(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(to_ras, from_ras)``: nibabel orientation transforms between a volume's voxel axes and RAS."""
    start = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt("RAS")
    return nib.orientations.ornt_transform(start, ras), nib.orientations.ornt_transform(ras, start)


def ras_zooms(affine: np.ndarray, to_ras: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along the R, A, S axes of the reoriented volume."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = np.zeros(3)
    for axis, (new_axis, _) in enumerate(to_ras):
        out[int(new_axis)] = zooms[axis]
    return out


# ----- the translation itself -----------------------------------------------------------------------
@torch.no_grad()
def translate_volume(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, samples: int = 1,
                     sampler: str = "ddim", steps: int = 20, seed: int = 0, batch_size: int = 16,
                     axis: str | int = "axial", divisible: int = 16, min_size: Sequence[int] | None = None,
                     progress: bool = False, spacing: str | None = None, shared_noise: bool = False) -> np.ndarray:
    """K synthetic CTs of one RAS volume.

    Args:
        module: an ``MRItoCTDiffusion`` or ``MRItoCTRegression`` in eval mode.
        mr: (X, Y, Z) MR in the scanner's units, RAS voxel order.
        mask: (X, Y, Z) body mask; voxels > 0 are body. Must not be empty.
        samples: K; must be 1 for a deterministic model.
        sampler, steps: a core sampler name (``ddim``, ``dpmpp2m``, ...) and its step count.
        seed: one seed per (sample, slice) is drawn from this seed, and each slice's starting noise
            and sampler noise come from its own generator (EDM's per-sample generators), so
            ``batch_size`` does not change the result for any sampler (up to float rounding).
        batch_size: slices per network call.
        axis, divisible, min_size: slicing axis, padding multiple and training crop size of the model's
            data (``slice_geometry``); slices are padded to what the network saw in training, and a
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
    if getattr(module, "deterministic", False) and samples > 1:
        raise UserError(f"{type(module).__name__} is deterministic: use --samples 1 (and no --uncertainty) with it.")
    device = next(module.parameters()).device
    a = axis_index(axis)
    stacks, occupied, (top, left, h, w), slices_shape = model_slices(module, mr, mask, a, divisible, min_size)
    n = len(occupied)
    seeds = per_sample_seeds(torch.Generator().manual_seed(int(seed)), samples * n)  # sample j, slice i: j * n + i
    if shared_noise:  # one seed per sample, shared by its slices (the padded slices all have one shape)
        seeds = [seeds[j * n] for j in range(samples) for _ in range(n)]
    out = np.full((samples, *slices_shape), CT_BACKGROUND_HU, dtype=np.float32)
    bar = tqdm(total=samples * -(-n // batch_size), desc="translate", unit="batch", disable=not progress, leave=False)
    windows = module.sliding_window(min_size) if hasattr(module, "sliding_window") else contextlib.nullcontext()
    with windows:
        for j in range(samples):
            for b in range(0, n, batch_size):
                mr_b = stacks[b:b + batch_size].to(device)
                slices = PerSampleGenerator(seeds[j * n + b:j * n + b + len(mr_b)], device)
                pred = module.synthesise(mr_b, sampler=sampler, steps=steps, generator=slices, spacing=spacing)
                hu = unit_to_ct(pred[:, 0, top:top + h, left:left + w].float().cpu()).numpy()
                out[j, occupied[b:b + batch_size].numpy()] = hu
                bar.update(1)
    bar.close()
    out = np.moveaxis(out, 1, a + 1)
    out[:, ~(np.asarray(mask) > 0)] = CT_BACKGROUND_HU
    return out


def model_slices(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, axis: int, divisible: int = 16,
                 min_size: Sequence[int] | None = None):
    """The network inputs of every body slice of a volume on the model's grid.

    Returns:
        ``(stacks (N, k, H', W'), occupied (N,) slice indices along ``axis``, (top, left, h, w) of the
        unpadded slice inside the padded one, (S, h, w) the volume's shape with ``axis`` first)``. The MR
        is normalised in the mask; slices are padded symmetrically as in training (``slices.SliceDataset``):
        the U-Nets' group and instance norms take statistics over the whole slice, so its extent must
        match training's.
    """
    body = torch.from_numpy(np.ascontiguousarray(np.asarray(mask) > 0))
    mr_unit = normalise_mr(torch.from_numpy(np.ascontiguousarray(mr, dtype=np.float32)), body)
    vol, body_s = mr_unit.movedim(axis, 0), body.movedim(axis, 0)  # (S, H, W)
    occupied = torch.nonzero(body_s.flatten(1).any(1)).flatten()
    h, w = vol.shape[1:]
    m = math.lcm(int(divisible), int(getattr(module, "size_multiple", 1)))
    min_h, min_w = (0, 0) if min_size is None else (int(min_size[0]), int(min_size[1]))
    pad_h, pad_w = max(-(-h // m) * m, min_h) - h, max(-(-w // m) * m, min_w) - w
    top, left = pad_h // 2, pad_w // 2
    padded = F.pad(vol, (left, pad_w - left, top, pad_h - top), value=-1.0)  # MR background is -1
    k = int(module.hparams.k)
    index = (occupied[:, None] + torch.arange(k)[None] - k // 2).clamp(0, vol.shape[0] - 1)
    return padded[index], occupied, (top, left, h, w), tuple(vol.shape)


def slice_trajectory(module: torch.nn.Module, mr: np.ndarray, mask: np.ndarray, sampler: str, steps: int, seed: int = 0,
                     spacing: str | None = None, axis: str | int = "axial", divisible: int = 16,
                     min_size: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """How one sCT slice forms: the sampler's state and its CT estimate after every step, for the body's
    middle slice along ``axis`` (``translate --trajectory-png``). The slice draws the noise it draws in
    ``translate_volume``'s first sample with the same ``seed``, so its last frame is that slice.

    Returns:
        One dict per step: ``{"step", "t", "state", "estimate"}`` with (h, w) float32 HU images.
    """
    if getattr(module, "deterministic", False):
        raise UserError(f"{type(module).__name__} is deterministic: it has no sampling trajectory to draw.")
    a = axis_index(axis)
    stacks, occupied, (top, left, h, w), _ = model_slices(module, mr, mask, a, divisible, min_size)
    middle = len(occupied) // 2
    frames: list[dict[str, Any]] = []

    def keep(i: int, s: float, x: torch.Tensor, x0: torch.Tensor) -> None:
        crop = lambda v: unit_to_ct(v[0, 0, top:top + h, left:left + w].float().cpu()).numpy()  # noqa: E731
        frames.append({"step": i + 1, "t": s, "state": crop(x), "estimate": crop(x0)})

    device = next(module.parameters()).device
    seeds = per_sample_seeds(torch.Generator().manual_seed(int(seed)), len(occupied))  # translate_volume's, sample 1
    generator = PerSampleGenerator([seeds[middle]], device)
    windows = module.sliding_window(min_size) if hasattr(module, "sliding_window") else contextlib.nullcontext()
    with windows, torch.no_grad():
        module.synthesise(stacks[middle:middle + 1].to(device), sampler=sampler, steps=steps, generator=generator,
                          spacing=spacing, callback=keep)
    return frames


def mean_and_std(samples_hu: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (HU) and per-voxel sample standard deviation (HU, ddof 1; 0 outside the mask) of (K, X, Y, Z)."""
    mean = samples_hu.mean(axis=0)
    if samples_hu.shape[0] < 2:
        return mean, None
    std = samples_hu.std(axis=0, ddof=1)
    std[~(np.asarray(mask) > 0)] = 0.0
    return mean, std


# ----- files ----------------------------------------------------------------------------------------
def _check_output(path: str | os.PathLike | None, flag: str) -> None:
    if path is None:
        return
    if not str(path).endswith(OUTPUT_SUFFIXES):
        raise UserError(f"{flag} {path} must end in .nii.gz, .nii or .mha.")
    check_writable(path, flag)


def load_inputs(mr_path: str | os.PathLike, mask_path: str | os.PathLike | None = None,
                ct_path: str | os.PathLike | None = None,
                voxel_mm: Sequence[float] | float | None = None) -> dict[str, Any]:
    """Read and check the MR (and mask, CT), bring them onto the model's RAS grid, and derive the body
    mask from the MR when none is given (``images.load_for_model``).

    Args:
        mr_path, mask_path, ct_path: NIfTI, MetaImage (.mha, .mhd) or NRRD files, or DICOM series
            folders; the mask and CT on the MR's grid (shape and affine).
        voxel_mm: resample to this voxel size (mm; the model's training voxels); None keeps the MR's.

    Returns:
        {"mr", "mask" (bool), "ct" (or None): (X, Y, Z) arrays on the model's grid in RAS voxel order;
        "zooms": its voxel size (mm); "input_zooms": the MR's voxel size along R, A, S (mm);
        "input_mask": the body mask on the MR's own grid (bool, the MR file's shape); "loaded": the
        ``images.LoadedVolumes`` (for ``to_input_grid`` and ``save_on_input_grid``); "mask_source": the
        mask's path or how it was derived; "to_ras", "from_ras": nibabel orientation transforms of the MR,
        and "mr_image": its nibabel image (None unless NIfTI), which lead back to the MR's grid only
        when ``voxel_mm`` is None}.
    """
    loaded = load_for_model({"mr": mr_path, "mask": mask_path, "ct": ct_path}, voxel_mm)
    mr = loaded.arrays["mr"]
    if mask_path is not None:
        input_mask = loaded.inputs["mask"] > 0
        mask = loaded.arrays["mask"] > 0
        if not input_mask.any():
            raise MedicalInputError(f"{mask_path} is an empty mask (no voxel > 0).")
        if not mask.any():
            raise MedicalInputError(f"{mask_path} keeps no voxel at the model's {np.round(loaded.zooms, 2).tolist()} mm "
                                    "voxels; the body is smaller than one voxel.")
        source = str(mask_path)
    else:
        try:
            mask = body_mask_from_mr(mr, loaded.zooms)
        except ValueError as err:  # Otsu on a constant image
            raise MedicalInputError(f"No body mask could be derived from {mr_path} ({err}); pass --mask.") from None
        if not mask.any():
            raise MedicalInputError(f"No body mask could be derived from {mr_path}; pass --mask.")
        input_mask = to_input_grid(mask.astype(np.float32), loaded, nearest=True) > 0.5
        source = "derived from the MR (Otsu threshold, closing, dilation, hole filling; SynthRAD2023)"
    to_ras, from_ras = ras_orientation(loaded.input_affine)
    return {"mr": mr, "mask": mask, "ct": loaded.arrays.get("ct"), "zooms": loaded.zooms,
            "input_zooms": ras_zooms(loaded.input_affine, to_ras), "input_mask": input_mask, "loaded": loaded,
            "mask_source": source, "to_ras": to_ras, "from_ras": from_ras, "mr_image": loaded.nifti}


def training_spacing(module: torch.nn.Module) -> np.ndarray | None:
    """Voxel size (mm, RAS) of the model's training data, as its checkpoint records it, or None."""
    cfg = getattr(module, "data_config", {}) or {}
    value = cfg.get("spacing_mm") or getattr(module, "voxel_mm", None)
    return None if value is None else np.broadcast_to(np.asarray(value, dtype=np.float64), (3,))


def default_steps(module: torch.nn.Module) -> int:
    """The sampler steps a model translates with when none are asked for: the step count it was
    validated with in training (its ``val_steps``; 10 for the residual config, 20 for the plain one)."""
    return int(module.hparams.get("val_steps") or 20)


def slice_geometry(module: torch.nn.Module) -> dict[str, Any]:
    """``{"axis", "divisible", "min_size"}`` of the model's training slices, from the checkpoint's data config."""
    cfg = getattr(module, "data_config", {}) or {}
    crop = cfg.get("crop_size")
    return {"axis": cfg.get("axis", "axial"), "divisible": int(cfg.get("divisible") or 16),
            "min_size": None if crop is None else tuple(int(c) for c in crop)}


def translate_file(
    mr: str | os.PathLike,
    out: str | os.PathLike,
    mask: str | os.PathLike | None = None,
    ckpt: str | os.PathLike | None = None,
    samples: int = 1,
    uncertainty: str | os.PathLike | None = None,
    steps: int | None = None,
    sampler: str = "ddim",
    spacing: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    png: str | os.PathLike | None = None,
    ct: str | os.PathLike | None = None,
    module: torch.nn.Module | None = None,
    progress: bool = True,
    shared_noise: bool = False,
    trajectory_png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Translate one MR file into a synthetic CT file (the ``translate`` verb).

    ``steps`` None takes the model's own step count (``default_steps``); ``shared_noise`` gives all
    slices of a sample one starting noise (``translate_volume``).

    The MR (NIfTI, .mha/.mhd, .nrrd or a DICOM series folder) is resampled to the model's training
    voxel size (``training_spacing``) on a RAS grid, translated there, and the result mapped back onto
    the MR's own grid. Writes ``out`` (.nii.gz, .nii or .mha: mean sCT in HU, the MR's shape and affine,
    for a NIfTI MR its header, SYNTHETIC in its description) with a JSON sidecar, optionally the per-voxel
    std (``uncertainty``, needs ``samples >= 2``) and a PNG panel (MR / sCT / CT / |error| / std, on the
    model's grid). Returns the sidecar's content.
    """
    _check_output(out, "--out")
    _check_output(uncertainty, "--uncertainty")
    for path, flag in ((png, "--png"), (trajectory_png, "--trajectory-png")):
        if path is not None:
            check_writable(path, flag)
    if uncertainty is not None and samples < 2:
        raise UserError(f"--uncertainty {uncertainty} needs --samples 2 or more (a standard deviation over samples).")
    from sci_diffusion.samplers import SAMPLERS, resolve_spacing
    from sci_diffusion.time_grids import SPACINGS

    if sampler not in SAMPLERS:
        raise UserError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    if spacing is not None and spacing not in SPACINGS:
        raise UserError(f"Unknown time spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    spacing = resolve_spacing(sampler, spacing)
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}.")
    module = module if module is not None else load_translation_model(ckpt)
    steps = default_steps(module) if steps is None else steps
    if getattr(module, "deterministic", False) and (samples > 1 or uncertainty is not None):
        raise UserError(f"Checkpoint {getattr(module, 'checkpoint_path', ckpt)} is a deterministic regression model: "
                        "it gives one answer, so use --samples 1 and no --uncertainty.")
    if trajectory_png is not None and getattr(module, "deterministic", False):
        raise UserError("--trajectory-png needs a diffusion model: a regression model has no sampling trajectory.")
    trained = training_spacing(module)
    inputs = load_inputs(mr, mask, ct, voxel_mm=trained)
    if trained is not None and not np.allclose(inputs["input_zooms"], trained, rtol=1e-3):
        print(f"sci-diffusion: note: {mr} has voxels of {np.round(inputs['input_zooms'], 2).tolist()} mm; it is resampled "
              f"to the model's {np.round(trained, 2).tolist()} mm for translation, and the synthetic CT back onto its grid.",
              file=sys.stderr)
    start = time.perf_counter()
    volumes = translate_volume(module, inputs["mr"], inputs["mask"], samples, sampler, steps, seed, batch_size,
                               progress=progress, spacing=spacing, shared_noise=shared_noise, **slice_geometry(module))
    seconds = time.perf_counter() - start
    mean, std = mean_and_std(volumes, inputs["mask"])
    deterministic = bool(getattr(module, "deterministic", False))
    sidecar = {
        "description": "Synthetic CT (HU) translated from MR by sci-diffusion; not for clinical use.",
        "mr": str(mr),
        "mask": inputs["mask_source"],
        "model": model_name(module),
        "checkpoint": getattr(module, "checkpoint_path", None),
        "checkpoint_sha256": getattr(module, "checkpoint_hash", None),
        "sampler": None if deterministic else sampler,
        "steps": None if deterministic else steps,
        "spacing": None if deterministic else spacing,
        "shared_noise": None if deterministic else shared_noise,
        "seed": seed,
        "samples": samples,
        "uncertainty": None if uncertainty is None else str(uncertainty),
        "input_voxel_mm": np.round(inputs["input_zooms"], 4).tolist(),
        "model_voxel_mm": np.round(inputs["zooms"], 4).tolist(),
        "seconds": round(seconds, 3),
        "sci_diffusion_version": __version__,
    }
    loaded, body = inputs["loaded"], inputs["input_mask"]
    mean_in = to_input_grid(mean, loaded)  # onto the MR file's own grid (shape, affine)
    mean_in[~body] = CT_BACKGROUND_HU
    save_on_input_grid(mean_in, loaded, out, description="SYNTHETIC CT (HU) sci-diffusion MRI-to-CT", sidecar=sidecar)
    if uncertainty is not None:
        std_in = to_input_grid(std, loaded)
        std_in[~body] = 0.0
        std_sidecar = {**sidecar, "description": "Per-voxel standard deviation (HU, ddof 1) of the synthetic CT samples."}
        save_on_input_grid(std_in, loaded, uncertainty, description="SYNTHETIC CT std (HU) over samples, sci-diffusion",
                           sidecar=std_sidecar)
    if png is not None:
        from ..io.figures import translation_panel

        translation_panel(inputs["mr"], mean, inputs["mask"], png, ct=inputs["ct"], std=std,
                          title=f"{Path(mr).name}: {'regression' if deterministic else f'{sampler} {steps} steps, K={samples}'}")
    if trajectory_png is not None:
        from ..io.figures import trajectory_strip

        frames = slice_trajectory(module, inputs["mr"], inputs["mask"], sampler, steps, seed, spacing, **slice_geometry(module))
        trajectory_strip(frames, trajectory_png, title=f"{Path(mr).name}: {sampler}, {steps} steps, seed {seed}")
    return sidecar

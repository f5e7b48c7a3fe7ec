"""``translate``: one MR file in, a synthetic CT file (HU) out, with a trained model.

``translate_file`` is the verb, in steps: check every option (``options.check_options``), load the model
(``model.py``) and check the options against it (``options.options_for_model``), read the MR onto the
model's grid (``inputs.load_inputs``), translate the
volume (``volume.translate_volume``: K samples, their mean and std), then write the sCT, its sidecar and
the optional std volume and pictures on the MR's own grid (``write_translation``, ``draw_figures``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sci_diffusion import __version__
from sci_diffusion.errors import UserError

from ..data.phantom import CT_BACKGROUND_HU
from ..io.figures import trajectory_strip, translation_panel
from ..io.images import save_on_input_grid, to_input_grid
from ..io.nifti import save_like, save_volume
from .calibration import ConformalCalibration, calibration_beside, check_calibration_fits, read_calibration
from .inputs import load_inputs
from .model import is_deterministic, load_translation_model, model_name, slice_geometry, training_spacing
from .options import TranslationOptions, check_options, interval_paths, options_for_model
from .volume import mean_and_std, slice_trajectory, translate_volume

SCT_DESCRIPTION = "Synthetic CT (HU) translated from MR by sci-diffusion; not for clinical use."


def read_on_model_grid(mr: str | os.PathLike, mask: str | os.PathLike | None, ct: str | os.PathLike | None,
                       module: torch.nn.Module, series: str | None = None) -> dict[str, Any]:
    """``inputs.load_inputs`` at the model's training voxel size, with a note on stderr when the MR is resampled."""
    trained = training_spacing(module)
    inputs = load_inputs(mr, mask, ct, voxel_mm=trained, series=series)
    if trained is not None and not np.allclose(inputs["input_zooms"], trained, rtol=1e-3):
        print(f"sci-diffusion: note: {mr} has voxels of {np.round(inputs['input_zooms'], 2).tolist()} mm; it is resampled "
              f"to the model's {np.round(trained, 2).tolist()} mm for translation, and the synthetic CT back onto its grid.",
              file=sys.stderr)
    return inputs


def translation_record(mr: str | os.PathLike, inputs: dict[str, Any], module: torch.nn.Module,
                       options: TranslationOptions, seconds: float) -> dict[str, Any]:
    """The JSON sidecar of a synthetic CT: where it came from (MR, mask, model, checkpoint), how it was sampled
    (None for a regression model's sampler settings), the voxel sizes (mm) and the translation's seconds."""
    deterministic = is_deterministic(module)
    o = options
    return {
        "description": SCT_DESCRIPTION,
        "mr": str(mr),
        "mask": inputs["mask_source"],
        "model": model_name(module),
        "checkpoint": getattr(module, "checkpoint_path", None),
        "checkpoint_sha256": getattr(module, "checkpoint_hash", None),
        "sampler": None if deterministic else o.sampler,
        "steps": None if deterministic else o.steps,
        "spacing": None if deterministic else o.spacing,
        "shared_noise": None if deterministic else o.shared_noise,
        "seed": o.seed,
        "samples": o.samples,
        "uncertainty": None if o.uncertainty is None else str(o.uncertainty),
        "input_voxel_mm": np.round(inputs["input_zooms"], 4).tolist(),
        "model_voxel_mm": np.round(inputs["zooms"], 4).tolist(),
        "seconds": round(seconds, 3),
        "sci_diffusion_version": __version__,
    }


def write_translation(out: str | os.PathLike, uncertainty: str | os.PathLike | None, inputs: dict[str, Any],
                      mean: np.ndarray, std: np.ndarray | None, sidecar: dict[str, Any]) -> None:
    """Write the mean sCT (HU; -1000 outside the body) and, when asked, the std (HU; 0 outside) on the MR file's
    own grid (shape, affine, a NIfTI MR's header), each with its JSON sidecar. ``mean``, ``std``: (X, Y, Z) on
    the model's grid."""
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


def write_interval(out: str | os.PathLike, inputs: dict[str, Any], mean: np.ndarray, std: np.ndarray | None,
                   calibration: ConformalCalibration, level: float, sidecar: dict[str, Any]) -> None:
    """Write the calibrated per-voxel interval (``calibration.bounds`` at ``level``; HU, -1000 outside the body) as
    ``<out>_lower`` and ``<out>_upper`` on the MR file's grid, each with its sidecar. ``mean``, ``std``: (X, Y, Z) on
    the model's grid."""
    loaded, body = inputs["loaded"], inputs["input_mask"]
    std_in = None if std is None else to_input_grid(std, loaded)
    lower, upper = calibration.bounds(to_input_grid(mean, loaded), std_in, level)
    record = {**sidecar, "interval": level, "interval_factor": calibration.factor(level),
              "interval_score": calibration.score_kind, "calibration_subjects": list(calibration.subjects)}
    for bound, path, name in zip((lower, upper), interval_paths(out), ("lower", "upper")):
        bound[~body] = CT_BACKGROUND_HU
        save_on_input_grid(bound, loaded, path, description=f"SYNTHETIC CT {100 * level:g}% interval {name} bound (HU)",
                           sidecar={**record, "description": f"The {name} bound (HU) of a per-voxel interval calibrated "
                                    f"(split conformal) to cover the CT with probability {level:g}."})


def write_samples(path: str | os.PathLike, inputs: dict[str, Any], volumes: np.ndarray, sidecar: dict[str, Any]) -> None:
    """Write the K samples ``(K, X, Y, Z)`` (model grid, HU) as one NIfTI ``(X, Y, Z, K)`` on the MR file's grid
    (-1000 HU outside the body), with its sidecar: what ``evaluate mri2ct`` reads as ``<id>_samples.nii.gz``."""
    loaded, body = inputs["loaded"], inputs["input_mask"]
    samples = to_input_grid(volumes, loaded)  # (K, X, Y, Z)
    samples[:, ~body] = CT_BACKGROUND_HU
    record = {**sidecar, "description": f"The {len(samples)} synthetic CT samples (HU), along the 4th axis."}
    description = f"SYNTHETIC CT samples (HU, K={len(samples)}) sci-diffusion"
    if loaded.nifti is not None:
        save_like(np.moveaxis(samples, 0, -1), loaded.nifti, path, description=description, sidecar=record)
    else:
        save_volume(np.moveaxis(samples, 0, -1), loaded.input_affine, path, description=description, sidecar=record)


def draw_figures(mr: str | os.PathLike, inputs: dict[str, Any], module: torch.nn.Module, options: TranslationOptions,
                 mean: np.ndarray, std: np.ndarray | None) -> None:
    """The PNGs asked for, on the model's grid: the MR / sCT / CT / |error| / std panel (``png``) and the
    middle slice's sampling trajectory (``trajectory_png``, sampled again with the run's seed)."""
    o = options
    if o.png is not None:
        how = "regression" if is_deterministic(module) else f"{o.sampler} {o.steps} steps, K={o.samples}"
        translation_panel(inputs["mr"], mean, inputs["mask"], o.png, ct=inputs["ct"], std=std,
                          title=f"{Path(mr).name}: {how}")
    if o.trajectory_png is not None:
        frames = slice_trajectory(module, inputs["mr"], inputs["mask"], o.sampler, o.steps, o.seed, o.spacing,
                                  **slice_geometry(module))
        trajectory_strip(frames, o.trajectory_png, title=f"{Path(mr).name}: {o.sampler}, {o.steps} steps, seed {o.seed}")


def interval_calibration(options: TranslationOptions, module: torch.nn.Module) -> ConformalCalibration | None:
    """The calibration of ``--interval`` (None without one), checked against the run: the same K, checkpoint,
    sampler and steps as the predictions it was fitted on (``calibration.check_calibration_fits``)."""
    if options.interval is None:
        return None
    ckpt = getattr(module, "checkpoint_path", "")
    path = options.calibration or calibration_beside(ckpt)
    if path is None:
        raise UserError(f"--interval needs --calibration CAL.json: no calibration ships with "
                        f"{Path(ckpt).name or 'this checkpoint'}, and intervals are calibrated "
                        "on subjects the model never saw (evaluate mri2ct --calibration-out).")
    calibration = read_calibration(path)
    deterministic = is_deterministic(module)
    check_calibration_fits(calibration, path, options.samples, getattr(module, "checkpoint_hash", None),
                           None if deterministic else options.sampler, None if deterministic else options.steps)
    calibration.factor(options.interval)  # the level is one the calibration serves
    return calibration


def translate_file(mr: str | os.PathLike, out: str | os.PathLike, mask: str | os.PathLike | None = None,
                   options: TranslationOptions | None = None, module: torch.nn.Module | None = None,
                   **settings: Any) -> dict[str, Any]:
    """Translate one MR file into a synthetic CT file (the ``translate`` verb).

    Args:
        mr: the MR: NIfTI, .mha/.mhd, .nrrd or a DICOM series folder.
        out: the synthetic CT (.nii.gz, .nii or .mha).
        mask: the body mask on the MR's grid; None derives it from the MR (SynthRAD's recipe).
        options: how to translate (``options.TranslationOptions``); default: its defaults.
        module: a loaded model to use instead of ``options.ckpt`` (``model.load_translation_model``).
        **settings: fields of ``TranslationOptions`` that replace the ones in ``options``
            (``translate_file(mr, out, steps=5, progress=False)``).

    ``steps`` None takes the model's own step count (``model.default_steps``); ``shared_noise`` gives all
    slices of a sample one starting noise (``volume.translate_volume``).

    The MR is resampled to the model's training voxel size (``model.training_spacing``) on a RAS grid,
    translated there, and the result mapped back onto the MR's own grid. Writes ``out`` (mean sCT in HU,
    the MR's shape and affine, for a NIfTI MR its header, SYNTHETIC in its description) with a JSON sidecar,
    optionally the per-voxel std (``uncertainty``, needs ``samples >= 2``) and a PNG panel (MR / sCT / CT /
    |error| / std, on the model's grid). Returns the sidecar's content.

    Raises:
        UserError: a bad option, checkpoint or input file, in one sentence, before anything is written.
    """
    options = check_options(out, replace(options or TranslationOptions(), **settings))
    module = module if module is not None else load_translation_model(options.ckpt, options.device)
    options = options_for_model(options, module)
    calibration = interval_calibration(options, module)
    inputs = read_on_model_grid(mr, mask, options.ct, module, options.series)
    start = time.perf_counter()
    volumes = translate_volume(module, inputs["mr"], inputs["mask"], options.samples, options.sampler, options.steps,
                               options.seed, options.batch_size, progress=options.progress, spacing=options.spacing,
                               shared_noise=options.shared_noise, **slice_geometry(module))
    seconds = time.perf_counter() - start
    mean, std = mean_and_std(volumes, inputs["mask"])
    sidecar = translation_record(mr, inputs, module, options, seconds)
    write_translation(out, options.uncertainty, inputs, mean, std, sidecar)
    if calibration is not None:
        write_interval(out, inputs, mean, std, calibration, options.interval, sidecar)
    if options.samples_out is not None:
        write_samples(options.samples_out, inputs, volumes, sidecar)
    draw_figures(mr, inputs, module, options, mean, std)
    return sidecar

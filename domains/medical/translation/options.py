"""What ``translate`` is asked to do (``TranslationOptions``: the verb's flags) and the one check of them:
``check_options`` before the model is loaded (the flags alone and against each other, as the command line
always checked them), then ``options_for_model`` once it is (the model's own step count, what a
deterministic model cannot do), both before any volume is read."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from sci_diffusion.atomic import check_writable
from sci_diffusion.distillation import distilled_times
from sci_diffusion.errors import UserError
from sci_diffusion.samplers import resolve_spacing

from ..io.images import OUTPUT_SUFFIXES
from ..io.nifti import NIFTI_SUFFIXES
from .model import default_steps, is_deterministic

PathLike = str | os.PathLike


@dataclass(frozen=True)
class TranslationOptions:
    """How ``translate_file`` translates: the ``translate`` verb's flags, by the same names.

    Attributes:
        ckpt: the model's checkpoint; None: the bundled residual model (``model.load_translation_model``).
        samples: K samples; their mean is the synthetic CT (1 for a regression model).
        uncertainty: write the per-voxel std (HU) over the samples here (.nii.gz, .nii or .mha; needs K >= 2).
        steps: sampler steps; None: the model's own (``model.default_steps``).
        sampler: a core sampler (``sci_diffusion.samplers.SAMPLERS``).
        spacing: the sampler's time grid (``sci_diffusion.time_grids.SPACINGS``); None: the sampler's default.
        seed: the seed of the starting noise.
        batch_size: slices per network call.
        png: draw the MR / sCT / CT / |error| / std panel here (on the model's grid).
        ct: a reference CT on the MR's grid, for the panel's CT and error images.
        trajectory_png: draw how the body's middle slice forms here (diffusion models only).
        shared_noise: every slice of a sample starts from the same noise (``volume.translate_volume``).
        progress: show a progress bar.
        device: where a model loaded from ``ckpt`` runs; None: CUDA when available, else the CPU.
        series: the DICOM series to read when the MR is a folder that holds several (``io.images.pick_dicom_series``).
        interval: write the per-voxel interval that covers the CT with this probability (``calibration.py``) as
            ``<out>_lower`` and ``<out>_upper`` beside ``out``; needs ``calibration``, or one that ships beside the
            checkpoint (``calibration.calibration_beside``).
        calibration: the split-conformal calibration of the interval (``evaluate mri2ct --calibration-out`` on
            held-out subjects, with this checkpoint, K, sampler and steps).
        samples_out: write the K samples here as one 4-D NIfTI (X, Y, Z, K) in HU, for ``evaluate mri2ct``'s
            distribution-free checks.
    """

    ckpt: PathLike | None = None
    samples: int = 1
    uncertainty: PathLike | None = None
    steps: int | None = None
    sampler: str = "ddim"
    spacing: str | None = None
    seed: int = 0
    batch_size: int = 16
    png: PathLike | None = None
    ct: PathLike | None = None
    trajectory_png: PathLike | None = None
    shared_noise: bool = False
    progress: bool = True
    device: str | None = None
    series: str | None = None
    interval: float | None = None
    calibration: PathLike | None = None
    samples_out: PathLike | None = None


def check_output_path(path: PathLike | None, flag: str) -> None:
    """A volume ``translate`` will write: an image suffix it writes, in a folder it can write (None: none asked for)."""
    if path is None:
        return
    if not str(path).endswith(OUTPUT_SUFFIXES):
        raise UserError(f"{flag} {path} must end in .nii.gz, .nii or .mha.")
    check_writable(path, flag)


def interval_paths(out: PathLike) -> tuple[str, str]:
    """Where ``--interval`` writes its bounds: ``<out stem>_lower`` and ``_upper`` beside ``out``, with its suffix."""
    name = str(out)
    suffix = next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")
    stem = name[: len(name) - len(suffix)]
    return f"{stem}_lower{suffix}", f"{stem}_upper{suffix}"


def checked_spacing(sampler: str, spacing: str | None) -> str:
    """The time spacing a run uses and records (the sampler's default when None), after the core's own checks of
    the sampler name and the spacing (``samplers.resolve_spacing``), in the core's sentences."""
    try:
        spacing = resolve_spacing(sampler, spacing)
    except ValueError as err:
        raise UserError(str(err)) from None
    return spacing


def check_options(out: PathLike, options: TranslationOptions) -> TranslationOptions:
    """Check every option on its own and against the others, before the model is loaded.

    Returns:
        The options with the sampler's default spacing filled in when None, as the run uses and records it.

    Raises:
        UserError: one sentence that names the flag and the problem.
    """
    o = options
    if o.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {o.batch_size}.")
    check_output_path(out, "--out")
    check_output_path(o.uncertainty, "--uncertainty")
    for path, flag in ((o.png, "--png"), (o.trajectory_png, "--trajectory-png")):
        if path is not None:
            check_writable(path, flag)
    if o.uncertainty is not None and o.samples < 2:
        raise UserError(f"--uncertainty {o.uncertainty} needs --samples 2 or more (a standard deviation over samples).")
    if o.interval is not None:
        if not 0.0 < o.interval < 1.0:
            raise UserError(f"--interval is a coverage in (0, 1), got {o.interval:g}.")
        for path, flag in zip(interval_paths(out), ("--interval's lower bound", "--interval's upper bound")):
            check_output_path(path, flag)
    if o.samples_out is not None:
        if not str(o.samples_out).endswith(NIFTI_SUFFIXES):
            raise UserError(f"--samples-out {o.samples_out} must end in .nii.gz or .nii (a 4-D volume of the samples).")
        check_writable(o.samples_out, "--samples-out")
    spacing = checked_spacing(o.sampler, o.spacing)
    if o.steps is not None and o.steps < 1:
        raise UserError(f"--steps must be at least 1, got {o.steps}.")
    if o.samples < 1:
        raise UserError(f"--samples must be at least 1, got {o.samples}.")
    return replace(o, spacing=spacing)


def options_for_model(options: TranslationOptions, module: torch.nn.Module) -> TranslationOptions:
    """The options checked against the loaded model, with its own step count filled in when ``steps`` is None.

    Raises:
        UserError: what a deterministic (regression) model cannot do, or a step count or sampler a distilled
            student was not distilled for, in one sentence.
    """
    o = options
    steps = default_steps(module) if o.steps is None else o.steps
    if is_deterministic(module) and (o.samples > 1 or o.uncertainty is not None):
        raise UserError(f"Checkpoint {getattr(module, 'checkpoint_path', o.ckpt)} is a deterministic regression model: "
                        "it gives one answer, so use --samples 1 and no --uncertainty.")
    if o.trajectory_png is not None and is_deterministic(module):
        raise UserError("--trajectory-png needs a diffusion model: a regression model has no sampling trajectory.")
    if not is_deterministic(module):
        distilled_times(module, o.sampler, steps, o.spacing)  # a distilled student: its own steps and sampler only
    return replace(o, steps=steps)

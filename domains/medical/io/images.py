"""Medical volumes as they come, onto a model's voxel grid and back: one MONAI pipeline for reading.

``LoadImaged`` (the reader picked from the path: nibabel for NIfTI; ITK for MetaImage, NRRD and
DICOM series folders) -> ``EnsureChannelFirstd`` -> ``Orientationd`` (RAS, nibabel's RAS+ labels as in
``transforms.mri2ct_transforms``) -> ``Spacingd`` (the model's voxel size; linear for images, nearest
for masks). ``to_input_grid`` undoes the last two with ``Invertd``, so a result computed on the model's
grid lands on the input's own grid (its shape and affine), and ``save_on_input_grid`` writes it there.

Affines are voxel-to-world matrices in mm, RAS+ (nibabel's convention; MONAI's ITK reader and writer
convert from and to ITK's LPS).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import ImageReader, ITKReader, ITKWriter, MetaTensor, NibabelReader
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, MapTransform, Orientationd, Spacingd

from sci_diffusion.atomic import atomic_path, write_json

from .nifti import NIFTI_SUFFIXES, MedicalInputError, load_nifti, save_like, save_volume, synthetic_description

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, *ITK_SUFFIXES)  # files; a folder is read as one DICOM series
OUTPUT_SUFFIXES = (*NIFTI_SUFFIXES, ".mha")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's RAS+, as in transforms.mri2ct_transforms
MASK_KEYS = ("mask", "labels")  # resampled with nearest neighbours
AFFINE_ATOL_MM = 1e-3


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix: `a/mr.nii.gz` -> `mr`, `a/mr.mha` -> `mr`; a folder keeps its name."""
    name = Path(path).name
    suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


@contextlib.contextmanager
def _quiet_unused_readers() -> Iterator[None]:
    # LoadImage builds every reader MONAI knows. With pydicom installed, the GPU DICOM decoder's reader
    # then logs and warns that it has no GPU, on each call; we never use it, and the extra lines would
    # break the CLI's one-line errors.
    log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            # ITKReader warns of a folder with several series; pick_dicom_series has refused or picked one by then
            warnings.filterwarnings("ignore", message=".*contains more than one DICOM series")
            yield
    finally:
        log.setLevel(level)


def dicom_series(folder: str | os.PathLike) -> dict[str, int]:
    """``{series identifier: number of files}`` of the DICOM series in ``folder``, found as MONAI's ``ITKReader``
    finds them (GDCM's series file names with series details and the series date), so an identifier here is one
    that ``ITKReader(series_name=...)`` reads. An identifier starts with the series' SeriesInstanceUID."""
    # ITK: only for a DICOM folder (heavy to import; NIfTI alone never loads it)
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetUseSeriesDetails(True)
    names.AddSeriesRestriction("0008|0021")  # Series Date, as ITKReader.read restricts
    names.SetDirectory(str(folder))
    return {str(uid): len(names.GetFileNames(uid)) for uid in names.GetSeriesUIDs()}


def pick_dicom_series(folder: Path, series: str | None) -> str:
    """The identifier of the one series to read from ``folder``: its only series, or the one ``series`` names (the
    identifier, or a SeriesInstanceUID it starts with).

    Raises:
        MedicalInputError: several series and none asked for (the sentence lists them), or ``series`` is not there.
    """
    found = dicom_series(folder)
    listed = "; ".join(f"{uid} ({n} files)" for uid, n in found.items())
    if series is None:
        if len(found) > 1:
            raise MedicalInputError(f"{folder} holds {len(found)} DICOM series ({listed}); pick one with --series UID.")
        return next(iter(found))
    chosen = [uid for uid in found if uid == series or uid.startswith(series + ".")]
    if len(chosen) != 1:
        raise MedicalInputError(f"--series {series} names {'none' if not chosen else 'several'} of the DICOM series in "
                                f"{folder} ({listed}).")
    return chosen[0]


def image_reader(path: str | os.PathLike, series: str | None = None) -> ImageReader:
    """The MONAI reader for ``path``: ``NibabelReader`` for `.nii`/`.nii.gz`, ``ITKReader`` for
    `.mha`/`.mhd`/`.nrrd` and for a folder that holds a DICOM series (GDCM sorts its slices by position).

    Args:
        path: the file, or the DICOM folder.
        series: for a folder with several DICOM series, the one to read (``pick_dicom_series``); ignored for a file.

    Raises:
        MedicalInputError: the path is missing, an unknown kind of file, a NIfTI whose header cannot be
            read, a folder without DICOM files, or one with several series and no ``series`` that picks one.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        # ITK: only for a DICOM folder or a MetaImage (heavy to import; NIfTI alone never loads it)
        import itk

        dicom = itk.GDCMImageIO.New()
        if not any(f.is_file() and dicom.CanReadFile(str(f)) for f in path.iterdir()):
            raise MedicalInputError(f"{path} is a folder but holds no DICOM file (a DICOM series is read from its folder).")
        return ITKReader(series_name=pick_dicom_series(path, series))
    if not path.is_file():
        raise MedicalInputError(f"{path} does not exist or is not a file.")
    if name.endswith(NIFTI_SUFFIXES):
        load_nifti(path)  # the header, checked here so that a bad one gets nibabel's own words
        return NibabelReader()
    if name.endswith(ITK_SUFFIXES):
        return ITKReader()
    if name.endswith(".dcm"):
        raise MedicalInputError(f"{path} is one DICOM slice; pass the folder that holds its whole series.")
    raise MedicalInputError(f"{path} is neither a NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd) or NRRD (.nrrd) file "
                            "nor a DICOM series folder.")


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    # ITK's MetaIO and GDCM print their diagnostics on the process's stderr (file descriptor 2), and
    # MONAI then raises a long multi-reader message. Catch those lines: on failure the first one
    # names the problem in our one-sentence error; on success they are passed on unchanged.
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())
            if text and not failed:
                sys.stderr.write(text)


def _reason(err: Exception, native: list[str]) -> str:
    if native:
        return native[0]
    cause = err.__cause__ or err
    first = (str(cause).strip().splitlines() or [""])[0]
    if not first or first.startswith("LoadImage cannot find a suitable reader"):  # MONAI's list of every reader
        return type(cause).__name__
    return f"{type(cause).__name__}: {first}"


def read_image(path: str | os.PathLike, series: str | None = None) -> MetaTensor:
    """One volume through ``LoadImaged`` with the reader for its path, checked.

    A 4-D volume whose axes after the third are all of length 1 (a NIfTI written as (X, Y, Z, 1), as some tools
    write one time point) is squeezed to (X, Y, Z); a real fourth axis (several time points) is refused.

    Args:
        path: the file, or the DICOM folder.
        series: the DICOM series to read from a folder that holds several (``pick_dicom_series``).

    Returns:
        (X, Y, Z) float32 MetaTensor in the file's own voxel order and units; ``.affine`` is its
        (4, 4) voxel-to-world matrix (mm, RAS+).

    Raises:
        MedicalInputError: unreadable, not 3-D, or NaN or infinite voxels (one sentence naming the file).
    """
    reader = image_reader(path, series)
    native: list[str] = []
    try:
        with _quiet_unused_readers(), _native_stderr() as native:
            image = LoadImaged("image", reader=reader, image_only=True, dtype=np.float32)({"image": str(path)})["image"]
    except Exception as err:  # nibabel, gzip, ITK and MONAI each raise their own kind
        raise MedicalInputError(f"{path} could not be read as an image ({_reason(err, native).rstrip('.')}).") from None
    while image.ndim > 3 and image.shape[-1] == 1:  # (X, Y, Z, 1): one time point; the affine is the spatial one
        image = image[..., 0]
    if image.ndim != 3:
        raise MedicalInputError(f"{path} is not a 3-D volume (shape {tuple(image.shape)}).")
    bad = int(image.numel() - torch.isfinite(image).sum())
    if bad:
        raise MedicalInputError(f"{path} contains {bad} NaN or infinite voxels.")
    return image


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine)`` of any supported volume: (X, Y, Z) float32 as stored, (4, 4) float64 mm RAS+.

    For NIfTI the same as ``nifti.load_volume``'s array and affine; for MetaImage, NRRD and DICOM
    the affine nibabel would give for the same geometry.
    """
    image = read_image(path)
    return image.numpy(), np.asarray(image.affine, dtype=np.float64)


class LoadAnyImaged(MapTransform):
    """``read_image`` for each key of a dict of paths: the reader picked per file (NIfTI, MetaImage,
    NRRD, DICOM folder), checked, channel first: (1, X, Y, Z) MetaTensors with their RAS+ affines."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = read_image(d[key])[None]
        return d


def model_grid_transform(keys: Sequence[str], voxel_mm: Sequence[float] | float | None = None) -> Compose:
    """``Orientationd`` to RAS, then ``Spacingd`` to ``voxel_mm`` (mm; None: keep the input's voxel size).

    Works on channel-first (C, X, Y, Z) MetaTensors; keys in ``MASK_KEYS`` are resampled with nearest
    neighbours, the others linearly (border padding). Invertible (``Invertd``).
    """
    keys = list(keys)
    steps: list = [Orientationd(keys, axcodes="RAS", labels=RAS_LABELS)]
    if voxel_mm is not None:
        pixdim = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
        if not np.all(pixdim > 0):
            raise MedicalInputError(f"The model's voxel size must be positive, got {pixdim.tolist()} mm.")
        modes = ["nearest" if k in MASK_KEYS else "bilinear" for k in keys]
        steps.append(Spacingd(keys, pixdim=pixdim.tolist(), mode=modes, padding_mode="border", dtype=np.float32))
    return Compose(steps)


@dataclass
class LoadedVolumes:
    """One subject's volumes on the model's RAS grid, and what it takes to go back to the input's grid.

    Attributes:
        arrays: key -> (X', Y', Z') float32 on the model's grid (RAS voxel order), in the files' units.
        affine: (4, 4) voxel-to-world matrix of the model's grid (mm, RAS+).
        zooms: (3,) voxel size of the model's grid along its axes (mm).
        inputs: key -> (X, Y, Z) float32 as stored in the file (the input's grid).
        input_affine: (4, 4) voxel-to-world matrix of the input's grid (mm, RAS+).
        paths: key -> the path read; the first key is the reference grid.
        nifti: the reference's nibabel image when it is a NIfTI (its header is kept on writing), else None.
        transform: the ``model_grid_transform`` that was applied.
        images: key -> (1, X', Y', Z') MetaTensor that records the transforms applied (for ``Invertd``).
    """

    arrays: dict[str, np.ndarray]
    affine: np.ndarray
    zooms: np.ndarray
    inputs: dict[str, np.ndarray]
    input_affine: np.ndarray
    paths: dict[str, str]
    nifti: nib.Nifti1Image | nib.Nifti2Image | None
    transform: Compose
    images: dict[str, MetaTensor]

    @property
    def reference(self) -> str:
        return next(iter(self.paths))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.inputs[self.reference].shape)


def load_for_model(paths: Mapping[str, str | os.PathLike | None], voxel_mm: Sequence[float] | float | None = None,
                   series: Mapping[str, str | None] | None = None) -> LoadedVolumes:
    """Read volumes of one subject (e.g. {"mr": .., "mask": .., "ct": ..}) and bring them onto the model's grid.

    The first key with a path is the reference: every other volume must have its shape and affine
    (within 1e-3 mm). Entries whose path is None are skipped.

    Args:
        paths: key -> a NIfTI, MetaImage or NRRD file, or a DICOM series folder.
        voxel_mm: the model's voxel size (mm, one number or three along R, A, S); None keeps the input's.
        series: key -> the DICOM series to read from that key's folder when it holds several (``read_image``).

    Returns:
        ``LoadedVolumes``: the arrays on the model's grid and what ``to_input_grid`` needs.

    Raises:
        MedicalInputError: one sentence naming the file: unreadable, not 3-D, NaN voxels, or off the
            reference's grid.
    """
    paths = {k: str(p) for k, p in paths.items() if p is not None}
    if not paths:
        raise ValueError("load_for_model needs at least one path.")
    ref = next(iter(paths))
    raw = {k: read_image(p, (series or {}).get(k)) for k, p in paths.items()}
    for key, image in raw.items():
        if image.shape != raw[ref].shape:
            raise MedicalInputError(f"{paths[key]} has shape {tuple(image.shape)} but {paths[ref]} has shape "
                                    f"{tuple(raw[ref].shape)}.")
        worst = float(np.abs(np.asarray(image.affine) - np.asarray(raw[ref].affine)).max())
        if worst > AFFINE_ATOL_MM:
            raise MedicalInputError(f"{paths[key]} and {paths[ref]} have different affines (largest difference {worst:.3g}).")
    inputs = {k: image.numpy() for k, image in raw.items()}
    channel_first = EnsureChannelFirstd(list(paths), channel_dim="no_channel")(raw)
    transform = model_grid_transform(list(paths), voxel_mm)
    on_model = transform(dict(channel_first))
    affine = np.asarray(on_model[ref].affine, dtype=np.float64)
    name = paths[ref].lower()
    return LoadedVolumes(
        arrays={k: on_model[k].numpy()[0] for k in paths},
        affine=affine,
        zooms=np.sqrt((affine[:3, :3] ** 2).sum(axis=0)),
        inputs=inputs,
        input_affine=np.asarray(raw[ref].affine, dtype=np.float64),
        paths=paths,
        nifti=load_nifti(paths[ref]) if name.endswith(NIFTI_SUFFIXES) else None,
        transform=transform,
        images={k: on_model[k] for k in paths},
    )


def to_input_grid(volume: np.ndarray, loaded: LoadedVolumes, key: str | None = None, nearest: bool = False) -> np.ndarray:
    """Map a volume on the model's grid back onto the input's own grid (``Invertd``).

    Args:
        volume: (X', Y', Z') or (C, X', Y', Z') on the grid of ``loaded.arrays``.
        loaded: what ``load_for_model`` returned.
        key: whose recorded transforms to invert (default: the reference); a mask key inverts with
            nearest neighbours, an image key linearly.
        nearest: invert with nearest neighbours whatever the key (for labels and masks).

    Returns:
        float32 array of shape ``loaded.input_shape`` (or (C, *input_shape)), voxel for voxel on the
        input file's grid.
    """
    key = key or loaded.reference
    template = loaded.images[key]
    array = np.asarray(volume, dtype=np.float32)
    channels = array.ndim == 4
    array = array if channels else array[None]
    if array.shape[1:] != tuple(template.shape[1:]):
        raise ValueError(f"Volume of shape {volume.shape} is not on the model's grid {tuple(template.shape[1:])}.")
    invert = Invertd("out", transform=loaded.transform, orig_keys=key, nearest_interp=nearest)
    out = invert({"out": MetaTensor(torch.from_numpy(np.ascontiguousarray(array))), key: template})["out"]
    out = np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)
    return out if channels else out[0]


def save_on_input_grid(array: np.ndarray, loaded: LoadedVolumes, out_path: str | os.PathLike,
                       description: str = "SYNTHETIC image from sci-diffusion", sidecar: dict | None = None) -> Path:
    """Write a volume that is on the input's grid, with the input's affine.

    `.nii.gz`/`.nii`: a NIfTI input's header (qform, sform, codes, units) is kept (``nifti.save_like``),
    otherwise qform and sform are the input's affine (``nifti.save_volume``); the description ("SYNTHETIC"
    prepended when missing, 80 bytes) goes to ``descrip``. `.mha`: MetaImage through ITK, LPS geometry
    from the same affine, the description in its ``Description`` field, compressed.

    Args:
        array: (X, Y, Z) of ``loaded.input_shape``; float64 is stored as float32, bool as uint8.
        loaded: what ``load_for_model`` returned.
        out_path: `.nii.gz`, `.nii` or `.mha`; folders are created; written atomically.
        description: header description.
        sidecar: when given, written as `<out stem>.json` beside the image with "synthetic": true.

    Returns:
        The path written.
    """
    out_path = Path(out_path)
    array = np.asanyarray(array)
    if tuple(array.shape) != loaded.input_shape:
        raise MedicalInputError(f"Array of shape {array.shape} does not fit the grid {loaded.input_shape} of "
                                f"{loaded.paths[loaded.reference]}.")
    name = out_path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        if loaded.nifti is not None:
            return save_like(array, loaded.nifti, out_path, description=description, sidecar=sidecar)
        return save_volume(array, loaded.input_affine, out_path, description=description, sidecar=sidecar)
    if not name.endswith(".mha"):
        raise MedicalInputError(f"{out_path} must end in .nii.gz, .nii or .mha.")
    # ITK: only for a MetaImage (heavy to import; NIfTI alone never loads it)
    import itk

    dtype = np.uint8 if array.dtype == bool else np.float32 if array.dtype == np.float64 else array.dtype
    image = ITKWriter.create_backend_obj(array, channel_dim=None, affine=loaded.input_affine, dtype=dtype,
                                         affine_lps_to_ras=True)
    image["Description"] = synthetic_description(description).decode("ascii")
    with atomic_path(out_path, suffix=".mha") as tmp:
        itk.imwrite(image, str(tmp), compression=True)
    if sidecar is not None:
        write_json(out_path.with_suffix(".json"), {"synthetic": True, **sidecar})
    return out_path

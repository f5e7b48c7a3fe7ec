"""A 2.5-D slice dataset over MR/CT pairs: k MR slices in, one CT slice out.

Each volume is loaded once through `transforms.mri2ct_transforms` (RAS, CT and MR in
[-1, 1]) and kept in memory; items are cut from those tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.transforms import DivisiblePad, RandCropByPosNegLabeld, SpatialPad
from torch.utils.data import Dataset

from sci_diffusion.atomic import atomic_path

from ..io.masks import binary_mask
from .pairs import validate_pair
from .transforms import augment_mr, mri2ct_transforms

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # spatial axis of a RAS (X, Y, Z) volume
PAD_VALUES = {"mr": -1.0, "ct": -1.0, "mask": 0.0}  # background of each normalised volume


def axis_index(axis: str | int) -> int:
    """"axial" / "coronal" / "sagittal" or 0..2 -> the RAS spatial axis the slices are taken along."""
    if isinstance(axis, str):
        if axis not in AXES:
            raise ValueError(f"axis must be one of {sorted(AXES)} or 0..2, got {axis!r}.")
        return AXES[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be one of {sorted(AXES)} or 0..2, got {axis!r}.")
    return int(axis)


def neighbour_slices(volume: torch.Tensor, index: int, k: int, axis: str | int = "axial") -> torch.Tensor:
    """The k slices centred on `index` along `axis`, edges replicate-padded.

    Args:
        volume: (X, Y, Z) or (1, X, Y, Z).
        index: centre slice.
        k: odd number of slices.
        axis: slicing axis.

    Returns:
        (k, H, W): the two remaining spatial axes in RAS order (axial: H = X, W = Y).
    """
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k must be a positive odd number, got {k}.")
    a = axis_index(axis)
    vol = volume[0] if volume.ndim == 4 else volume
    n = vol.shape[a]
    idx = (torch.arange(k) - k // 2 + index).clamp(0, n - 1)
    return vol.movedim(a, 0)[idx]


def unpad_slice(x: torch.Tensor, pad: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
    """Undo the in-plane padding of a whole-slice item: x (..., H, W), pad ((top, bottom), (left, right))."""
    (t, b), (left, r) = [[int(v) for v in row] for row in pad]
    h, w = x.shape[-2:]
    return x[..., t : h - b, left : w - r]


def memory_mapped(pair: dict[str, str], prepare: Callable[[dict[str, str]], dict[str, torch.Tensor]],
                  cache_dir: str | os.PathLike, recipe: dict) -> dict[str, torch.Tensor]:
    """``prepare(pair)``, stored once in ``cache_dir`` and read back memory-mapped (``torch.load(mmap=True)``).

    The file is named by the patient and a hash of the pair's paths, sizes and modification times and
    of ``recipe`` (the preparing settings), so changed files or settings are prepared again. Pages
    of a mapped volume are read from disk when a slice touches them, and the kernel may drop them
    again, so resident memory does not grow with the number of volumes.

    Not MONAI's ``PersistentDataset``, which caches the same way but reads a cached item back whole
    (``torch.load`` without ``mmap``), so every volume held by the data set would be resident, and keys its files
    by the item (the paths) alone, so a volume rewritten in place is served stale
    (``test_monai_pieces.py``: ``test_persistent_dataset_would_hold_every_volume_in_memory``).
    """
    stats = {key: Path(path).stat() for key, path in sorted(pair.items()) if key in ("mr", "ct", "mask")}
    stamp = {key: [str(Path(pair[key]).resolve()), st.st_size, st.st_mtime_ns] for key, st in stats.items()}
    digest = hashlib.sha256(json.dumps([stamp, recipe], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{pair.get('id', 'volume')}-{digest}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(prepare(pair), tmp)
    return torch.load(path, mmap=True, weights_only=True)


class SliceDataset(Dataset):
    """2.5-D MR->CT slices from validated pairs.

    Items are dicts:
        "ct": (1, H, W) float32 in [-1, 1] (HU via `transforms.unit_to_ct`),
        "mr": (k, H, W) float32 in [-1, 1], slices index-k//2 .. index+k//2, edges replicated,
        "mask": (1, H, W) float32 in {0, 1},
        "id": patient id, "slice": slice index in the RAS volume,
        "pad": (2, 2) int64 in-plane padding ((top, bottom), (left, right)); undo with `unpad_slice`,
        "origin": (2,) int64 top-left corner of the item in the padded slice (crops; 0 otherwise).

    Args:
        pairs: dicts with mr, ct and mask paths (`pairs.find_synthrad_pairs`).
        k: odd number of MR slices in the condition.
        axis: "axial" (default), "coronal", "sagittal" or 0..2.
        crop_size: None for whole slices padded to a multiple of `divisible`; (h, w) for random
            crops of that size centred on a random mask voxel (MONAI's ``RandCropByPosNegLabeld``, the centre
            moved inward where the crop would leave the slice; slices smaller than the crop are padded first),
            for anatomy too large for whole slices.
        divisible: whole-slice padding multiple (16 suits a 4-level U-Net).
        spacing_mm: resample every volume to this spacing (mm) when given.
        validate: run `validate_pair` on each pair first.
        augment: MR intensity augmentation applied to every item's MR stack (training only), e.g.
            `transforms.mr_intensity_augmentation`; None for none.
        cache_dir: keep the prepared volumes in files here and memory-map them (`memory_mapped`)
            instead of holding them in memory: resident memory then stays bounded however many
            volumes there are, and a later run with the same files and settings skips the preparing.
        seed: the crops' random state (MONAI's own; ``monai.data.DataLoader`` reseeds it in each worker).

    Slices whose mask is empty are skipped.
    """

    def __init__(
        self,
        pairs: Sequence[dict[str, str]],
        k: int = 3,
        axis: str | int = "axial",
        crop_size: Sequence[int] | None = None,
        divisible: int = 16,
        spacing_mm: Sequence[float] | float | None = None,
        validate: bool = True,
        augment: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        seed: int = 0,
    ):
        if k < 1 or k % 2 == 0:
            raise ValueError(f"k must be a positive odd number, got {k}.")
        self.k, self.axis = k, axis_index(axis)
        self.augment = augment
        self.crop_size = None if crop_size is None else tuple(int(c) for c in crop_size)
        in_plane = [a for a in range(3) if a != self.axis]
        if self.crop_size is None:
            sizes = [1, 1, 1]
            for a in in_plane:
                sizes[a] = divisible
            pad_for = lambda value: DivisiblePad(k=sizes, mode="constant", value=value)  # noqa: E731
        else:
            sizes = [-1, -1, -1]
            for a, c in zip(in_plane, self.crop_size):
                sizes[a] = c
            pad_for = lambda value: SpatialPad(spatial_size=sizes, mode="constant", value=value)  # noqa: E731
        load = mri2ct_transforms(("mr", "ct", "mask"), spacing_mm=spacing_mm)
        self.crop = None
        if self.crop_size is not None:  # pos=1, neg=0: every crop is centred on a body voxel
            self.crop = RandCropByPosNegLabeld(("ct", "mr", "mask"), label_key="mask", spatial_size=self.crop_size,
                                               pos=1.0, neg=0.0, num_samples=1)
            self.crop.set_random_state(seed)

        def prepare(pair: dict[str, str]) -> dict[str, torch.Tensor]:
            """One pair, loaded, normalised and padded: {"mr", "ct", "mask", "affine", "pad"}."""
            if validate:
                validate_pair(pair)
            data = load({key: pair[key] for key in ("mr", "ct", "mask")})
            width = pad_for(0.0).compute_pad_width(data["mr"].shape[1:])[1:]  # drop the channel
            volume = {"affine": torch.as_tensor(data["mr"].affine, dtype=torch.float64),
                      "pad": torch.tensor([width[a] for a in in_plane], dtype=torch.int64)}
            for key in ("mr", "ct", "mask"):
                padded = pad_for(PAD_VALUES[key])(data[key])
                volume[key] = padded.as_tensor().contiguous() if hasattr(padded, "as_tensor") else padded.contiguous()
            volume["mask"] = binary_mask(volume["mask"])
            return volume

        recipe = {"spacing_mm": spacing_mm, "crop_size": self.crop_size, "divisible": divisible, "axis": self.axis}
        self.volumes: list[dict[str, torch.Tensor]] = []
        self.ids: list[str] = []
        self.pads: list[torch.Tensor] = []
        self.affines: list[torch.Tensor] = []  # RAS affine of each loaded (unpadded) volume
        self.index: list[tuple[int, int]] = []
        for pair in pairs:
            volume = prepare(pair) if cache_dir is None else memory_mapped(pair, prepare, cache_dir, recipe)
            self.affines.append(volume.pop("affine"))
            self.pads.append(volume.pop("pad"))
            v = len(self.volumes)
            self.volumes.append(volume)
            self.ids.append(pair.get("id", str(v)))
            occupied = volume["mask"][0].movedim(self.axis, 0).flatten(1).any(dim=1)
            self.index.extend((v, int(s)) for s in torch.nonzero(occupied).flatten())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, object]:
        v, s = self.index[i]
        volume = self.volumes[v]
        ct = neighbour_slices(volume["ct"], s, 1, self.axis)
        mr = neighbour_slices(volume["mr"], s, self.k, self.axis)
        mask = neighbour_slices(volume["mask"], s, 1, self.axis).float()
        origin = torch.zeros(2, dtype=torch.int64)
        if self.crop is not None:
            cropped = self.crop({"ct": ct, "mr": mr, "mask": mask})[0]
            centre = self.crop.cropper.centers[0]  # SpatialCrop's start: the centre less half the size
            origin = torch.tensor([int(c) - s // 2 for c, s in zip(centre, self.crop_size)])
            ct, mr, mask = (torch.as_tensor(cropped[key]) for key in ("ct", "mr", "mask"))
        if self.augment is not None:
            mr = augment_mr(mr.contiguous(), self.augment)
        return {
            "ct": ct.contiguous(),
            "mr": mr.contiguous(),
            "mask": mask.contiguous(),
            "id": self.ids[v],
            "slice": s,
            "pad": self.pads[v].clone(),
            "origin": origin,
        }

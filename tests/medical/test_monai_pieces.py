"""Issue 30 §5 (e): MONAI's transforms and loaders where the package hand-wrote them, each checked to do what the
hand-written code did, and the two that do not fit (``ForegroundMask``, ``PersistentDataset``) shown not to."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import DataLoader as MonaiDataLoader
from monai.data import PersistentDataset
from monai.transforms import ForegroundMask, Transform
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch.utils.data import DataLoader

from sci_diffusion_medical.data.head_anatomy import voxel_spacing
from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.data.phantom import body_mask_from_mr
from sci_diffusion_medical.data.slices import SliceDataset, memory_mapped, unpad_slice
from sci_diffusion_medical.data.transforms import ct_to_unit, mr_intensity_augmentation
from sci_diffusion_medical.translation.volume import model_slices


def scipy_body_mask(mr: np.ndarray, spacing_mm) -> np.ndarray:
    """The hand-written mask of the code before issue 30 (scipy hole filling and labelling), for comparison."""
    spacing = voxel_spacing(spacing_mm)
    mask = mr > threshold_otsu(mr)

    def ball(radius_mm):
        half = np.maximum(np.round(radius_mm / spacing).astype(int), 1)
        grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
        return sum((g * s) ** 2 for g, s in zip(grid, spacing)) <= radius_mm**2 + 1e-6

    mask = ndimage.binary_closing(np.pad(mask, 3), ball(max(4.0, spacing.max())))[3:-3, 3:-3, 3:-3]
    mask = ndimage.binary_fill_holes(ndimage.binary_dilation(mask, ball(max(2.0, spacing.max()))))
    for z in range(mask.shape[2]):
        mask[:, :, z] = ndimage.binary_fill_holes(mask[:, :, z])
    components, count = ndimage.label(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def test_monai_hole_filling_and_largest_component_give_the_masks_scipy_gave(head_2mm):
    mr = head_2mm[0].copy()
    mr[40:44, 50:54, 60:64] = 0.0  # a dark hole inside the head, to be filled
    mr[2:5, 2:5, 2:5] = 500.0  # a bright speck outside it, to be dropped
    np.testing.assert_array_equal(body_mask_from_mr(mr, 2.0), scipy_body_mask(mr, 2.0))


def test_foreground_mask_would_move_the_otsu_threshold(head_2mm):
    """Why ``body_mask_from_mr`` keeps skimage's Otsu threshold: ``ForegroundMask`` (made for RGB slides, foreground
    at or below the threshold) must see the MR inverted, and its Otsu threshold of the inverted histogram falls a
    bin away, so a v1 phantom's mask and CT would change."""
    mr = head_2mm[0]
    foreground = np.asarray(ForegroundMask(threshold={"R": "otsu"}, invert=True)(mr[None]))[0].astype(bool)
    assert (foreground != (mr > threshold_otsu(mr))).sum() > 100


def test_ct_to_unit_is_the_pipelines_scale_intensity_range():
    hu = np.array([-3000.0, -1024.0, -1000.0, 0.0, 988.0, 3000.0, 4000.0])
    np.testing.assert_allclose(ct_to_unit(hu), np.clip((hu + 1024.0) / 2012.0 - 1.0, -1.0, 1.0), atol=1e-12)
    assert isinstance(ct_to_unit(hu), np.ndarray) and type(ct_to_unit(torch.tensor(hu))) is torch.Tensor


MODEL = SimpleNamespace(hparams=SimpleNamespace(k=3), size_multiple=8)  # what model_slices reads of a model


def test_translate_pads_slices_as_training_pads_them(phantom_dir):
    """``translate``'s slices (SpatialPad + DivisiblePad) are the training items' whole slices, padding included."""
    from monai.transforms import LoadImage

    pair = find_synthrad_pairs(phantom_dir)[0]
    dataset = SliceDataset([pair], k=3, divisible=16)
    mr, mask = (np.asarray(LoadImage(image_only=True)(pair[key])) for key in ("mr", "mask"))
    stacks, bodies, occupied, (top, left, h, w), _ = model_slices(MODEL, mr, mask, 2, divisible=16)
    i = len(occupied) // 2
    item = next(dataset[j] for j in range(len(dataset)) if dataset[j]["slice"] == int(occupied[i]))
    assert stacks.shape[1:] == item["mr"].shape
    assert (top, left) == (int(item["pad"][0][0]), int(item["pad"][1][0]))
    torch.testing.assert_close(stacks[i], item["mr"], rtol=0, atol=1e-5)
    torch.testing.assert_close(bodies[i], item["mask"], rtol=0, atol=0)


def test_random_crops_are_centred_on_the_body_and_say_where_they_are(phantom_dir):
    pairs = find_synthrad_pairs(phantom_dir)
    whole = SliceDataset(pairs, k=3)
    cropped = SliceDataset(pairs, k=3, crop_size=(32, 32), seed=3)  # 48 x 56 slices: no padding for 32 x 32 crops
    for i in range(0, len(cropped), 7):
        item, full = cropped[i], whole[i]
        top, left = (int(v) for v in item["origin"])
        assert item["ct"].shape == (1, 32, 32) and item["mr"].shape == (3, 32, 32) and item["mask"].sum() > 0
        for key in ("ct", "mr", "mask"):
            torch.testing.assert_close(item[key], unpad_slice(full[key], full["pad"])[:, top:top + 32, left:left + 32])


def _same_item_twice(dataset, loader_class):
    """The same crop-and-augment item drawn by two worker processes."""
    loader = loader_class(dataset, batch_size=1, sampler=[5, 5], num_workers=2, multiprocessing_context="fork")
    return [batch["mr"] for batch in loader]


def test_monai_dataloader_gives_each_worker_its_own_augmentations(phantom_dir):
    """Why ``MRItoCTDataModule`` uses MONAI's ``DataLoader``: torch's copies the data set's random states into every
    worker, which then all draw the same crops and augmentations; MONAI's reseeds each worker's copy."""
    dataset = SliceDataset(find_synthrad_pairs(phantom_dir)[:1], k=3, crop_size=(32, 32),
                           augment=mr_intensity_augmentation(1.0, seed=0))
    a, b = _same_item_twice(dataset, DataLoader)
    torch.testing.assert_close(a, b)
    a, b = _same_item_twice(dataset, MonaiDataLoader)
    assert not torch.allclose(a, b)


def test_the_data_module_loads_with_monai_and_splits_with_partition_dataset(phantom_dir):
    from monai.data import partition_dataset

    from sci_diffusion_medical.data.datamodule import MRItoCTDataModule, split_patients

    dm = MRItoCTDataModule(root=str(phantom_dir), val_subjects=1, crop_size=(32, 32), batch_size=2)
    dm.setup()
    assert isinstance(dm.train_dataloader(), MonaiDataLoader)
    ids = [f"1BA{i:03d}" for i in range(1, 9)]
    train, val = partition_dataset(ids, ratios=[6, 2], shuffle=True, seed=4)
    assert split_patients(ids[::-1], 2, seed=4) == (sorted(train), sorted(val))


def _mapped_files() -> set[str]:
    """The files this process has mapped into memory (Linux's /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="mapped files are read from Linux's /proc")
def test_persistent_dataset_would_hold_every_volume_in_memory(tmp_path):
    """Why ``SliceDataset`` keeps its own ``memory_mapped`` cache: MONAI's ``PersistentDataset`` reads a cached volume
    back whole into memory, ours maps the file (pages are read when a slice touches them), so resident memory does
    not grow with the number of volumes."""
    class Volume(Transform):  # a MONAI transform, so that PersistentDataset caches its result
        def __init__(self, size):
            self.size = size

        def __call__(self, item):
            return {"mr": torch.ones(self.size)}

    (tmp_path / "mr.nii").write_bytes(b"x")
    pair = {"id": "a", "mr": str(tmp_path / "mr.nii")}
    PersistentDataset([pair], transform=Volume((64, 4096)), cache_dir=tmp_path / "monai")[0]  # both caches written
    memory_mapped(pair, Volume((64, 4096)), tmp_path / "ours", recipe={})
    persistent = PersistentDataset([pair], transform=Volume(1), cache_dir=tmp_path / "monai")[0]  # read from cache
    mapped = memory_mapped(pair, Volume(1), tmp_path / "ours", recipe={})
    assert persistent["mr"].shape == mapped["mr"].shape == (64, 4096)  # both came from their caches
    files = _mapped_files()
    assert any(name.startswith(str(tmp_path / "ours")) for name in files)
    assert not any(name.startswith(str(tmp_path / "monai")) for name in files)

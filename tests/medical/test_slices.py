from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.data.slices import SliceDataset, neighbour_slices, unpad_slice
from sci_diffusion_medical.data.transforms import ct_to_unit
from sci_diffusion_medical.io.nifti import load_volume


@pytest.fixture(scope="module")
def axial(phantom_dir):
    return SliceDataset(find_synthrad_pairs(phantom_dir), k=3)


def test_whole_axial_slices_have_the_documented_shapes_and_ranges(axial):
    # The 4 mm phantom is 48 x 56 x 48: axial slices are 48 x 56, padded to 48 x 64.
    for i in range(0, len(axial), 7):
        item = axial[i]
        assert item["ct"].shape == (1, 48, 64) and item["mr"].shape == (3, 48, 64) and item["mask"].shape == (1, 48, 64)
        assert item["ct"].dtype == item["mr"].dtype == item["mask"].dtype == torch.float32
        assert -1.0 <= item["ct"].min() and item["ct"].max() <= 1.0
        assert -1.0 <= item["mr"].min() and item["mr"].max() <= 1.0
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
        assert item["pad"].tolist() == [[0, 0], [4, 4]]


def test_dataset_holds_every_slice_with_a_non_empty_mask_and_no_other(axial, phantom_dir):
    expected = []
    for pair in find_synthrad_pairs(phantom_dir):
        mask, _, _ = load_volume(pair["mask"])
        expected += [(pair["id"], z) for z in range(mask.shape[2]) if mask[:, :, z].any()]
    assert [(axial[i]["id"], axial[i]["slice"]) for i in range(len(axial))] == expected


def test_unpadded_target_is_the_ct_slice_in_unit_range(axial, phantom_dir):
    item = axial[len(axial) // 2]
    pair = next(p for p in find_synthrad_pairs(phantom_dir) if p["id"] == item["id"])
    ct, _, _ = load_volume(pair["ct"])
    np.testing.assert_allclose(unpad_slice(item["ct"], item["pad"])[0].numpy(), ct_to_unit(ct[:, :, item["slice"]]), atol=1e-6)


def test_condition_is_the_neighbouring_mr_slices_with_replicated_edges(axial):
    first = axial[0]  # the lowest slice with body, at the bottom edge of the volume
    volume = axial.volumes[0]["mr"]
    assert first["slice"] == 0
    torch.testing.assert_close(first["mr"][0], first["mr"][1])  # slice -1 replicates slice 0
    torch.testing.assert_close(first["mr"][2], volume[0, :, :, 1])
    toy = torch.arange(5.0).view(1, 1, 5).expand(2, 3, 5)
    assert neighbour_slices(toy, 4, 5, "axial")[:, 0, 0].tolist() == [2.0, 3.0, 4.0, 4.0, 4.0]


def test_random_crops_have_the_requested_size_and_contain_body(phantom_dir):
    ds = SliceDataset(find_synthrad_pairs(phantom_dir), k=5, crop_size=(32, 32), axis="coronal")
    for i in range(0, len(ds), 5):
        item = ds[i]
        assert item["mr"].shape == (5, 32, 32) and item["ct"].shape == (1, 32, 32)
        assert item["mask"].sum() > 0


def test_a_dataloader_batches_items(axial):
    batch = next(iter(DataLoader(axial, batch_size=4, shuffle=True)))
    assert batch["mr"].shape == (4, 3, 48, 64) and batch["ct"].shape == (4, 1, 48, 64)
    assert batch["pad"].shape == (4, 2, 2) and len(batch["id"]) == 4


def test_k_must_be_odd(phantom_dir):
    with pytest.raises(ValueError):
        SliceDataset(find_synthrad_pairs(phantom_dir), k=2)


def test_memory_mapped_volumes_give_the_same_items_and_are_reused(phantom_dir, tmp_path):
    from sci_diffusion_medical.data.pairs import find_synthrad_pairs

    pairs = find_synthrad_pairs(phantom_dir)
    in_memory = SliceDataset(pairs, k=3)
    mapped = SliceDataset(pairs, k=3, cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*.pt"))
    assert [f.name.split("-")[0] for f in files] == ["1BA001", "1BA002"]
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the volumes are mapped files, not copies in memory
        assert all(str(f) in maps.read_text() for f in files)
    assert len(mapped) == len(in_memory)
    for i in (0, len(mapped) // 2, len(mapped) - 1):
        a, b = in_memory[i], mapped[i]
        for key in ("ct", "mr", "mask", "pad"):
            assert torch.equal(a[key], b[key])
    torch.testing.assert_close(mapped.affines[0], in_memory.affines[0])
    stamps = [f.stat().st_mtime_ns for f in files]
    SliceDataset(pairs, k=3, cache_dir=tmp_path / "cache")  # same files and settings: read, not rewritten
    assert [f.stat().st_mtime_ns for f in files] == stamps
    SliceDataset(pairs, k=3, cache_dir=tmp_path / "cache", spacing_mm=6.0)  # other settings: other files
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4

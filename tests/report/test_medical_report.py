"""The medical pages' content, read back from the file, and the volumes and fidelity numbers they are built from."""
from __future__ import annotations

import base64
import gzip

import nibabel as nib
import numpy as np
import pytest

from sci_diffusion.cli import main
from sci_diffusion_medical.evaluation.fidelity import tissue_fidelity
from sci_diffusion_medical.evaluation.metrics import mae
from sci_diffusion_medical.io.images import read_volume
from sci_diffusion_medical.report.page import write_report
from sci_diffusion_medical.report.volumes import downsampling_factor, page_volume

from .test_page import blocks


def volumes_of(text: str) -> list[nib.Nifti1Image]:
    return [nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(content)))
            for key, (_, content) in sorted(blocks(text).items()) if key.startswith("volume-") and key != "volume-views"]


def test_a_volume_keeps_integer_hu_exactly_and_other_intensities_to_half_a_step():
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct = rng.integers(-1024, 3071, (20, 24, 16)).astype(np.float32)
    mr = rng.uniform(0, 700, (20, 24, 16)).astype(np.float32)
    back_ct = nib.Nifti1Image.from_bytes(gzip.decompress(page_volume(ct, affine, "hu", "CT").data))
    back_mr = nib.Nifti1Image.from_bytes(gzip.decompress(page_volume(mr, affine, "intensity", "MR").data))
    assert np.array_equal(back_ct.get_fdata(), ct) and back_ct.get_data_dtype() == np.int16
    assert back_mr.get_data_dtype() == np.uint8
    assert np.abs(back_mr.get_fdata() - mr).max() <= 0.5 * 700 / 255 + 1e-3


def test_a_volume_past_the_budget_is_averaged_over_blocks_whose_centre_keeps_its_place():
    assert downsampling_factor((96, 112, 96)) == 1 and downsampling_factor((192, 224, 192)) == 2
    affine = np.array([[1.0, 0, 0, -90], [0, 1.0, 0, -120], [0, 0, 1.0, -70], [0, 0, 0, 1]])
    volume = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)
    small = page_volume(volume, affine, "intensity", "MR", budget=40)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(small.data))
    assert small.factor == 2 and image.shape == (4, 3, 2)
    block = volume[2:4, 4:6, 0:2]  # voxel (1, 2, 0) of the small volume
    assert image.get_fdata()[1, 2, 0] == pytest.approx(float(block.mean()), abs=float(volume.max()) / 255)
    centre = affine @ np.array([2.5, 4.5, 0.5, 1.0])  # the block's centre in mm
    assert np.allclose(image.affine @ np.array([1, 2, 0, 1.0]), centre)


def test_fidelity_gives_each_tissue_its_median_and_how_far_it_lies_outside_the_phantoms_range():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5] = 7  # grey matter: 38..44 HU in the phantoms
    labels[5:8] = 3  # cortical bone: 1400..1800 HU
    ct = np.where(labels == 7, 41.0, np.where(labels == 3, 1000.0, -1000.0))
    rows = {r["tissue"]: r for r in tissue_fidelity(ct, ct, labels, {0: "air", 3: "cortical_bone", 7: "grey_matter"})}
    assert set(rows) == {"grey_matter", "cortical_bone"}  # the air around the head is left out
    assert rows["grey_matter"]["ct_median"] == 41.0 and rows["grey_matter"]["outside_hu"] == 0.0
    assert rows["cortical_bone"]["outside_hu"] == -400.0 and rows["cortical_bone"]["share"] == 0.5


def test_the_translation_page_holds_five_synthetic_views_on_the_mr_grid_and_the_mae_against_the_ct(translated_phantom,
                                                                                                    tmp_path):
    write_report(translated_phantom["sct"], tmp_path / "t.html")
    text = (tmp_path / "t.html").read_text()
    volumes = volumes_of(text)
    mr, _ = read_volume(translated_phantom["phantom"] / "1BA001" / "mr.nii.gz")
    assert len(volumes) == 5 and all(v.shape == mr.shape for v in volumes)
    assert text.count('class="synthetic-mark"') == 5  # the phantom's MR and CT say SYNTHETIC too
    sct, _ = read_volume(translated_phantom["sct"])
    ct, _ = read_volume(translated_phantom["phantom"] / "1BA001" / "ct.nii.gz")
    mask, _ = read_volume(translated_phantom["phantom"] / "1BA001" / "mask.nii.gz")
    assert f"<td>{mae(sct, ct, mask > 0):.1f}</td>" in text
    assert np.array_equal(volumes[2].get_fdata(), ct)  # the CT view is the CT, HU for HU


def test_evaluate_mri2ct_report_flag_writes_the_metrics_and_the_reliability_diagram(translated_phantom, tmp_path, capsys):
    root = translated_phantom["root"]
    code = main(["evaluate", "mri2ct", "--pred", str(root / "sct"), "--ref", str(root / "phantom"), "--out",
                 str(tmp_path / "m.json"), "--report", str(tmp_path / "m.html")])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "m.html").read_text()
    assert "<td>1BA001</td>" in text and "mean of 1" in text and 'alt="reliability diagram"' in text
    assert len(volumes_of(text)) == 5


def test_the_data_set_page_has_the_fidelity_of_every_tissue_and_the_first_subjects_views(translated_phantom, tmp_path):
    line = write_report(translated_phantom["phantom"], tmp_path / "d.html")
    text = (tmp_path / "d.html").read_text()
    assert "1 subjects" in line and len(volumes_of(text)) == 3
    table = text.split("Per-tissue fidelity")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 9  # the header and the nine tissues of the head (not the air around it)

"""translate's sampling trajectory (``translate --trajectory-png``)."""
import numpy as np

from sci_diffusion.cli import main
from sci_diffusion_medical.translation.inputs import load_inputs
from sci_diffusion_medical.translation.model import load_translation_model, slice_geometry
from sci_diffusion_medical.translation.volume import slice_trajectory, translate_volume


def test_the_trajectory_ends_on_the_translated_slice(subject, residual_ckpt, tmp_path):
    """translate --trajectory-png: one frame per step, and the last estimate is the slice the volume got."""
    module = load_translation_model(residual_ckpt, device="cpu")
    inputs = load_inputs(subject["mr"], subject["mask"])
    geometry = slice_geometry(module)
    frames = slice_trajectory(module, inputs["mr"], inputs["mask"], "ddim", 3, seed=4, **geometry)
    volume = translate_volume(module, inputs["mr"], inputs["mask"], 1, "ddim", 3, seed=4, progress=False, **geometry)[0]
    occupied = np.nonzero(inputs["mask"].any(axis=(0, 1)))[0]
    middle = volume[:, :, occupied[len(occupied) // 2]]
    assert [f["step"] for f in frames] == [1, 2, 3]
    body = inputs["mask"][:, :, occupied[len(occupied) // 2]]
    assert np.allclose(frames[-1]["estimate"][body], middle[body], atol=1.0)
    assert not np.allclose(frames[0]["estimate"][body], middle[body], atol=1.0)
    png = tmp_path / "strip.png"
    assert main(["translate", "--mr", str(subject["mr"]), "--ckpt", str(residual_ckpt), "--steps", "2",
                 "--out", str(tmp_path / "sct.nii.gz"), "--trajectory-png", str(png)]) == 0
    assert png.stat().st_size > 1000

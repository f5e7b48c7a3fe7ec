"""The MRI->CT models and whole-volume translation: core DDIM against MONAI, fit, translate, regression."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion.names import SAMPLER_NAMES
from sci_diffusion.samplers import ddim_step
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion_medical.models.diffusion import MRItoCTDiffusion
from sci_diffusion_medical.models.regression import MRItoCTRegression
from sci_diffusion_medical.translation.inputs import load_inputs
from sci_diffusion_medical.translation.model import load_translation_model
from sci_diffusion_medical.translation.translate import translate_file
from sci_diffusion_medical.translation.volume import translate_volume


# ----- the core's DDIM step is MONAI's --------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("timestep", [500, 99, 0])
def test_ddim_step_matches_monai_scheduler(schedule, eta, timestep):
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(1000, schedule=schedule, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(10)  # MONAI steps from timestep k to k - 100; k - 100 < 0 means alpha_bar = 1
    sched = NoiseSchedule.from_alphas_cumprod(scheduler.alphas_cumprod)
    g = torch.Generator().manual_seed(timestep)
    x, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    expected, monai_x0 = scheduler.step(eps, timestep, x, eta=eta, generator=torch.Generator().manual_seed(1))

    # MONAI's discrete index k is the core's t = (k + 1) / T; a negative index is t = 0 (alpha_bar = 1).
    t, s = torch.tensor((timestep + 1) / 1000), torch.tensor(max(timestep - 100 + 1, 0) / 1000)
    a_t, s_t, a_s, s_s = (float(f(u)) for u, f in ((t, sched.alpha), (t, sched.sigma), (s, sched.alpha), (s, sched.sigma)))
    x0 = (x - s_t * eps) / a_t
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) if eta > 0 else None
    ours = ddim_step(x.double(), x0.double(), a_t, s_t, a_s, s_s, eta, None if noise is None else noise.double())
    torch.testing.assert_close(x0, monai_x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.float(), expected, atol=1e-5, rtol=0)


# ----- the model ------------------------------------------------------------------------------------
def test_diffusion_network_sees_mr_context_and_keeps_the_slice_shape():
    model = MRItoCTDiffusion(k=3, channels=(8, 16), attention_levels=(False, True), num_head_channels=8,
                             norm_num_groups=8).eval()
    for param in model.parameters():  # MONAI zero-initialises its output convolution
        if param.dim() > 1 and not param.any():
            torch.nn.init.normal_(param, std=0.1)
    x, mr = torch.randn(2, 1, 16, 24), torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        out = model(x, torch.tensor(0.3), None, mr)
        moved = model(x, torch.tensor(0.3), None, mr + 1.0)
    assert out.shape == (2, 1, 16, 24)
    assert not torch.allclose(out, moved)  # the condition reaches the network
    assert model.hparams.prediction == "v" and model.schedule.T == 1000


def test_regression_has_a_parameter_count_comparable_to_the_diffusion_model():
    diffusion, regression = MRItoCTDiffusion(), MRItoCTRegression()
    n_d = sum(p.numel() for p in diffusion.parameters())
    n_r = sum(p.numel() for p in regression.parameters())
    assert 0.75 < n_r / n_d < 1.33


def test_fitted_checkpoints_load_as_medical_modules(diffusion_ckpt, regression_ckpt):
    d, r = load_module(diffusion_ckpt, "medical"), load_module(regression_ckpt, "medical")
    assert isinstance(d, MRItoCTDiffusion) and isinstance(r, MRItoCTRegression)
    assert not d.training and r.deterministic


# ----- whole-volume translation ---------------------------------------------------------------------
def test_translate_cli_writes_synthetic_ct_std_sidecar_and_panel(subject, diffusion_ckpt, tmp_path):
    out, std, png = tmp_path / "sct.nii.gz", tmp_path / "sct_std.nii.gz", tmp_path / "panel.png"
    assert main(["translate", "--mr", str(subject["mr"]), "--mask", str(subject["mask"]),
                 "--ckpt", str(diffusion_ckpt), "--out", str(out), "--samples", "2", "--uncertainty", str(std),
                 "--steps", "2", "--png", str(png), "--ct", str(subject["ct"])]) == 0
    mr = nib.load(subject["mr"])
    sct = nib.load(out)
    assert sct.shape == mr.shape
    np.testing.assert_allclose(sct.affine, mr.affine)
    assert b"SYNTHETIC" in sct.header["descrip"].tobytes()
    mask = nib.load(subject["mask"]).get_fdata() > 0
    data = sct.get_fdata()
    assert np.all(data[~mask] == -1000.0)
    assert data[mask].min() >= -1024.0 and data[mask].max() <= 3000.0
    side = json.loads((tmp_path / "sct.json").read_text())
    for key, value in {"synthetic": True, "sampler": "ddim", "spacing": "uniform", "steps": 2, "seed": 0,
                       "samples": 2}.items():
        assert side[key] == value
    assert side["model"].endswith("MRItoCTDiffusion") and len(side["checkpoint_sha256"]) == 16
    s = nib.load(std).get_fdata()
    assert np.all(s[~mask] == 0) and s[mask].max() > 0
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_translation_does_not_depend_on_batch_size_and_repeats_with_the_seed(phantom_dir, diffusion_ckpt, sampler):
    """Every slice draws its starting noise and its sampler noise from its own generator: the same
    seed gives the same volume at any batch size (to 0.01 HU) and bit for bit at the same one."""
    module = load_translation_model(diffusion_ckpt, device="cpu")
    inp = load_inputs(phantom_dir / "1BA002" / "mr.nii.gz")  # no mask: derived from the MR
    x, y, z = inp["mr"].shape
    centre = (slice(x // 2 - 16, x // 2 + 16), slice(y // 2 - 16, y // 2 + 16), slice(z // 2 - 3, z // 2 + 4))
    mr, mask = inp["mr"][centre], inp["mask"][centre]  # 32 x 32 x 7 voxels inside the head: 7 slices
    assert mask.any(axis=(0, 1)).all()  # every slice has body in it
    run = lambda seed, batch_size: translate_volume(module, mr, mask, samples=2, sampler=sampler, steps=3,  # noqa: E731
                                                    seed=seed, batch_size=batch_size)
    a, b, c = run(3, 3), run(3, 64), run(4, 64)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-2)  # HU; float32 sums in another order
    assert np.array_equal(run(3, 3), a)
    assert np.abs(a - c).max() > 1.0 and np.abs(a[0] - a[1]).max() > 1.0  # other seed, other sample: other CT


def test_shared_noise_gives_identical_slices_their_identical_sample(diffusion_ckpt):
    """An MR that does not change along z: with one noise per sample its slices come out identical,
    with one noise per slice they do not; the K samples still differ from each other."""
    module = load_translation_model(diffusion_ckpt, device="cpu")
    g = np.random.default_rng(0)
    mr = np.repeat(g.uniform(0, 200, (32, 32, 1)).astype(np.float32), 5, axis=2)  # 5 equal axial slices
    mask = np.zeros(mr.shape, bool)
    mask[4:28, 4:28] = True
    shared = translate_volume(module, mr, mask, samples=2, steps=3, seed=1, shared_noise=True)
    own = translate_volume(module, mr, mask, samples=2, steps=3, seed=1)
    for z in range(1, 5):
        np.testing.assert_allclose(shared[:, :, :, z], shared[:, :, :, 0], rtol=0, atol=1e-3)
    assert np.abs(own[:, :, :, 1] - own[:, :, :, 0]).max() > 1.0
    assert np.abs(shared[0] - shared[1]).max() > 1.0


def test_regression_checkpoint_translates_once(subject, regression_ckpt, tmp_path):
    out = tmp_path / "sct.nii.gz"
    assert main(["translate", "--mr", str(subject["mr"]), "--ckpt", str(regression_ckpt), "--out", str(out)]) == 0
    side = json.loads((tmp_path / "sct.json").read_text())
    assert side["model"].endswith("MRItoCTRegression") and side["sampler"] is None and side["samples"] == 1
    assert b"SYNTHETIC" in nib.load(out).header["descrip"].tobytes()


@pytest.mark.parametrize("extra", [["--samples", "2"], ["--samples", "2", "--uncertainty", "std.nii.gz"]])
def test_regression_refuses_samples_and_uncertainty(subject, regression_ckpt, tmp_path, capsys, extra):
    code = main(["translate", "--mr", str(subject["mr"]), "--ckpt", str(regression_ckpt),
                 "--out", str(tmp_path / "sct.nii.gz"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "deterministic" in err
    assert not (tmp_path / "sct.nii.gz").exists()


def test_translation_is_the_same_for_a_volume_stored_in_another_orientation(subject, regression_ckpt, tmp_path):
    img = nib.load(subject["mr"])
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1  # voxel i -> n-1-i: the same anatomy stored left-to-right reversed (LAS)
    las = nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine @ flip)
    nib.save(las, tmp_path / "mr_las.nii.gz")
    for name, mr in (("ras", subject["mr"]), ("las", tmp_path / "mr_las.nii.gz")):
        assert main(["translate", "--mr", str(mr), "--ckpt", str(regression_ckpt),
                     "--out", str(tmp_path / f"{name}.nii.gz")]) == 0
    ras, las_out = nib.load(tmp_path / "ras.nii.gz"), nib.load(tmp_path / "las.nii.gz")
    np.testing.assert_allclose(las_out.affine, las.affine)
    np.testing.assert_allclose(las_out.get_fdata()[::-1], ras.get_fdata(), atol=1e-3)


def test_datamodule_writes_missing_phantoms_and_splits_by_patient(tmp_path):
    from sci_diffusion_medical.data.datamodule import MRItoCTDataModule, split_patients

    dm = MRItoCTDataModule(root=str(tmp_path / "new"), phantom_subjects=3, phantom_spacing_mm=8.0, val_subjects=1,
                           batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_ids) == 1 and not set(dm.val_ids) & set(dm.train_ids)
    assert sorted(dm.train_ids + dm.val_ids) == ["1BA001", "1BA002", "1BA003"]
    assert {dm.train_set.ids[v] for v, _ in dm.train_set.index} == set(dm.train_ids)
    batch = next(iter(dm.train_dataloader()))
    assert batch["mr"].shape[:2] == (2, 3) and batch["ct"].shape[1] == 1
    assert split_patients(["b", "a", "c"], 1, seed=5) == split_patients(["a", "b", "c"], 1, seed=5)


def test_translate_takes_the_models_own_step_count_unless_told(subject, diffusion_ckpt, tmp_path):
    module = load_translation_model(diffusion_ckpt, device="cpu")
    assert module.hparams.val_steps == 1  # the fixture's config
    mr, mask = subject["mr"], subject["mask"]
    own = translate_file(mr, tmp_path / "a.nii.gz", mask=mask, module=module, progress=False, shared_noise=True)
    told = translate_file(mr, tmp_path / "b.nii.gz", mask=mask, module=module, steps=2, progress=False)
    assert (own["steps"], own["shared_noise"]) == (1, True)
    assert (told["steps"], told["shared_noise"]) == (2, False)

"""The labels-first 3-D latent generator (issue 31): whole volumes on one grid, their augmented copies, the two
autoencoders, the two latent stages, and what ``synthesize medical`` writes from it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion_medical.data.pairs import find_synthrad_pairs
from sci_diffusion_medical.data.phantom_v2 import write_phantom_dataset_v2
from sci_diffusion_medical.data.volumes import augmented_copy, load_paired_volumes
from sci_diffusion_medical.io.nifti import MedicalInputError
from sci_diffusion_medical.models.latent_synthesis import LatentVolumeSynthesis
from sci_diffusion_medical.models.synthesis import subject_generator
from sci_diffusion_medical.models.volume_autoencoder import kl_divergence

from .conftest import run_expecting_error, tiny_fit

FIT = ["--data.val_subjects=1", "--trainer.max_steps=2", "--trainer.enable_model_summary=false", "--trainer.max_epochs=1"]
AUTOENCODER = [*FIT, "--model.channels=[8,8]", "--model.latent_channels=2", "--model.norm_num_groups=4",
               "--data.crop=16", "--data.crops_per_epoch=4", "--data.batch_size=2", "--trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory) -> Path:
    """Two phantom v2 heads at 4 mm (of different heights); treat as read-only."""
    root = tmp_path_factory.mktemp("phantom_v2")
    write_phantom_dataset_v2(root, subjects=2, spacing_mm=4.0, seed=0)
    return root


@pytest.fixture(scope="module")
def autoencoders(v2_dir, tmp_path_factory) -> dict[str, Path]:
    """2-step labels and images autoencoders (channels 8, 8: downsampling 2; 2 latent channels) fitted through the CLI."""
    return {kind: tiny_fit(f"volume_autoencoder_{kind}.yaml", v2_dir, tmp_path_factory.mktemp(f"fit_ae_{kind}"),
                           AUTOENCODER, base=[]) for kind in ("labels", "images")}


@pytest.fixture(scope="module")
def latent_ckpt(v2_dir, autoencoders, tmp_path_factory) -> Path:
    """A 2-step LatentVolumeSynthesis (U-Nets 8, 16) on the tiny autoencoders, fitted through the CLI; the
    autoencoder files it was made from are deleted afterwards (the model must not need them)."""
    copies = tmp_path_factory.mktemp("ae_copies")
    paths = {k: shutil.copy(p, copies / f"{k}.ckpt") for k, p in autoencoders.items()}
    ckpt = tiny_fit("latent_synthesis.yaml", v2_dir, tmp_path_factory.mktemp("fit_latent"), [
        *FIT, f"--model.label_autoencoder={paths['labels']}", f"--model.image_autoencoder={paths['images']}",
        "--model.channels=[8,16]", "--model.attention_levels=[false,false]", "--model.num_head_channels=8",
        "--model.copies=2", "--data.batch_size=2"], base=[])
    shutil.rmtree(copies)
    return ckpt


@pytest.fixture(scope="module")
def latent_model(latent_ckpt) -> LatentVolumeSynthesis:
    return load_module(latent_ckpt, domain="medical")


# ----- volumes on one grid -----------------------------------------------------------------------------
def test_heads_of_different_heights_share_one_grid_with_their_world_positions_kept(v2_dir):
    pairs = find_synthrad_pairs(v2_dir)
    volumes = load_paired_volumes(pairs, classes=13, spacing_mm=4.0, divisible=16)
    originals = [nib.load(p["labels"]) for p in pairs]
    heights = [o.shape[2] for o in originals]
    assert heights[0] != heights[1]  # the padding has work to do
    assert all(n % 16 == 0 for n in volumes.grid["shape"]) and list(volumes.labels.shape[1:]) == volumes.grid["shape"]
    assert volumes.grid["shape"][2] >= max(heights)
    for i, original in enumerate(originals):
        labels = np.asarray(original.dataobj).astype(np.int64)
        x0 = (volumes.grid["shape"][0] - labels.shape[0]) // 2
        y0 = (volumes.grid["shape"][1] - labels.shape[1]) // 2
        placed = volumes.labels[i].numpy()
        region = placed[x0:x0 + labels.shape[0], y0:y0 + labels.shape[1], :labels.shape[2]]
        assert np.array_equal(region, labels)  # the neck stays on the bottom slice
        assert placed.sum() == labels.sum()  # only background was added
        padding = np.ones(placed.shape, bool)
        padding[x0:x0 + labels.shape[0], y0:y0 + labels.shape[1], :labels.shape[2]] = False
        assert torch.all(volumes.images[i][:, torch.from_numpy(padding)] == -1)
    grid_affine = np.asarray(volumes.grid["affine"])
    x0 = (volumes.grid["shape"][0] - originals[0].shape[0]) // 2
    y0 = (volumes.grid["shape"][1] - originals[0].shape[1]) // 2
    # padded voxel (x0, y0, 0) is the first subject's voxel (0, 0, 0): the same point in the world
    assert np.allclose(grid_affine @ [x0, y0, 0, 1], originals[0].affine @ [0, 0, 0, 1], atol=1e-4)


def test_an_augmented_copy_without_motion_is_the_subject_or_its_mirror(v2_dir):
    volumes = load_paired_volumes(find_synthrad_pairs(v2_dir), classes=13)
    image, labels = volumes.images[0], volumes.labels[0]
    seen = set()
    for seed in range(6):
        copy, copy_labels = augmented_copy(image, labels, np.random.default_rng(seed), degrees=0, shift_voxels=0,
                                           scale=0)
        mirrored = bool(torch.equal(copy_labels, labels.flip(0)))
        assert mirrored or torch.equal(copy_labels, labels)
        assert torch.allclose(copy, image.flip(1) if mirrored else image, atol=1e-4)
        seen.add(mirrored)
    assert seen == {True, False}
    moved, moved_labels = augmented_copy(image, labels, np.random.default_rng(0))
    assert not torch.equal(moved_labels, labels) and moved.shape == image.shape
    assert abs(int((moved_labels > 0).sum()) / int((labels > 0).sum()) - 1) < 0.25  # a head of about the same size


def test_the_kl_term_is_the_gaussian_kl_divergence():
    mu, sigma = torch.randn(2, 3, 2, 2, 2), torch.rand(2, 3, 2, 2, 2) + 0.5
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0, 1))
    assert torch.allclose(kl_divergence(mu, sigma), exact.flatten(1).sum(1).mean(), atol=1e-5)


def test_a_label_guided_decoder_draws_its_edges_from_the_label_map(latent_model, v2_dir):
    """The images autoencoder of the default configuration sees the labels as it decodes: the same latent decoded
    with another label map gives other images, and without a label map it refuses."""
    images = latent_model.autoencoders["images"]
    assert images.hparams.label_guided
    volumes = load_paired_volumes(find_synthrad_pairs(v2_dir), classes=13)
    with torch.no_grad():
        z = images.encode(volumes.images[:1])
        own, other = images.decode(z, volumes.labels[:1]), images.decode(z, volumes.labels[1:2])
    assert not torch.allclose(own, other)
    with pytest.raises(ValueError, match="needs the label maps"):
        images.decode(z)


# ----- the two stages ----------------------------------------------------------------------------------
def test_the_first_training_copy_is_the_subject_itself(latent_model, v2_dir):
    volumes = load_paired_volumes(find_synthrad_pairs(v2_dir), classes=13)
    latents = latent_model.encode_copies(volumes, copies=2)
    assert latents.tensors[0].shape[0] == 4
    own = [latent_model.encode_labels(volumes.labels[:1])[0], latent_model.autoencoders["images"].encode(volumes.images[:1])[0]]
    for encoded, alone in zip(latents.tensors, own):  # equal up to the convolutions' batch-size-dependent rounding
        assert (encoded[0] - alone).abs().max() < 0.01 * alone.abs().max()
        assert (encoded[1] - alone).abs().max() > 0.1 * alone.abs().max()  # the second is an augmented copy


def test_the_images_stage_sees_its_label_map(latent_model):
    shape = [n // latent_model.autoencoders["images"].downsampling for n in latent_model.padded_shape()]
    x = torch.randn(1, latent_model.latent_widths["images"], *shape)
    cond = torch.randn(1, latent_model.latent_widths["labels"], *shape)
    t = torch.tensor(0.5)
    with torch.no_grad():
        one, other = latent_model(x, t, cond, "images"), latent_model(x, t, -cond, "images")
        null = latent_model(x, t, None, "images")
    assert not torch.allclose(one, other)
    assert torch.allclose(null, latent_model(x, t, torch.zeros_like(cond), "images"))  # None is the dropped condition


def test_a_users_label_map_is_kept_and_the_subject_depends_on_its_seed_only(latent_model, v2_dir):
    volumes = load_paired_volumes(find_synthrad_pairs(v2_dir), classes=13)
    assert volumes.grid["shape"] == latent_model.padded_shape()
    given = volumes.labels[0]
    subject = latent_model.sample_volume(subject_generator(0, 1), steps=2, sampler="ddim", labels=given)
    assert np.array_equal(subject["labels"], given.numpy())
    assert np.all(subject["ct"][given.numpy() == 0] == -1000) and np.all(subject["mr"][given.numpy() == 0] == -1)
    again = latent_model.sample_volume(subject_generator(0, 1), steps=2, sampler="ddim", labels=given)
    other = latent_model.sample_volume(subject_generator(0, 2), steps=2, sampler="ddim", labels=given)
    assert np.array_equal(again["ct"], subject["ct"]) and not np.array_equal(other["ct"], subject["ct"])


def test_synthesize_writes_a_marked_3d_latent_set_on_the_models_grid(latent_ckpt, latent_model, tmp_path):
    out = tmp_path / "set"
    assert main(["synthesize", "medical", "--num", "2", "--out", str(out), "--seed", "1", "--steps", "2",
                 "--sampler", "ddim", "--ckpt", str(latent_ckpt), "--format", "nnunet"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    nnunet = json.loads(next((out / "nnunet").glob("*/dataset.json")).read_text())
    assert nnunet["labels"]["mastoid_air"] == 12 and len(nnunet["labels"]) == 13  # the v2 tissue table travels
    assert "3-D latent" in meta["noise"] and "LatentVolumeSynthesis" in meta["generator"]
    assert meta["tissue_labels"]["12"] == "mastoid_air" and meta["generated_shape"] == latent_model.padded_shape()
    for pid in meta["subjects"]:
        ct, labels = (nib.load(out / pid / f"{k}.nii.gz") for k in ("ct", "labels"))
        assert list(ct.shape) == latent_model.padded_shape()
        assert np.allclose(ct.affine, latent_model.hparams.grid["affine"])
        body = np.asarray(labels.dataobj) > 0
        assert np.all(np.asarray(ct.dataobj)[~body] == -1000)


def test_a_latent_model_needs_trained_autoencoders_of_the_right_kind(autoencoders, capsys):
    with pytest.raises(MedicalInputError, match="needs trained autoencoders"):
        LatentVolumeSynthesis()
    with pytest.raises(MedicalInputError, match="does not hold a labels VolumeAutoencoder"):
        LatentVolumeSynthesis(label_autoencoder=str(autoencoders["images"]), image_autoencoder=str(autoencoders["images"]))
    err = run_expecting_error(["synthesize", "medical", "--num", "1", "--out", "/tmp/never_written",
                               "--ckpt", str(autoencoders["labels"])], capsys)
    assert "not a paired synthesis model" in err


def test_synthesize_draws_mr_and_ct_for_a_users_own_label_maps(latent_ckpt, latent_model, v2_dir, tmp_path, capsys):
    """``--labels DIR``: one subject per label map, which is written back as given (placed on the model's grid),
    its sidecars naming the file; bad requests are refused in one sentence."""
    out = tmp_path / "own"
    assert main(["synthesize", "medical", "--labels", str(v2_dir), "--out", str(out), "--steps", "2",
                 "--sampler", "ddim", "--guidance", "2", "--ckpt", str(latent_ckpt)]) == 0
    capsys.readouterr()  # the progress bar
    volumes = load_paired_volumes(find_synthrad_pairs(v2_dir), classes=13)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["subjects"] == ["1BS001", "1BS002"] and meta["guidance"] == 2
    for i, pid in enumerate(meta["subjects"]):
        written = np.asarray(nib.load(out / pid / "labels.nii.gz").dataobj)
        assert np.array_equal(written, volumes.labels[i].numpy())
        sidecar = json.loads((out / pid / "ct.json").read_text())
        assert sidecar["labels_from"] == str(v2_dir / volumes.ids[i] / "labels.nii.gz")
    err = run_expecting_error(["synthesize", "medical", "--labels", str(v2_dir), "--num", "3", "--out",
                               str(tmp_path / "x"), "--ckpt", str(latent_ckpt)], capsys)
    assert "more subjects than the 2 label maps" in err
    err = run_expecting_error(["synthesize", "medical", "--labels", str(v2_dir), "--out", str(tmp_path / "y"),
                               "--model", "slice"], capsys)
    assert "need a 3-D latent generator" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    image = nib.load(v2_dir / volumes.ids[0] / "labels.nii.gz")
    nib.save(nib.Nifti1Image(np.full(image.shape, 20, np.uint8), image.affine), bad / "a.nii.gz")
    err = run_expecting_error(["synthesize", "medical", "--labels", str(bad), "--out", str(tmp_path / "z"), "--ckpt",
                               str(latent_ckpt)], capsys)
    assert "outside 0..12" in err and not (tmp_path / "z" / "dataset.json").exists()

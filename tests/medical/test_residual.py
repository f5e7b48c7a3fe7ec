"""Residual (CorrDiff-style) MRI->CT diffusion, and the MR intensity augmentation it trains with."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sci_diffusion.checkpoints import load_module, read_checkpoint
from sci_diffusion.generators import PerSampleGenerator, per_sample_seeds
from sci_diffusion_medical.data.transforms import augment_mr, mr_intensity_augmentation, unit_to_ct
from sci_diffusion_medical.models.regression import MRItoCTRegression
from sci_diffusion_medical.models.residual import MRItoCTResidualDiffusion, laplace_scale_nll
from sci_diffusion_medical.translation.volume import model_slices, translate_volume


def _tiny_residual(regression_ckpt, **kwargs) -> MRItoCTResidualDiffusion:
    return MRItoCTResidualDiffusion(regression_ckpt=str(regression_ckpt), channels=(8, 16), attention_levels=(False, True),
                                    num_head_channels=8, norm_num_groups=8, **kwargs).eval()


def test_the_residual_model_carries_its_frozen_regression(regression_ckpt, residual_ckpt):
    regression = load_module(regression_ckpt)
    residual = load_module(residual_ckpt)  # rebuilt from the residual checkpoint alone
    assert isinstance(residual, MRItoCTResidualDiffusion)
    assert read_checkpoint(residual_ckpt)["sci_diffusion"]["config"]["regression"] == {
        "k": 3, "channels": [8, 16], "num_res_units": 1}
    mr = torch.rand(2, 3, 48, 48) * 2 - 1
    torch.testing.assert_close(residual.regression_mean(mr), regression.synthesise(mr), rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in residual.regression.parameters())
    residual.train()
    assert not residual.regression.training  # frozen: stays in eval mode


def test_a_zero_residual_gives_exactly_the_regression_model(regression_ckpt):
    """x0-prediction with a zeroed output layer predicts a zero residual at every step."""
    model = _tiny_residual(regression_ckpt, prediction="x0")
    for param in model.net.out.parameters():
        torch.nn.init.zeros_(param)
    regression = load_module(regression_ckpt)
    mr = torch.rand(3, 3, 32, 48) * 2 - 1
    for sampler in ("ddim", "dpmpp2m"):
        out = model.synthesise(mr, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, regression.synthesise(mr), rtol=0, atol=1e-6)


def test_the_diffused_state_is_the_scaled_residual(regression_ckpt):
    model = _tiny_residual(regression_ckpt, residual_scale=0.25)
    ct, mr = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    b = model.prepare_batch({"ct": ct, "mr": mr, "mask": torch.ones_like(ct)})
    mean = model.regression_mean(mr)
    torch.testing.assert_close(b.x0, (ct - mean) / 0.25)
    torch.testing.assert_close(b.context, torch.cat([mr, mean], 1))
    assert model.net.conv_in.conv.in_channels == 1 + 3 + 1  # x_t, k MR slices, the mean
    assert torch.isfinite(model.loss_fn(model, b)) and model.loss_fn(model, b) > 0


def test_samples_spread_around_the_regression_mean(regression_ckpt, residual_ckpt, head_2mm):
    mr, _, mask, _, _ = head_2mm
    residual = load_module(residual_ckpt)
    sub = (slice(None), slice(None), slice(40, 43))  # three axial slices keep it fast
    out = translate_volume(residual, mr[sub], mask[sub], samples=2, steps=3, seed=1, axis="axial")
    assert out.shape == (2, *mr[sub].shape)
    inside = mask[sub] > 0
    assert np.abs(out[0] - out[1])[inside].mean() > 0  # the samples differ ...
    assert (out[:, ~inside] == -1000).all()  # ... and the background is air


def test_a_residual_model_refuses_a_checkpoint_that_is_not_a_regression(diffusion_ckpt):
    with pytest.raises(ValueError, match="not an MRItoCTRegression"):
        MRItoCTResidualDiffusion(regression_ckpt=str(diffusion_ckpt))
    with pytest.raises(ValueError, match="regression_ckpt"):
        MRItoCTResidualDiffusion()


# ----- MR intensity augmentation ----------------------------------------------------------------
def test_mr_augmentation_changes_the_signal_and_keeps_the_conventions():
    g = torch.Generator().manual_seed(0)
    stack = torch.rand(3, 40, 48, generator=g) * 1.6 - 0.8
    stack[:, :8] = -1.0  # outside the body
    augment = mr_intensity_augmentation(prob=1.0, seed=3)
    out = augment_mr(stack, augment)
    assert out.shape == stack.shape and out.dtype == stack.dtype
    assert (out[:, :8] == -1.0).all()
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert (out - stack)[:, 8:].abs().mean() > 0.05
    again = augment_mr(stack, mr_intensity_augmentation(prob=1.0, seed=3))
    torch.testing.assert_close(out, again)  # seeded
    torch.testing.assert_close(augment_mr(stack, mr_intensity_augmentation(prob=0.0)), stack, rtol=0, atol=1e-6)


def test_only_training_slices_are_augmented(phantom_dir):
    from sci_diffusion_medical.data.datamodule import MRItoCTDataModule

    dm = MRItoCTDataModule(root=str(phantom_dir), val_subjects=1, crop_size=None, mr_augmentation=1.0)
    dm.setup("fit")
    plain = MRItoCTDataModule(root=str(phantom_dir), val_subjects=1, crop_size=None)
    plain.setup("fit")
    assert dm.train_set.augment is not None and dm.val_set.augment is None
    assert not torch.equal(dm.train_set[5]["mr"], plain.train_set[5]["mr"])
    assert torch.equal(dm.val_set[5]["mr"], plain.val_set[5]["mr"])
    with pytest.raises(ValueError, match="probability"):
        MRItoCTDataModule(root=str(phantom_dir), mr_augmentation=1.5)


def test_the_regression_network_is_shared_by_both_models():
    assert isinstance(MRItoCTRegression(channels=(8, 16), num_res_units=1).net, torch.nn.Module)


def test_the_residual_estimate_keeps_the_ct_in_range(regression_ckpt):
    model = _tiny_residual(regression_ckpt, prediction="x0", residual_scale=0.2)
    for param in model.net.out.parameters():
        torch.nn.init.constant_(param, 0.0)
    torch.nn.init.constant_(model.net.out[-1].conv.bias, 50.0)  # an absurd residual estimate everywhere
    mr = torch.rand(2, 3, 32, 32) * 2 - 1
    mean = model.regression_mean(mr)
    x0 = model.residual_denoiser(mr, mean, model.residual_scale_map(mr))(torch.randn(2, 1, 32, 32), torch.tensor(0.5))
    torch.testing.assert_close(mean + 0.2 * x0, torch.ones_like(mean))  # clipped where the CT reaches +1


# ----- heteroscedastic residuals (scale_channels) -----------------------------------------------------
def test_the_laplace_scale_loss_is_smallest_at_sqrt2_times_the_mean_absolute_error():
    error = torch.distributions.Laplace(0.0, 0.03).sample((4, 1, 16, 16))
    mask = (torch.rand(4, 1, 16, 16) > 0.3).float()
    best = math.sqrt(2.0) * float(error.abs()[mask.bool()].mean())
    scales = torch.linspace(0.2 * best, 3.0 * best, 281)
    losses = torch.stack([laplace_scale_nll(error, torch.full_like(error, float(s)), mask) for s in scales])
    assert float(scales[losses.argmin()]) == pytest.approx(best, rel=0.02)


def test_a_heteroscedastic_residual_is_diffused_in_units_of_its_scale_map(regression_ckpt):
    model = _tiny_residual(regression_ckpt, residual_scale=0.1, scale_channels=(8, 16))
    ct, mr = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    b = model.prepare_batch({"ct": ct, "mr": mr, "mask": torch.ones_like(ct)})
    mean = model.regression_mean(mr)
    scale = model.residual_scale_map(torch.cat([mr, mean], 1))
    assert scale.shape == ct.shape and not torch.allclose(scale, scale.mean().expand_as(scale))  # a map, not one number
    torch.testing.assert_close(b.x0, (ct - mean) / scale)
    torch.testing.assert_close(b.scale, scale)
    assert b.scale.requires_grad and not b.x0.requires_grad  # the diffusion loss does not train the scale
    model.loss_fn(model, b).backward()
    assert all(p.grad is not None for p in model.scale_net.parameters())  # the scale trains beside the network
    for param in model.net.out.parameters():  # a zero residual still gives exactly the regression
        torch.nn.init.zeros_(param)
    model.hparams.prediction = "x0"
    torch.testing.assert_close(model.synthesise(mr, steps=3), model.regression_mean(mr), rtol=0, atol=1e-6)


def test_the_scale_map_learns_where_the_regression_errs(regression_ckpt):
    """Errors 20 times larger in the right half of every slice (marked by the MR): the learnt scale follows."""
    torch.manual_seed(0)
    model = _tiny_residual(regression_ckpt, scale_channels=(8, 16)).train()
    opt = torch.optim.Adam(model.scale_net.parameters(), lr=1e-2)
    for _ in range(300):
        mr = torch.rand(4, 3, 32, 32) * 2 - 1
        mr[..., 16:] += 2.0  # the MR shows which half errs
        noise = torch.randn(4, 1, 32, 32) * 0.005
        noise[..., 16:] *= 20
        ct = model.regression_mean(mr) + noise
        b = model.prepare_batch({"ct": ct, "mr": mr, "mask": torch.ones_like(ct)})
        loss = laplace_scale_nll(b.x0 * b.scale.detach(), b.scale, b.mask)  # the batch carries the map with its gradient
        opt.zero_grad(); loss.backward(); opt.step()  # noqa: E702
    with torch.no_grad():
        scale = model.residual_scale_map(b.context)
    left, right = float(scale[..., :16].median()), float(scale[..., 16:].median())
    expected = 2 / math.sqrt(math.pi)  # sqrt(2) E|e| / std for Gaussian errors
    assert left == pytest.approx(0.005 * expected, rel=0.25) and right == pytest.approx(0.1 * expected, rel=0.25)


def test_a_new_residual_model_can_start_from_the_regression_inside_a_residual_checkpoint(regression_ckpt, residual_ckpt):
    from_regression, from_residual = _tiny_residual(regression_ckpt), _tiny_residual(residual_ckpt)
    mr = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(from_residual.regression_mean(mr), from_regression.regression_mean(mr), rtol=0, atol=1e-5)


def test_k_samples_at_once_are_the_k_samples_drawn_one_by_one(regression_ckpt):
    """``synthesise_samples`` computes the mean and scale map once; each sample is still what ``synthesise`` draws
    with its generator, and ``translate_volume`` gives sample j of slice i the seed it documents (j * n + i)."""
    model = _tiny_residual(regression_ckpt, scale_channels=(8, 16))
    with torch.no_grad():
        for param in model.scale_net.parameters():  # a scale map that varies from voxel to voxel
            param.add_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(0)))
    mr, mask = torch.rand(3, 3, 32, 32) * 2 - 1, (torch.rand(3, 1, 32, 32) > 0.2).float()
    seeds = [[1, 2, 3], [4, 5, 6]]
    together = model.synthesise_samples(mr, [PerSampleGenerator(s, "cpu") for s in seeds], sampler="ddpm", steps=3, mask=mask)
    for s, sample in zip(seeds, together):
        alone = model.synthesise(mr, sampler="ddpm", steps=3, generator=PerSampleGenerator(s, "cpu"), mask=mask)
        torch.testing.assert_close(sample, alone, rtol=0, atol=1e-6)
    assert (together[0] - together[1]).abs().max() > 1e-3

    volume_mr = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    volume_mask = np.ones((32, 32, 3))
    out = translate_volume(model, volume_mr, volume_mask, samples=2, sampler="ddpm", steps=3, seed=7, axis="axial")
    seeds = per_sample_seeds(torch.Generator().manual_seed(7), 2 * 3)  # sample j, slice i: seeds[j * 3 + i]
    stacks, bodies, *_ = model_slices(model, volume_mr, volume_mask, 2)
    second = model.synthesise(stacks, sampler="ddpm", steps=3, generator=PerSampleGenerator(seeds[3:], "cpu"), mask=bodies)
    np.testing.assert_allclose(out[1], unit_to_ct(second[:, 0]).numpy().transpose(1, 2, 0), atol=0.05)

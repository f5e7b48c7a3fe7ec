"""Crop-trained models translate whole slices through MONAI's SlidingWindowInferer, in crop-sized windows."""
from __future__ import annotations

import numpy as np
import torch

from sci_diffusion_medical.models.diffusion import MRItoCTDiffusion
from sci_diffusion_medical.models.regression import MRItoCTRegression
from sci_diffusion_medical.translation.volume import translate_volume


class TimeTimesFirstChannel(torch.nn.Module):
    """A pointwise stand-in for the U-Net: ``x[:, :1] * t + x[:, 1:].sum(1)``, recording input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.scale * (x[:, :1] * timesteps.view(-1, 1, 1, 1) / 1000 + x[:, 1:].sum(1, keepdim=True))


def test_windows_give_a_pointwise_network_the_whole_slice_answer_with_each_slice_time():
    model = MRItoCTDiffusion(k=3, channels=(8, 16), attention_levels=(False, False), num_head_channels=8,
                             norm_num_groups=8).eval()
    model.net = TimeTimesFirstChannel()
    x, mr = torch.randn(3, 1, 40, 56), torch.randn(3, 3, 40, 56)
    t = torch.tensor([0.1, 0.5, 0.9])  # one time per slice
    with torch.no_grad():
        whole = model(x, t, None, mr)
        with model.sliding_window((16, 16)):
            windowed = model(x, t, None, mr)
    torch.testing.assert_close(windowed, whole, rtol=0, atol=1e-5)
    assert set(model.net.sizes[1:]) == {(16, 16)}  # after the whole-slice call, only crop-sized windows
    assert model.window is None  # restored on leaving the block


def test_a_crop_trained_regression_translates_a_volume_in_windows():
    model = MRItoCTRegression(k=3, channels=(8, 16), num_res_units=1).eval()
    sizes = []
    model.net.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    g = np.random.default_rng(0)
    mr = g.uniform(0, 200, (48, 64, 4)).astype(np.float32)
    mask = np.zeros(mr.shape, bool)
    mask[4:44, 4:60] = True
    windowed = translate_volume(model, mr, mask, min_size=(32, 32))
    assert sizes and set(sizes) == {(32, 32)}
    sizes.clear()
    whole = translate_volume(model, mr, mask)  # a whole-slice model sees the whole (padded) slice
    assert set(sizes) == {(48, 64)}
    assert windowed.shape == whole.shape and np.isfinite(windowed).all()

"""The denoising network every medical diffusion model shares: MONAI's 2-D ``DiffusionModelUNet``.

``MRItoCTDiffusion`` (and the residual model) and ``PairedSliceSynthesis`` differ only in what goes in and
out: the CT slice and its k MR slices (and the regression mean), or the joint MR / CT / label-bit state
and the slice height. ``DiffusionUNet`` builds the network from the module's size hyperparameters and
turns the core's time into MONAI's timesteps; the subclass says how many channels go in and out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor


def check_unet_size(channels: Sequence[int], attention_levels: Sequence[bool]) -> None:
    """Refuse a U-Net size that MONAI would not build: one attention flag per level.

    MONAI itself checks that every channel count is divisible by ``norm_num_groups`` and
    ``num_head_channels`` when the network is built.
    """
    if len(channels) != len(attention_levels):
        raise ValueError("channels and attention_levels must have the same length.")


def monai_timesteps(t: Tensor, x_t: Tensor, steps: int) -> Tensor:
    """MONAI's ``timesteps`` ``(B,)`` float32 for the core's time ``t`` in [0, 1] (0-d or ``(B,)``) of a batch
    ``x_t (B, ...)``: ``t * T`` (``steps`` = T, the schedule's)."""
    t = t.to(x_t.device, torch.float32)
    return (t.expand(x_t.shape[0]) if t.dim() == 0 else t) * steps


class DiffusionUNet:
    """A mixin (before the core's ``DiffusionModule``) for a model whose network is a 2-D MONAI
    ``DiffusionModelUNet`` sized by the hyperparameters ``channels``, ``attention_levels``,
    ``num_res_blocks``, ``num_head_channels`` and ``norm_num_groups``. The subclass gives
    ``unet_channels``, the network's ``(in_channels, out_channels)``. The network is the module's
    ``net``, so checkpoints keep their ``net.*`` state-dict keys."""

    @property
    def unet_channels(self) -> tuple[int, int]:
        raise NotImplementedError("A DiffusionUNet model says how many channels its U-Net takes and gives.")

    def build_network(self) -> torch.nn.Module:
        h = self.hparams
        check_unet_size(h.channels, h.attention_levels)
        in_channels, out_channels = self.unet_channels
        return DiffusionModelUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(h.channels),
            attention_levels=tuple(h.attention_levels), num_res_blocks=h.num_res_blocks,
            num_head_channels=h.num_head_channels, norm_num_groups=h.norm_num_groups,
        )

    def unet_timesteps(self, t: Tensor, x_t: Tensor) -> Tensor:
        """MONAI's ``timesteps`` for this model's schedule (:func:`monai_timesteps`)."""
        return monai_timesteps(t, x_t, self.schedule.T)

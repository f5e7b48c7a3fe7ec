"""Tissue labels as analog bits (Chen et al. 2022, "Analog Bits"), so a diffusion model can denoise them.

Class c is written as the B = ceil(log2(classes)) bits of c, each as -1 or +1, and read back as the
nearest valid codeword (``bits_to_labels``). ``models.synthesis.PairedSliceSynthesis`` diffuses them
beside the MR and CT of a slice (``paired_slices.PairedVolumeSlices`` writes them).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def label_bit_count(classes: int) -> int:
    """Bits needed for ``classes`` labels (10 tissue classes: 4)."""
    if classes < 2:
        raise ValueError(f"A label map needs at least 2 classes, got {classes}.")
    return max(1, math.ceil(math.log2(classes)))


def label_codewords(classes: int) -> Tensor:
    """``(classes, B)`` float32: row c holds the bits of c (least significant first) as -1 / +1."""
    bits = label_bit_count(classes)
    c = torch.arange(classes).unsqueeze(1)
    return ((c >> torch.arange(bits)) & 1).float() * 2.0 - 1.0


def labels_to_bits(labels: Tensor, classes: int) -> Tensor:
    """Integer labels ``(..., H, W)`` in ``[0, classes)`` -> analog bits ``(..., B, H, W)`` in {-1, +1}."""
    codes = label_codewords(classes).to(labels.device)
    return codes[labels.long()].movedim(-1, -3)


def bits_to_labels(bits: Tensor, classes: int) -> Tensor:
    """Analog bits ``(..., B, H, W)`` -> labels ``(..., H, W)`` int64: the nearest valid codeword.

    All codewords have the same length, so the nearest one has the largest dot product; a bit pattern
    of no class (10..15 for 10 classes) goes to its nearest class instead of out of range.
    """
    codes = label_codewords(classes).to(bits)
    return torch.einsum("...bhw,cb->...chw", bits, codes).argmax(dim=-3)

"""The one rule that turns a mask volume into body / not body, used by training, ``translate`` and the metrics.

A mask file may hold 0/1, 0/255, booleans, or fractions (a mask resampled linearly by another tool, a
probability map). Every part of the package reads it the same way, ``mask > 0.5``: the threshold that
MONAI's ``AsDiscrete(threshold=0.5)`` and nearest-neighbour resampling of a 0/1 mask agree with, and the
one that keeps a voxel only when more than half of it is body. (Issue 30: training used > 0.5 while
``translate`` and the metrics used > 0, so a fractional mask gave the model one body and the metrics another.)
"""
from __future__ import annotations

from typing import Any

import numpy as np

MASK_THRESHOLD = 0.5  # a voxel is body when its mask value is above this


def binary_mask(mask: Any) -> Any:
    """Body voxels of a mask of any shape: ``mask > 0.5``, bool, a numpy array or a torch tensor like its input
    (anything else array-like, a list, comes back as a numpy array). Torch is not imported here: a tensor compares
    itself."""
    if not hasattr(mask, "shape"):
        mask = np.asarray(mask)
    return mask > MASK_THRESHOLD

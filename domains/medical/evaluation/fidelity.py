"""Per-tissue fidelity of a synthetic (or phantom) subject: does each tissue's CT fall where that tissue's
Hounsfield units lie in the phantoms the generator learnt from (``data.phantom.TISSUE_CT_HU``)?

The median is taken, not the mean: at 2-4 mm, partial volume pulls a thin layer's voxels (cortical bone,
CSF) towards their neighbours, which moves the mean more than the median.
"""
from __future__ import annotations

import numpy as np

from ..data.phantom import TISSUE_CT_HU


def tissue_fidelity(ct: np.ndarray, mr: np.ndarray, labels: np.ndarray, tissue_names: dict[int, str]) -> list[dict]:
    """One row per tissue present in ``labels``.

    Args:
        ct: (X, Y, Z) HU.
        mr: (X, Y, Z) the MR in its units (arbitrary).
        labels: (X, Y, Z) integer tissue labels, keys of ``tissue_names``.
        tissue_names: ``{label: name}`` (the data set's ``tissue_labels``); label 0, the air around the head,
            is left out.

    Returns:
        ``{"tissue", "voxels", "share" (of the labelled head, 0..1), "ct_median", "ct_p25", "ct_p75" (HU),
        "reference_hu" ((low, high) HU, or None for a tissue the phantoms do not define), "outside_hu" (how far
        the median lies below (< 0) or above (> 0) that range, 0 inside it; None without a range), "mr_median"}``
        per tissue, in label order.
    """
    labels = np.asarray(labels).astype(np.int64)
    head = max(int((labels > 0).sum()), 1)
    rows = []
    for label, name in sorted(tissue_names.items()):
        inside = labels == int(label)
        count = int(inside.sum())
        if count == 0 or int(label) == 0:
            continue
        p25, median, p75 = (float(v) for v in np.percentile(ct[inside], [25, 50, 75]))
        reference = TISSUE_CT_HU.get(name)
        outside = None if reference is None else min(median - reference[0], 0.0) + max(median - reference[1], 0.0)
        rows.append({"tissue": name, "voxels": count, "share": count / head, "ct_median": median, "ct_p25": p25,
                     "ct_p75": p75, "reference_hu": reference,
                     "outside_hu": outside,
                     "mr_median": float(np.median(mr[inside]))})
    return rows

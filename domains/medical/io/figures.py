"""The MR / sCT / CT / |error| / uncertainty panel that ``translate --png`` draws."""
from __future__ import annotations

import os

import numpy as np

from sci_diffusion.atomic import atomic_path

CT_WINDOW_HU = (-1000.0, 1600.0)
ERROR_MAX_HU = 500.0


def save_figure(fig, out_png: str | os.PathLike, title: str, dpi: int = 100) -> None:
    """Title, lay out and write a matplotlib figure atomically (no half-written PNG), then close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def translation_panel(mr: np.ndarray, sct: np.ndarray, mask: np.ndarray, out_png: str | os.PathLike,
                      ct: np.ndarray | None = None, std: np.ndarray | None = None, title: str = "") -> None:
    """One axial slice (through the body's centre) of each image, side by side, as a PNG.

    Args:
        mr, sct, mask: (X, Y, Z) RAS volumes; sct in HU.
        ct: the reference CT (HU), adds the CT and |sCT - CT| panels.
        std: per-voxel standard deviation (HU) over samples, adds the uncertainty panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    body = np.asarray(mask) > 0
    z = int(round(np.nonzero(body)[2].mean())) if body.any() else mr.shape[2] // 2

    def cut(volume: np.ndarray) -> np.ndarray:  # anterior up, patient right on the right (neurological)
        return np.asarray(volume)[:, :, z].T

    panels = [("MR", cut(mr), "gray", None), ("synthetic CT (HU)", cut(sct), "gray", CT_WINDOW_HU)]
    if ct is not None:
        panels.append(("CT (HU)", cut(ct), "gray", CT_WINDOW_HU))
        panels.append(("|sCT - CT| (HU)", cut(np.abs(sct - ct) * body), "magma", (0.0, ERROR_MAX_HU)))
    if std is not None:
        s = cut(std)
        top = max(float(np.percentile(s[s > 0], 99)) if (s > 0).any() else 1.0, 1.0)
        panels.append(("std over samples (HU)", s, "viridis", (0.0, top)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, image, cmap, limits) in zip(np.atleast_1d(axes), panels):
        shown = ax.imshow(image, cmap=cmap, origin="lower", vmin=None if limits is None else limits[0],
                          vmax=None if limits is None else limits[1])
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        if limits is not None:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    save_figure(fig, out_png, f"SYNTHETIC  {title}  (axial slice {z})", dpi=100)


def contact_sheet(subjects: list[tuple[str, dict[str, np.ndarray]]], out_png: str | os.PathLike, title: str = "") -> None:
    """MR, CT and tissue labels side by side, one row per subject, axial and coronal, as a PNG.

    Args:
        subjects: ``(id, {"mr": (X, Y, Z), "ct": (X, Y, Z) HU, "labels": (X, Y, Z) int})`` per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("MR", "mr", "gray", None), ("CT (HU)", "ct", "gray", CT_WINDOW_HU), ("labels", "labels", "tab10", (0, 9))]
    rows = max(1, len(subjects))
    fig, axes = plt.subplots(rows, 2 * len(columns), figsize=(2.2 * 2 * len(columns), 2.4 * rows), squeeze=False)
    for row, (pid, volumes) in enumerate(subjects):
        body = np.asarray(volumes["labels"]) > 0
        centre = [int(round(c.mean())) if body.any() else n // 2 for c, n in zip(np.nonzero(body), body.shape)]
        for col, (name, key, cmap, limits) in enumerate(columns):
            volume = np.asarray(volumes[key])
            for view, (cut, label) in enumerate(((volume[:, :, centre[2]].T, "axial"), (volume[:, centre[1], :].T, "coronal"))):
                ax = axes[row, 2 * col + view]
                ax.imshow(cut, cmap=cmap, origin="lower", vmin=None if limits is None else limits[0],
                          vmax=None if limits is None else limits[1], interpolation="nearest")
                ax.set_title(f"{pid} {name} {label}", fontsize=7)
                ax.axis("off")
    save_figure(fig, out_png, f"SYNTHETIC  {title}", dpi=90)


def trajectory_strip(frames: list[dict], out_png: str | os.PathLike, title: str = "", columns: int = 6) -> None:
    """A strip of ``columns`` evenly spaced sampler steps of one slice: the state (top) and its CT estimate (bottom).

    Args:
        frames: ``translate.slice_trajectory``'s list, one dict per step with (h, w) HU images.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = sorted({round(i) for i in np.linspace(0, len(frames) - 1, min(columns, len(frames)))})
    fig, axes = plt.subplots(2, len(picked), figsize=(2.2 * len(picked), 4.6), squeeze=False)
    for col, index in enumerate(picked):
        frame = frames[index]
        for row, (key, name) in enumerate((("state", "x_t"), ("estimate", "CT estimate"))):
            ax = axes[row, col]
            ax.imshow(np.asarray(frame[key]).T, cmap="gray", origin="lower", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1])
            ax.set_title(f"{name}, step {frame['step']} (t={frame['t']:.2f})", fontsize=7)
            ax.axis("off")
    save_figure(fig, out_png, f"SYNTHETIC  {title}", dpi=90)

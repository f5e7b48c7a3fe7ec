"""The pictures the medical verbs draw, as PNG files: the MR / sCT / CT / |error| / uncertainty panel
(``translate --png``), the sampling trajectory strip (``translate --trajectory-png``), the contact sheet of
synthetic subjects (``synthesize medical``), the reliability diagram (``evaluate mri2ct --png``) and the
closest synthetic / training pairs (``audit medical --png``).

matplotlib is imported only when a figure is drawn (``pyplot``): the verbs that draw nothing never load it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sci_diffusion.atomic import atomic_path

from .masks import binary_mask

CT_WINDOW_HU = (-1000.0, 1600.0)
ERROR_MAX_HU = 500.0


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend."""
    # matplotlib: only when a PNG is asked for (heavy to import; the verbs that draw nothing never load it)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(fig, out_png: str | os.PathLike, dpi: int) -> Path:
    """Write a matplotlib figure atomically (no half-written PNG), then close it."""
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    return Path(out_png)


def save_figure(fig, out_png: str | os.PathLike, title: str, dpi: int = 100) -> Path:
    """Title, lay out and write a matplotlib figure atomically, then close it."""
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return write_png(fig, out_png, dpi)


def translation_panel(mr: np.ndarray, sct: np.ndarray, mask: np.ndarray, out_png: str | os.PathLike,
                      ct: np.ndarray | None = None, std: np.ndarray | None = None, title: str = "") -> None:
    """One axial slice (through the body's centre) of each image, side by side, as a PNG.

    Args:
        mr, sct, mask: (X, Y, Z) RAS volumes; sct in HU.
        ct: the reference CT (HU), adds the CT and |sCT - CT| panels.
        std: per-voxel standard deviation (HU) over samples, adds the uncertainty panel.
    """
    plt = pyplot()
    body = binary_mask(mask)
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


def contact_sheet(subjects: list[tuple[str, dict[str, np.ndarray]]], out_png: str | os.PathLike, title: str = "",
                  classes: int = 10) -> None:
    """MR, CT and tissue labels side by side, one row per subject, each in its axial, coronal and sagittal view
    through the body's centre, as a PNG.

    Args:
        subjects: ``(id, {"mr": (X, Y, Z), "ct": (X, Y, Z) HU, "labels": (X, Y, Z) int})`` per row.
        classes: the tissue classes, for the labels' colours (10 for phantom v1, 13 for v2).
    """
    plt = pyplot()
    label_colours = ("tab10", (0, 9)) if classes <= 10 else ("tab20", (0, 19))
    columns = [("MR", "mr", "gray", None), ("CT (HU)", "ct", "gray", CT_WINDOW_HU), ("labels", "labels", *label_colours)]
    rows, views = max(1, len(subjects)), 3
    fig, axes = plt.subplots(rows, views * len(columns), figsize=(2.0 * views * len(columns), 2.4 * rows),
                             squeeze=False)
    for row, (pid, volumes) in enumerate(subjects):
        body = np.asarray(volumes["labels"]) > 0
        centre = [int(round(c.mean())) if body.any() else n // 2 for c, n in zip(np.nonzero(body), body.shape)]
        for col, (name, key, cmap, limits) in enumerate(columns):
            volume = np.asarray(volumes[key])
            cuts = ((volume[:, :, centre[2]].T, "axial"), (volume[:, centre[1], :].T, "coronal"),
                    (volume[centre[0], :, :].T, "sagittal"))
            for view, (cut, label) in enumerate(cuts):
                ax = axes[row, views * col + view]
                ax.imshow(cut, cmap=cmap, origin="lower", vmin=None if limits is None else limits[0],
                          vmax=None if limits is None else limits[1], interpolation="nearest")
                ax.set_title(f"{pid} {name} {label}", fontsize=7)
                ax.axis("off")
    save_figure(fig, out_png, f"SYNTHETIC  {title}", dpi=90)


def trajectory_strip(frames: list[dict], out_png: str | os.PathLike, title: str = "", columns: int = 6) -> None:
    """A strip of ``columns`` evenly spaced sampler steps of one slice: the state (top) and its CT estimate (bottom).

    Args:
        frames: ``translation.volume.slice_trajectory``'s list, one dict per step with (h, w) HU images.
    """
    plt = pyplot()
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


def reliability_diagram(curves: dict[str, dict[str, list[float]]], out_png: str | os.PathLike) -> Path:
    """Reliability diagrams (``{label: evaluation.metrics.reliability_curve(...)}``, HU) on one PNG, with the diagonal."""
    fig, ax = pyplot().subplots(figsize=(4.5, 4.5))
    top = 1.05 * max([1.0] + [max(c["predicted_std"] + c["rmse"]) for c in curves.values()])
    ax.plot([0, top], [0, top], color="0.6", linestyle="--", label="calibrated")
    for label, c in curves.items():
        ax.plot(c["predicted_std"], c["rmse"], marker="o", label=label)
    ax.set(xlabel="predicted std (HU)", ylabel="RMS error (HU)", xlim=(0, top), ylim=(0, top),
           title="Reliability (equal-count bins of std)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return write_png(fig, out_png, dpi=100)


def closest_pairs_panel(rows: list[tuple[str, np.ndarray, str, np.ndarray]], out_png: str | os.PathLike) -> Path:
    """One row per (synthetic title, synthetic axial slice (X, Y) in HU, training title, training slice (X, Y)):
    the two slices side by side (``audit medical --png``: each subject's worst slice and its nearest training slice)."""
    fig, axes = pyplot().subplots(max(1, len(rows)), 2, figsize=(5, 2.6 * max(1, len(rows))), squeeze=False)
    for row, (syn_title, syn, train_title, train) in enumerate(rows):
        for col, (image, title) in enumerate(((syn, syn_title), (train, train_title))):
            axes[row, col].imshow(np.rot90(image), cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1])
            axes[row, col].set_title(title, fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    return save_figure(fig, out_png, "SYNTHETIC vs nearest training slice", dpi=80)

"""Watching a sample form (``sample molecules --trajectory``, ``--trajectory-png``; issue 14 §6).

:class:`TrajectoryRecorder` is a ``sampling.sample_molecules`` callback: after every sampler step of
the first batch it decodes the first few molecules twice, from the state ``x_t`` and from the
network's data estimate ``x0_hat``, into elements and positions (``atom_state.decode_atoms``: the
argmax of the type scores). For the latent model the two are first decoded by the autoencoder's
decoder (``decode_state``), on the recorded molecules only: a few molecules per step, cheap beside
the denoiser's pass over the whole batch.

Files: ``--trajectory PATH.xyz`` holds the ``x_t`` frames, and ``PATH.x0.xyz`` beside it the
``x0_hat`` frames (what the network believes the molecule will be; it settles long before ``x_t``
does). In both, molecule after molecule, one frame per step: an atom-count line, a comment line
``molecule=K step=I t=T state=x_t`` (step 1..steps, ``t`` the time after the step, 1 noise, 0 data)
and ``element x y z`` lines in Angstrom. The last ``x_t`` frame is the molecule written to ``--out``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sci_diffusion.atomic import atomic_path

from ..chem.bonds import bond_orders
from ..chem.elements import SYMBOLS
from ..chem.files import write_xyz_frames
from ..data.atom_state import decode_atoms

STATES = ("x_t", "x0")  # the sampler's state, the network's data estimate
DEFAULT_MOLECULES = 4
STRIP_FRAMES = 6
ELEMENT_COLOURS = {"H": "#e8e8e8", "B": "#ffb5b5", "C": "#404040", "N": "#3050f8", "O": "#ff0d0d", "F": "#60c040",
                   "Si": "#f0c8a0", "P": "#ff8000", "S": "#e0c020", "Cl": "#1ff01f", "As": "#bd80e3",
                   "Br": "#a62929", "I": "#940094"}  # CPK-like (Jmol's), for every element of elements.KNOWN_ELEMENTS


@dataclass
class Frame:
    """One molecule at one step: ``z`` [N] atomic numbers, ``pos`` [N, 3] Angstrom, after step
    ``step`` (1-based) at time ``t`` (1 noise, 0 data)."""

    step: int
    t: float
    z: np.ndarray
    pos: np.ndarray


@dataclass
class TrajectoryRecorder:
    """Records the first ``molecules`` molecules of the first batch at every step (a
    :data:`~.sampling.BatchCallback`). ``frames[state][k]`` lists molecule ``k``'s frames in step
    order, for ``state`` in ``STATES``.

    Args:
        module: the model sampled (its ``decode_state`` turns a latent state into atoms).
        molecules: how many molecules to record (fewer if the first batch holds fewer).
        cond: the condition rows ``(M, P + 1)`` of the molecules sampled, in order, or None; a conditional
            latent model's decoder reads them (GeoLDM conditions its decoder), so its frames decode with
            the asked properties.
    """

    module: torch.nn.Module
    molecules: int = DEFAULT_MOLECULES
    cond: Tensor | None = None
    frames: dict[str, list[list[Frame]]] = field(default_factory=lambda: {s: [] for s in STATES})

    def __call__(self, i: int, t: float, x_t: Tensor, x0: Tensor, counts: list[int]) -> None:
        n = min(self.molecules, len(counts))
        sizes = list(counts[:n])
        atoms = sum(sizes)
        batch = torch.repeat_interleave(torch.arange(n, device=x_t.device), torch.as_tensor(sizes, device=x_t.device))
        for state, x in zip(STATES, (x_t, x0)):
            cond = None if self.cond is None else self.cond[:n].to(device=x_t.device, dtype=torch.float32)
            decoded = self.module.decode_state(x[:atoms], batch, n, cond).float()
            per_molecule = self.frames[state]
            per_molecule.extend([] for _ in range(n - len(per_molecule)))
            for k, part in enumerate(torch.split(decoded, sizes)):
                pos, z = decode_atoms(part, self.module.element_set)
                per_molecule[k].append(Frame(i + 1, float(t), z, pos))

    @property
    def recorded(self) -> int:
        """How many molecules were recorded."""
        return len(self.frames["x_t"])


def x0_path(path: str | os.PathLike) -> Path:
    """Where the ``x0_hat`` frames go beside ``--trajectory PATH.xyz``: ``PATH.x0.xyz``."""
    path = Path(path)
    return path.with_name(path.stem + ".x0.xyz")


def write_trajectories(recorder: TrajectoryRecorder, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the ``x_t`` frames to ``path`` and the ``x0_hat`` frames to :func:`x0_path` (see the module
    docstring for the layout); returns both paths."""
    written = []
    for state, target in zip(STATES, (Path(path), x0_path(path))):
        frames = ((f.z, f.pos, {"molecule": k, "step": f.step, "t": f"{f.t:.6g}", "state": state})
                  for k, molecule in enumerate(recorder.frames[state]) for f in molecule)
        written.append(write_xyz_frames(target, frames))
    return written[0], written[1]


def strip_frames(frames: Sequence[Frame], n: int = STRIP_FRAMES) -> list[Frame]:
    """``n`` evenly spaced frames, the first and the last among them (all if there are fewer)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    return [frames[int(k)] for k in picks]


def _plane(pos: np.ndarray) -> np.ndarray:
    """[3, 2] the two principal axes of a molecule's atoms (its best 2-D view)."""
    centred = pos - pos.mean(0)
    if len(pos) < 2 or not np.isfinite(centred).all():
        return np.eye(3)[:, :2]
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2].T
    return axes if axes.shape[1] == 2 else np.eye(3)[:, :2]


def draw_strip_png(frames: Sequence[Frame], path: str | os.PathLike, steps: int, n: int = STRIP_FRAMES) -> Path:
    """A PNG strip of ``n`` evenly spaced frames of one molecule, projected on the principal plane of
    its last frame (the same view in every panel): atoms coloured by element, bonds by the EDM rule.

    Args:
        frames: one molecule's frames in step order (``TrajectoryRecorder.frames["x_t"][k]``).
        path: the PNG to write (atomically).
        steps: the run's step count, for the panel titles.
    """
    # matplotlib: only when --trajectory-png asks for a picture (its import takes seconds)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shown = strip_frames(frames, n)
    axes_3d = _plane(frames[-1].pos)
    flat = [(f.pos - f.pos.mean(0)) @ axes_3d for f in shown]
    finite = np.concatenate([p[np.isfinite(p).all(1)] for p in flat] + [np.zeros((1, 2))])
    reach = float(np.abs(finite).max()) + 0.8
    fig, panels = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.6), squeeze=False, layout="constrained")
    for panel, frame, xy in zip(panels[0], shown, flat):
        orders = bond_orders(frame.z, frame.pos) if np.isfinite(frame.pos).all() else np.zeros((len(frame.z),) * 2)
        for a, b in zip(*np.nonzero(np.triu(orders, k=1))):
            panel.plot(xy[[a, b], 0], xy[[a, b], 1], color="#707070", lw=1.2 * orders[a, b], zorder=1)
        symbols = [SYMBOLS[int(z)] for z in frame.z]
        panel.scatter(xy[:, 0], xy[:, 1], c=[ELEMENT_COLOURS[s] for s in symbols], edgecolors="black", linewidths=0.5,
                      s=[12 if s == "H" else 30 for s in symbols], zorder=2)
        panel.set_title(f"step {frame.step}/{steps}\nt = {frame.t:.3f}", fontsize=9)
        panel.set_xlim(-reach, reach)
        panel.set_ylim(-reach, reach)
        panel.set_aspect("equal")
        panel.set_xticks([])
        panel.set_yticks([])
    present = sorted({SYMBOLS[int(z)] for f in shown for z in f.z}, key=list(ELEMENT_COLOURS).index)
    handles = [Line2D([], [], marker="o", ls="", markerfacecolor=ELEMENT_COLOURS[s], markeredgecolor="black", label=s)
               for s in present]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)

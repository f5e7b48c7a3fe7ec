"""A rotation- and permutation-aligned noise-data coupling for flow matching on molecules, as EquiFM (Klein,
Kraemer & Noe 2023, "equivariant OT") and SemlaFlow (Irwin et al. 2024) pair each molecule with its noise.

The core's loss calls it as ``coupling(eps, x0, batch) -> eps`` (``sci_diffusion.losses.DenoisingLoss``).
For each molecule of the batch it

1. pairs noise atoms with data atoms by an optimal assignment on the coordinates (squared distances,
   ``scipy.optimize.linear_sum_assignment``). The noise atoms are exchangeable (i.i.d. rows), so the whole
   noise row moves with its coordinates: the atom-type and charge noise too;
2. rotates the permuted noise coordinates onto the data's by the Kabsch rotation (a proper rotation,
   det +1, about the origin, so the noise keeps zero centre of mass).

The data is never touched. The pairs are closer than independent ones, so the flow's paths cross less and
are straighter: what the network must learn, and what Euler steps must follow, is simpler. A model trained
with a coupling has another ``x_t | x_0`` than the Gaussian one the ancestral and SDE samplers assume, so it is
sampled exactly by the flow ODE (``ddim``, Euler; ``dpmpp2m``): see ``sci_diffusion.paths``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from sci_diffusion.state_spaces import ProductSpace, ZeroCoMSpace

if TYPE_CHECKING:  # annotations only: the loss hands its batch over
    from sci_diffusion.module import DiffusionBatch

COUPLINGS = ("independent", "aligned")
Coupling = Callable[[Tensor, Tensor, "DiffusionBatch"], Tensor]


def optimal_assignment(noise_pos: Tensor, data_pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """The noise row paired with each data row: ``(N,)`` long, a permutation within each molecule that
    minimises the molecule's summed squared distance ``sum_i |data_i - noise_order[i]|^2``.

    Args:
        noise_pos, data_pos: ``(N, 3)`` coordinates (Angstrom) of the noise and the data.
        batch: ``(N,)`` long, each row's molecule ``0..num_graphs-1`` (in any order).
    """
    from scipy.optimize import linear_sum_assignment  # scipy: 0.5 s to import; needed only when training coupled

    noise, data = noise_pos.detach().double().cpu().numpy(), data_pos.detach().double().cpu().numpy()
    rows_by_molecule = torch.argsort(batch.cpu(), stable=True).numpy()
    counts = torch.bincount(batch.cpu(), minlength=num_graphs).tolist()
    order = np.arange(len(noise))
    start = 0
    for count in counts:
        rows = rows_by_molecule[start:start + count]
        start += count
        cost = ((data[rows, None, :] - noise[None, rows, :]) ** 2).sum(-1)  # (n data atoms, n noise atoms)
        _, noise_of_data = linear_sum_assignment(cost)
        order[rows] = rows[noise_of_data]
    return torch.as_tensor(order, device=noise_pos.device)


def kabsch_rotations(moving: Tensor, target: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Per molecule, the proper rotation ``R`` (det +1) minimising ``sum_i |R moving_i - target_i|^2``
    (Kabsch 1976): ``(num_graphs, 3, 3)`` float64.

    Both point sets should be centred (zero centre of mass); the rotation is about the origin.
    ``H = sum_i moving_i target_i^T = U S V^T`` gives ``R = V diag(1, 1, d) U^T`` with ``d = sign det(V U^T)``, so
    that a reflection is never chosen.
    """
    m, x = moving.double(), target.double()
    H = torch.zeros(num_graphs, m.shape[1], m.shape[1], dtype=torch.float64, device=m.device)
    H.index_add_(0, batch, m[:, :, None] * x[:, None, :])
    U, _, Vh = torch.linalg.svd(H)
    V = Vh.mT
    d = torch.linalg.det(V @ U.mT).sign()
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.ones(num_graphs, m.shape[1], dtype=torch.float64, device=m.device)
    D[:, -1] = d
    return V @ torch.diag_embed(D) @ U.mT


def coordinate_space(space: object) -> tuple[ZeroCoMSpace, int]:
    """The zero-centre-of-mass part of a molecule's state space and its width (the leading coordinate columns).

    Raises:
        ValueError: ``space`` is not a product space that starts with zero-CoM coordinates.
    """
    part = space.parts[0] if isinstance(space, ProductSpace) else None
    if part is None or not isinstance(part[0], ZeroCoMSpace):
        raise ValueError("The aligned coupling needs a molecule state: a product space whose first part is "
                         "zero-centre-of-mass coordinates.")
    return part


def aligned_coupling(eps: Tensor, x0: Tensor, batch: DiffusionBatch) -> Tensor:
    """Pair each molecule's noise with its data: optimal atom assignment, then the Kabsch rotation (module
    docstring). ``eps``, ``x0``: ``(N, 3 + F)`` states of ``batch.space``; returns the coupled noise, ``eps``'s
    shape and dtype, with zero centre of mass per molecule. The data ``x0`` is not changed."""
    space, width = coordinate_space(batch.space)
    order = optimal_assignment(eps[:, :width], x0[:, :width], space.batch, space.num_samples)
    eps = eps[order]  # whole rows: the noise atoms are exchangeable, their type noise travels with them
    rotations = kabsch_rotations(eps[:, :width], x0[:, :width], space.batch, space.num_samples)
    pos = torch.einsum("nij,nj->ni", rotations[space.batch], eps[:, :width].double())
    return torch.cat([space.project(pos).to(eps.dtype), eps[:, width:]], dim=1)


def noise_coupling(name: str) -> Coupling | None:
    """The loss's ``coupling`` of a model's ``coupling`` option: None (independent noise, the diffusion's
    forward process) or :func:`aligned_coupling`.

    Raises:
        ValueError: an unknown name (one sentence naming the choices).
    """
    if name not in COUPLINGS:
        raise ValueError(f"Unknown noise coupling {name!r}; choose one of {', '.join(COUPLINGS)}.")
    return aligned_coupling if name == "aligned" else None

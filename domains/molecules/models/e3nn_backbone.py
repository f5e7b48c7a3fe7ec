"""An E(3)-equivariant denoiser built from e3nn tensor products (NequIP-style point convolutions).

A drop-in alternative to :class:`~.egnn.EGNN` with the same call ``net(x_t, t, cond, batch, num_graphs)``
and output contract (``(N, 3 + F)``: a zero-CoM vector per atom and ``F`` invariant outputs):

- node input: the invariant atom features, the diffusion time and an optional condition, embedded by a
  linear layer into ``hidden x 0e`` scalars (as the EGNN embeds its invariant inputs);
- edges: every ordered pair of atoms inside a molecule (``egnn.fully_connected_edges``), described
  by the spherical harmonics ``Y^l(r_ij / |r_ij|)``, ``l <= lmax``, and a Gaussian radial basis of
  ``|r_ij|`` (Angstrom) fed to a small MLP that gives each edge its tensor-product weights;
- ``layers`` interaction blocks, each: a linear self-interaction, the point convolution
  ``m_i = sum_j TP(h_j, Y(r_ij); w(|r_ij|)) / normalization``, a linear mixing, a linear
  self-connection from ``h_i``, a gated nonlinearity (:class:`e3nn.nn.Gate`: SiLU on scalars,
  sigmoid gates on the ``l > 0`` channels) and a residual connection;
- node irreps ``hidden x 0e + hidden/2 x 1o (+ hidden/4 x 2e for lmax = 2)``;
- output: a linear map to ``F x 0e + 1 x 1o``: the ``1o`` vector (made zero-CoM per molecule, as the
  EGNN does) is the coordinate output, the ``0e`` channels the invariant output.

Only relative vectors ``r_ij = x_i - x_j`` enter, so the output is invariant under translations;
e3nn's irreps make the vector output rotate with the input and the scalars stay invariant.
"""
from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn
from torch.nn import functional
from torch_geometric.utils import scatter

from .egnn import DISTANCE_EPS, fully_connected_edges, invariant_inputs

LMAX_CHOICES = (1, 2)


def node_irreps(hidden: int, lmax: int) -> o3.Irreps:
    """``hidden x 0e + hidden/2 x 1o (+ hidden/4 x 2e)``: the node features of every block."""
    parts = [(hidden, (0, 1)), (max(1, hidden // 2), (1, -1))]
    if lmax >= 2:
        parts.append((max(1, hidden // 4), (2, 1)))
    return o3.Irreps(parts)


class PointConvolution(nn.Module):
    """One interaction block: ``h -> h + Gate(Lin(sum_j TP(Lin(h_j), Y_ij; w(r_ij))) + SC(h_i))``.

    Args:
        irreps_in: the block's input node irreps (``hidden x 0e`` for the first block).
        irreps_out: the node irreps after the gate (:func:`node_irreps`).
        irreps_sh: the edge spherical harmonics ``0e + 1o (+ 2e)``.
        num_basis: width of the radial basis the radial MLP reads.
        radial_hidden: hidden width of the radial MLP.
        normalization: the sum over neighbours is divided by this (about sqrt of a QM9 molecule's
            neighbour count).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, irreps_sh: o3.Irreps, num_basis: int,
                 radial_hidden: int, normalization: float) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = o3.Irreps(irreps_in), o3.Irreps(irreps_out)
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, (0, 1))]) if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [functional.silu], gates, [torch.sigmoid], gated)
        wanted = {ir for _, ir in self.gate.irreps_in}
        # the point convolution: "uvu" paths h_j (x) Y_ij -> every irrep the gate takes
        mid, instructions = [], []
        for i1, (mul, ir1) in enumerate(self.irreps_in):
            for i2, (_, ir2) in enumerate(irreps_sh):
                for ir_out in ir1 * ir2:
                    if ir_out in wanted:
                        instructions.append((i1, i2, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(mid)
        irreps_mid, perm, _ = irreps_mid.sort()
        instructions = [(i1, i2, perm[i_out], mode, train) for i1, i2, i_out, mode, train in instructions]
        self.pre = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                   internal_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden, self.tp.weight_numel], functional.silu)
        self.post = o3.Linear(irreps_mid.simplify(), self.gate.irreps_in)
        self.self_connection = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.normalization = normalization

    def forward(self, h: Tensor, edges: Tensor, edge_sh: Tensor, edge_radial: Tensor) -> Tensor:
        """``h`` ``(N, irreps_in.dim)``, ``edges`` ``(2, E)`` (receiver, sender), ``edge_sh``
        ``(E, irreps_sh.dim)``, ``edge_radial`` ``(E, num_basis)`` -> ``(N, irreps_out.dim)``,
        without the residual (the network adds it)."""
        messages = self.tp(self.pre(h).index_select(0, edges[1]), edge_sh, self.radial(edge_radial))
        agg = scatter(messages, edges[0], dim=0, dim_size=h.shape[0], reduce="sum") / self.normalization
        return self.gate(self.post(agg) + self.self_connection(h))


class E3nnDenoiser(nn.Module):
    """An e3nn point-convolution denoiser with the EGNN's interface (see the module docstring).

    Args:
        feature_dim: atom-feature width F of the input (one-hot + charge: 6 for QM9).
        hidden: scalar width of the node features; ``hidden/2`` vectors (and ``hidden/4`` l=2
            tensors for ``lmax=2``) go beside them.
        layers: number of interaction blocks.
        cond_dim: width of the per-molecule condition (0: unconditional), appended to every atom's
            input; ``cond=None`` reads as zeros, as in the EGNN.
        lmax: the highest spherical-harmonic degree of the edges and the node features (1 or 2).
        num_basis: number of Gaussians of the radial basis on ``[0, max_radius]``.
        max_radius: where the last Gaussian sits (Angstrom); the basis fades smoothly beyond, so
            pairs much further apart (no QM9 molecule is) exchange almost nothing.
        radial_hidden: hidden width of every block's radial MLP.
        normalization: the neighbour sum is divided by this (default sqrt(17), QM9's mean neighbour count).
        out_features: width of the invariant output (default ``feature_dim``).
        time_input: append the diffusion time to every atom's input.
    """

    def __init__(self, feature_dim: int = 6, hidden: int = 64, layers: int = 3, cond_dim: int = 0, lmax: int = 1,
                 num_basis: int = 16, max_radius: float = 10.0, radial_hidden: int = 64,
                 normalization: float = math.sqrt(17.0), out_features: int | None = None,
                 time_input: bool = True) -> None:
        super().__init__()
        if lmax not in LMAX_CHOICES:
            raise ValueError(f"lmax must be one of {LMAX_CHOICES}, not {lmax!r}.")
        self.feature_dim, self.cond_dim, self.time_input = feature_dim, cond_dim, time_input
        self.out_features = feature_dim if out_features is None else out_features
        self.num_basis, self.max_radius = num_basis, max_radius
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.irreps_node = node_irreps(hidden, lmax)
        self.hidden = hidden
        self.embed = nn.Linear(feature_dim + int(time_input) + cond_dim, hidden)
        irreps_first = o3.Irreps(f"{hidden}x0e")
        self.blocks = nn.ModuleList(
            PointConvolution(irreps_first if i == 0 else self.irreps_node, self.irreps_node, self.irreps_sh,
                             num_basis, radial_hidden, normalization)
            for i in range(layers)
        )
        self.head = o3.Linear(self.irreps_node, o3.Irreps(f"{self.out_features}x0e + 1x1o"))

    def forward(self, x_t: Tensor, t: Tensor | None, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        """Predict eps (or another target) for ``x_t = cat[pos (3), features (F)]``.

        Args:
            x_t: ``(N, 3 + F)`` noisy positions (Angstrom, zero CoM per molecule) and features.
            t: diffusion time in [0, 1], 0-d or ``(num_graphs,)``; None without ``time_input``.
            cond: ``(num_graphs, cond_dim)`` or None (unconditional / dropped).
            batch: ``(N,)`` sorted graph id of every atom.
        Returns:
            ``(N, 3 + out_features)``: the coordinate output (zero CoM per molecule, rotating with
            the input) and the invariant output.
        """
        # e3nn's linear maps and tensor products contract with tensordot/einsum, which autocast leaves
        # alone: under bf16 autocast their float32 weights would meet bfloat16 activations. The
        # network therefore runs in the input's precision (float32 in training and sampling).
        with torch.autocast(x_t.device.type, enabled=False):
            return self._forward(x_t, t, cond, batch, num_graphs)

    def _forward(self, x_t: Tensor, t: Tensor | None, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        pos = x_t[:, :3]
        h = self.embed(invariant_inputs(x_t, t, cond, batch, num_graphs, self.time_input, self.cond_dim))
        edges = fully_connected_edges(batch, num_graphs)
        diff = pos.index_select(0, edges[0]) - pos.index_select(0, edges[1])  # r_ij = x_i - x_j, (E, 3)
        dist = (diff.pow(2).sum(1, keepdim=True) + DISTANCE_EPS).sqrt()  # finite gradient at r_ij = 0
        edge_sh = o3.spherical_harmonics(self.irreps_sh, diff / dist, normalize=False, normalization="component")
        edge_radial = soft_one_hot_linspace(dist[:, 0], 0.0, self.max_radius, self.num_basis, basis="gaussian",
                                            cutoff=False) * math.sqrt(self.num_basis)
        for block in self.blocks:
            out = block(h, edges, edge_sh, edge_radial)
            # residual; the first block widens hidden x 0e to the full irreps (scalars come first)
            h = out + functional.pad(h, (0, out.shape[1] - h.shape[1]))
        out = self.head(h)
        inv, vel = out[:, :self.out_features], out[:, self.out_features:]
        counts = torch.bincount(batch, minlength=num_graphs).clamp(min=1).to(vel.dtype)[:, None]
        vel = vel - (scatter(vel, batch, dim=0, dim_size=num_graphs, reduce="sum") / counts)[batch]
        return torch.cat([vel, inv], dim=1)

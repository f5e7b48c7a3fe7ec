"""The E(n)-equivariant graph network of EDM (Hoogeboom et al. 2022), on sparse PyG batches.

Architecture as in EDM's ``EGNN_dynamics_QM9`` (``egnn_new.py``):

- node input: atom features (one-hot x0.25, charge x0.1), the diffusion time appended, and an
  optional condition;
- ``layers`` equivariant blocks, each a graph convolution with attention on edges followed by an
  equivariant coordinate update ``x_i += sum_j (x_i - x_j)/(|x_i - x_j| + 1) tanh(phi(m_ij)) * 15``;
- edge features: squared distances at the block's input and at the network's input;
- output: the coordinate displacement (made zero-CoM per molecule) and the feature head.

Molecules are fully connected graphs, built per batch from the PyG ``batch`` vector without a
Python loop over molecules. Messages are aggregated with PyG's ``scatter``. The first linear
layer of each edge MLP is split into a per-node part (computed once per node, then gathered)
and a per-edge part: the same function as ``Linear(cat[h_i, h_j, e])``, at a fraction of the cost.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter


def fully_connected_edges(batch: Tensor, num_graphs: int | None = None) -> Tensor:
    """All ordered pairs ``(i, j), i != j`` inside each graph of a PyG batch vector.

    Args:
        batch: ``(N,)`` sorted graph ids.
    Returns:
        ``(2, E)`` long edge index with ``E = sum_g n_g (n_g - 1)``; row 0 receives (``i``),
        row 1 sends (``j``).
    """
    counts = torch.bincount(batch, minlength=num_graphs or 0)
    starts = torch.cumsum(counts, 0) - counts
    per_node = counts[batch]  # block length for every receiving node
    receivers = torch.repeat_interleave(torch.arange(batch.numel(), device=batch.device), per_node)
    block_start = torch.cumsum(per_node, 0) - per_node
    local = torch.arange(receivers.numel(), device=batch.device) - torch.repeat_interleave(block_start, per_node)
    senders = starts[batch[receivers]] + local
    keep = receivers != senders
    return torch.stack([receivers[keep], senders[keep]])


class SplitEdgeLinear(nn.Module):
    """``Linear(cat[h_i, h_j, e])`` computed as ``A h_i + B h_j + C e``, with ``A h`` and ``B h``
    evaluated once per node rather than once per edge."""

    def __init__(self, node_dim: int, edge_dim: int, out_dim: int) -> None:
        super().__init__()
        self.receiver = nn.Linear(node_dim, out_dim)
        self.sender = nn.Linear(node_dim, out_dim, bias=False)
        self.edge = nn.Linear(edge_dim, out_dim, bias=False)

    def forward(self, h: Tensor, edge_attr: Tensor, edges: Tensor) -> Tensor:
        # index_select: its backward is index_add_, far cheaper on CPU than indexing's index_put_.
        return (self.receiver(h).index_select(0, edges[0]) + self.sender(h).index_select(0, edges[1])
                + self.edge(edge_attr))


class GraphConvolution(nn.Module):
    """EDM's ``GCL``: attention-weighted edge messages, summed, then a residual node MLP."""

    def __init__(self, hidden: int, edge_dim: int, attention: bool = True, normalization_factor: float = 1.0) -> None:
        super().__init__()
        self.edge_in = SplitEdgeLinear(hidden, edge_dim, hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.attention = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.normalization_factor = normalization_factor

    def forward(self, h: Tensor, edge_attr: Tensor, edges: Tensor) -> Tensor:
        m = self.edge_out(self.edge_in(h, edge_attr, edges))
        if self.attention is not None:
            m = m * self.attention(m)
        agg = scatter(m, edges[0], dim=0, dim_size=h.shape[0], reduce="sum") / self.normalization_factor
        return h + self.node_mlp(torch.cat([h, agg], dim=1))


class CoordinateUpdate(nn.Module):
    """EDM's ``EquivariantUpdate``: ``x_i += sum_j diff_ij * tanh(phi(h_i, h_j, e_ij)) * range``."""

    def __init__(self, hidden: int, edge_dim: int, coords_range: float = 15.0, tanh: bool = True,
                 normalization_factor: float = 1.0) -> None:
        super().__init__()
        self.edge_in = SplitEdgeLinear(hidden, edge_dim, hidden)
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.coords_range, self.tanh, self.normalization_factor = coords_range, tanh, normalization_factor

    def forward(self, h: Tensor, x: Tensor, edge_attr: Tensor, edges: Tensor, unit_diff: Tensor) -> Tensor:
        phi = self.mlp(self.edge_in(h, edge_attr, edges))
        if self.tanh:
            phi = torch.tanh(phi) * self.coords_range
        trans = unit_diff * phi
        return x + scatter(trans, edges[0], dim=0, dim_size=x.shape[0], reduce="sum") / self.normalization_factor


DISTANCE_EPS = 1e-8  # EDM's coord2diff: sqrt(d^2 + 1e-8), so two atoms at one place keep a finite gradient


def invariant_inputs(x_t: Tensor, t: Tensor | None, cond: Tensor | None, batch: Tensor, num_graphs: int,
                     time_input: bool, cond_dim: int) -> Tensor:
    """Every atom's invariant network input ``(N, F [+ 1] [+ cond_dim])``: its features ``x_t[:, 3:]``, its
    molecule's time (when ``time_input``) and its molecule's condition (zeros where ``cond`` is None: the
    dropped condition of classifier-free guidance). Shared by the EGNN and the e3nn backbone."""
    inputs = [x_t[:, 3:]]
    if time_input:
        inputs.append((t.expand(num_graphs) if t.dim() == 0 else t).to(x_t.dtype)[batch][:, None])
    if cond_dim:
        inputs.append(x_t.new_zeros(x_t.shape[0], cond_dim) if cond is None else cond.to(x_t.dtype)[batch])
    return torch.cat(inputs, dim=1)


def _pair_geometry(x: Tensor, edges: Tensor, norm_constant: float = 1.0) -> tuple[Tensor, Tensor]:
    """Squared distances ``(E, 1)`` and normalised differences ``(x_i - x_j)/(sqrt(d^2 + 1e-8) + c)``."""
    diff = x.index_select(0, edges[0]) - x.index_select(0, edges[1])
    d2 = diff.pow(2).sum(1, keepdim=True)
    return d2, diff / ((d2 + DISTANCE_EPS).sqrt() + norm_constant)


class EquivariantBlock(nn.Module):
    """``sublayers`` graph convolutions, then one coordinate update (EDM's ``EquivariantBlock``); with
    ``edge_features``, every message also reads that many features of its edge (a bond-aware model's
    noisy bond classes)."""

    def __init__(self, hidden: int, sublayers: int = 1, attention: bool = True, tanh: bool = True,
                 coords_range: float = 15.0, normalization_factor: float = 1.0, edge_features: int = 0) -> None:
        super().__init__()
        edge_dim = 2 + edge_features  # squared distance now, and at the network's input (+ the edge's features)
        self.convs = nn.ModuleList(
            GraphConvolution(hidden, edge_dim, attention, normalization_factor) for _ in range(sublayers)
        )
        self.update = CoordinateUpdate(hidden, edge_dim, coords_range, tanh, normalization_factor)

    def forward(self, h: Tensor, x: Tensor, edges: Tensor, d2_input: Tensor,
                edge_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        d2, unit_diff = _pair_geometry(x, edges)
        edge_attr = torch.cat([d2, d2_input] if edge_features is None else [d2, d2_input, edge_features], dim=1)
        for conv in self.convs:
            h = conv(h, edge_attr, edges)
        return h, self.update(h, x, edge_attr, edges, unit_diff)


class EGNN(nn.Module):
    """EDM's EGNN on a sparse batch of molecules: the denoiser, and GeoLDM's encoder and decoder.

    Args:
        feature_dim: atom-feature width F of the input (one-hot + charge: 6 for QM9; the latent
            width k for a latent denoiser or a decoder).
        hidden: feature width of every layer (EDM QM9: 256).
        layers: number of equivariant blocks (EDM QM9: 9).
        cond_dim: width of the per-molecule condition (0: unconditional), appended to every atom's
            input; ``cond=None`` reads as zeros (the module adds a presence flag to the condition
            so that a dropped condition differs from a zero one).
        out_features: width of the invariant output (default ``feature_dim``; GeoLDM's encoder maps
            6 atom features to k latents, its decoder k latents to 6 atom features).
        time_input: append the diffusion time to every atom's input (a denoiser does; GeoLDM's
            encoder and decoder do not, and take ``t=None``).
        edm_coords_range: give every block EDM's full ``coords_range`` (EDM's ``EGNN`` computes
            ``coords_range / layers`` and never uses it), instead of this package's default
            ``coords_range / layers``, which the bundled models were trained with.
        attention, tanh, coords_range, normalization_factor: as in EDM (True, True, 15, 1).
        edge_features: width of per-edge features every message reads besides the distances (0: none; a
            bond-aware model's noisy bond classes, ``bond_egnn.py``), given to :meth:`trunk`.
    """

    def __init__(self, feature_dim: int = 6, hidden: int = 256, layers: int = 9, cond_dim: int = 0,
                 attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
                 normalization_factor: float = 1.0, out_features: int | None = None, time_input: bool = True,
                 edm_coords_range: bool = False, edge_features: int = 0) -> None:
        super().__init__()
        self.feature_dim, self.cond_dim, self.time_input = feature_dim, cond_dim, time_input
        self.out_features = feature_dim if out_features is None else out_features
        in_dim = feature_dim + int(time_input) + cond_dim
        self.embed = nn.Linear(in_dim, hidden)
        block_range = coords_range if edm_coords_range else coords_range / layers
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden, 1, attention, tanh, block_range, normalization_factor, edge_features)
            for _ in range(layers)
        )
        self.head = nn.Linear(hidden, self.out_features)

    def forward(self, x_t: Tensor, t: Tensor | None, cond: Tensor | None, batch: Tensor, num_graphs: int) -> Tensor:
        """Predict eps (or, for an encoder or decoder, a displacement and new features) for
        ``x_t = cat[pos (3), features (F)]``.

        Args:
            x_t: ``(N, 3 + F)`` noisy positions (Angstrom, zero CoM per molecule) and features.
            t: diffusion time in [0, 1], 0-d or ``(num_graphs,)``; None without ``time_input``.
            cond: ``(num_graphs, cond_dim)`` or None (unconditional / dropped).
            batch: ``(N,)`` graph id of every atom.
        Returns:
            ``(N, 3 + out_features)``: the coordinate displacement (zero CoM per molecule) and the
            invariant output.
        """
        h, x = self.trunk(x_t, t, cond, batch, num_graphs)
        return self.output(h, x, x_t[:, :3], batch, num_graphs)

    def trunk(self, x_t: Tensor, t: Tensor | None, cond: Tensor | None, batch: Tensor, num_graphs: int,
              edges: Tensor | None = None, edge_features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The blocks: node features ``(N, hidden)`` and positions ``(N, 3)`` after the last one, for the inputs of
        :meth:`forward`, over ``edges`` ``(2, E)`` (default: every ordered pair of a molecule) whose messages read
        ``edge_features`` ``(E, edge_features)`` where the network has them."""
        pos = x_t[:, :3]
        h = self.embed(invariant_inputs(x_t, t, cond, batch, num_graphs, self.time_input, self.cond_dim))
        edges = fully_connected_edges(batch, num_graphs) if edges is None else edges
        d2_input, _ = _pair_geometry(pos, edges)
        x = pos
        for block in self.blocks:
            h, x = block(h, x, edges, d2_input, edge_features)
        return h, x

    def output(self, h: Tensor, x: Tensor, pos: Tensor, batch: Tensor, num_graphs: int,
               counts: Tensor | None = None) -> Tensor:
        """``(N, 3 + out_features)``: the displacement ``x - pos`` made zero-CoM per molecule, and the feature head;
        ``counts`` ``(num_graphs,)``, the atoms per molecule, when the caller has them (default: counted here)."""
        vel = x - pos
        counts = torch.bincount(batch, minlength=num_graphs) if counts is None else counts
        counts = counts.clamp(min=1).to(vel.dtype)[:, None]
        vel = vel - (scatter(vel, batch, dim=0, dim_size=num_graphs, reduce="sum") / counts)[batch]
        return torch.cat([vel, self.head(h)], dim=1)

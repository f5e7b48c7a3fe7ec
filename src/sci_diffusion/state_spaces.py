"""State spaces: the one place where noise is drawn and projected.

Samplers and the training loss never call ``torch.randn`` themselves; they ask the space.
That is how one DPM-Solver serves images (Euclidean, optionally masked) and molecules
(coordinates with zero centre of mass per graph, joined with atom features).

A space also knows how the rows of ``x`` group into *samples* (images in a batch, or
graphs in a PyG-style batch vector), so per-sample quantities such as the diffusion time
can be broadcast onto ``x`` with :meth:`StateSpace.expand`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .generators import PerSampleGenerator


def per_sample_noise(generator: PerSampleGenerator, sample_of_rows: Tensor, like: Tensor) -> Tensor:
    """Noise shaped like ``like``, each sample's rows (``sample_of_rows``, ``(like.shape[0],)``) from
    that sample's generator, in row order within the sample."""
    num_samples = len(generator)
    counts = torch.bincount(sample_of_rows.cpu(), minlength=num_samples)[:num_samples].tolist()
    z = generator.randn(counts, like.shape[1:], like.dtype, like.device)  # sample-sorted rows
    order = torch.argsort(sample_of_rows, stable=True)
    out = torch.empty_like(z)
    out[order] = z
    return out


class StateSpace(ABC):
    """Interface; see the concrete spaces below.

    A space may hold a categorical variable (``categorical.py``: bond orders, as one-hot rows) beside its
    Gaussian parts; ``categorical`` says whether it does, and the ``categorical_*`` methods are the forward
    draw, the reverse step and the loss of those parts (a Gaussian space has none, and they change nothing).
    """

    num_samples: int
    categorical = False

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Project ``x`` onto the space (identity for plain Euclidean space)."""

    def noise(self, like: Tensor, generator: torch.Generator | PerSampleGenerator | None = None) -> Tensor:
        """Standard Gaussian noise in the space, shaped and typed like ``like``.

        ``generator``: a ``torch.Generator`` (CPU or CUDA; the noise is drawn on its device, then
        moved to ``like``'s), a :class:`~sci_diffusion.generators.PerSampleGenerator` (each sample's
        rows from its own generator, so a sample's noise does not depend on its batch), or None (the
        global RNG, on ``like``'s device).
        """
        if isinstance(generator, PerSampleGenerator):
            z = per_sample_noise(generator, self.sample_of_rows(like), like)
        else:
            device = like.device if generator is None else generator.device
            z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device).to(like.device)
        return self.project(z)

    def sample_of_rows(self, like: Tensor) -> Tensor:
        """The sample id of every row of ``like`` along dim 0: ``(like.shape[0],)`` long."""
        batch = getattr(self, "batch", None)
        if batch is not None:
            return batch
        return torch.arange(like.shape[0], device=like.device)

    def project_moving(self, x: Tensor, movable: Tensor) -> Tensor:
        """Project ``x`` onto the space, changing only the entries where ``movable`` (0/1, broadcastable
        to ``x``) is 1 where the projection allows it. The default projection acts entry by entry, so
        it is ``project``; spaces with a constraint across rows (zero centre of mass) override it."""
        return self.project(x)

    @abstractmethod
    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        """Broadcast a ``(num_samples,)`` tensor so that it multiplies ``like`` row-wise."""

    @abstractmethod
    def sample_sum(self, values: Tensor) -> Tensor:
        """Sum ``values`` (shaped like x) within each sample: ``(num_samples,)``."""

    def categorical_forward(self, x_t: Tensor, x0: Tensor, t: Tensor, generator=None) -> Tensor:
        """``x_t`` (the Gaussian forward draw) with its categorical entries drawn from ``q(x_t | x0)`` at the
        per-sample times ``t`` ``(num_samples,)``; a space without categorical parts returns ``x_t``."""
        return x_t

    def categorical_reverse(self, x_t: Tensor, x0: Tensor, x_s: Tensor, t: Tensor, s: Tensor, generator=None) -> Tensor:
        """``x_s`` (a sampler's Gaussian update from ``t`` to ``s``) with its categorical entries drawn from
        ``p(x_s | x_t)``, ``x0`` holding their class probabilities; without categorical parts, ``x_s``."""
        return x_s

    def categorical_mask(self, like: Tensor) -> Tensor:
        """1 on the entries the Gaussian regression leaves out (a categorical part's and any padding), 0 on
        the others, shaped like ``like``."""
        return torch.zeros_like(like)

    def categorical_loss(self, pred: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        """``(summed cross-entropy, rows)`` of the logits in ``pred``'s categorical rows against ``x0``'s classes."""
        zero = pred.new_zeros((), dtype=torch.float32)
        return zero, zero


@dataclass
class EuclideanSpace(StateSpace):
    """R^n, with an optional 0/1 ``mask`` (broadcastable to x) outside of which x is held at 0.

    Rows group into samples along dim 0 (images: ``x`` is ``(B, C, H, W)``), or through
    ``batch`` (a ``(N,)`` long tensor of sample ids, for per-node features of graphs).
    """

    mask: Tensor | None = None
    batch: Tensor | None = None
    num_samples: int = 0

    def project(self, x: Tensor) -> Tensor:
        return x if self.mask is None else x * self.mask.to(x.dtype)

    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        per_sample = per_sample.to(like.dtype)
        if per_sample.dim() == 0:
            return per_sample
        if self.batch is not None:
            per_sample = per_sample[self.batch]
        return per_sample.reshape(-1, *([1] * (like.dim() - 1)))

    def sample_sum(self, values: Tensor) -> Tensor:
        if self.batch is None:
            return values.reshape(values.shape[0], -1).sum(1)
        out = values.new_zeros(self.num_samples)
        return out.index_add_(0, self.batch, values.reshape(values.shape[0], -1).sum(1))


class GraphRowsSpace(StateSpace):
    """A space whose rows ``(R, D)`` belong to graphs through a PyG-style ``batch`` ``(R,)`` of sample ids
    ``0..num_samples-1`` (atoms, or atom pairs): per-sample values are gathered to rows and row values
    summed per sample. Subclasses are dataclasses with the fields ``batch`` and ``num_samples``."""

    batch: Tensor
    num_samples: int

    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        per_sample = per_sample.to(like.dtype)
        return per_sample if per_sample.dim() == 0 else per_sample[self.batch][:, None]

    def sample_sum(self, values: Tensor) -> Tensor:
        out = values.new_zeros(self.num_samples)
        return out.index_add_(0, self.batch, values.reshape(values.shape[0], -1).sum(1))


@dataclass
class ZeroCoMSpace(GraphRowsSpace):
    """The zero-centre-of-mass subspace of per-node coordinates ``(N, D)``, one CoM per graph.

    ``batch`` is a PyG-style ``(N,)`` long tensor assigning each node to a graph
    ``0..num_samples-1``; graphs may differ in size. Noise is drawn in R^{N x D} and
    projected (EDM's ``sample_center_gravity_zero_gaussian_with_mask``).
    """

    batch: Tensor
    num_samples: int

    def __post_init__(self) -> None:
        ones = torch.ones_like(self.batch, dtype=torch.float64)
        self._counts = torch.zeros(self.num_samples, dtype=torch.float64, device=self.batch.device).index_add_(
            0, self.batch, ones
        )

    def centre_of_mass(self, x: Tensor) -> Tensor:
        """Unweighted mean position of each graph: ``(num_samples, D)``."""
        sums = torch.zeros(self.num_samples, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, self.batch, x)
        return sums / self._counts.to(x.dtype).clamp(min=1)[:, None]

    def project(self, x: Tensor) -> Tensor:
        return x - self.centre_of_mass(x)[self.batch]

    def project_moving(self, x: Tensor, movable: Tensor) -> Tensor:
        """Zero each graph's centre of mass by translating only its movable rows (``movable`` (N, 1)
        or (N, D), 1 on a row's entries to move), all by the same vector; a graph without movable
        rows is translated whole. Inpainting moves the known fragment this way, so the generated
        atoms keep their place and the fragment keeps its shape."""
        rows = (movable.to(x.dtype).expand_as(x)[:, :1] > 0).to(x.dtype)  # (N, 1)
        moving = torch.zeros(self.num_samples, 1, dtype=x.dtype, device=x.device).index_add_(0, self.batch, rows)
        counts = self._counts.to(x.dtype)[:, None]
        share = torch.where(moving > 0, counts / moving.clamp(min=1), torch.ones_like(moving))  # n / k per graph
        weight = torch.where(moving[self.batch] > 0, rows * share[self.batch], torch.ones_like(rows))
        return x - self.centre_of_mass(x)[self.batch] * weight


@dataclass
class ProductSpace(StateSpace):
    """A product of spaces over column blocks of ``x``: ``x = cat([x_1, x_2, ...], dim=-1)``.

    ``parts`` is a sequence of ``(space, width)``; the first part defines how rows group into
    samples. Molecules use ``[(ZeroCoMSpace(batch, G), 3), (EuclideanSpace(batch=batch), F)]``.
    """

    parts: Sequence[tuple[StateSpace, int]]

    def __post_init__(self) -> None:
        self.num_samples = self.parts[0][0].num_samples
        self._widths = [w for _, w in self.parts]
        self.categorical = any(space.categorical for space, _ in self.parts)

    def _split(self, x: Tensor) -> list[Tensor]:
        if x.shape[-1] != sum(self._widths):
            raise ValueError(f"x has {x.shape[-1]} columns but the product space has {sum(self._widths)}.")
        return list(torch.split(x, self._widths, dim=-1))

    def project(self, x: Tensor) -> Tensor:
        return torch.cat([s.project(xi) for (s, _), xi in zip(self.parts, self._split(x))], dim=-1)

    def project_moving(self, x: Tensor, movable: Tensor) -> Tensor:
        movable = movable.to(x.dtype).expand_as(x)
        return torch.cat([s.project_moving(xi, mi) for (s, _), xi, mi in
                          zip(self.parts, self._split(x), self._split(movable))], dim=-1)

    def noise(self, like: Tensor, generator: torch.Generator | PerSampleGenerator | None = None) -> Tensor:
        return torch.cat(
            [s.noise(xi, generator) for (s, _), xi in zip(self.parts, self._split(like))], dim=-1
        )

    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        return self.parts[0][0].expand(per_sample, like)

    def sample_sum(self, values: Tensor) -> Tensor:
        return self.parts[0][0].sample_sum(values)

    def categorical_forward(self, x_t: Tensor, x0: Tensor, t: Tensor, generator=None) -> Tensor:
        if not self.categorical:
            return x_t
        return torch.cat([s.categorical_forward(a, b, t, generator) for (s, _), a, b in
                          zip(self.parts, self._split(x_t), self._split(x0))], dim=-1)

    def categorical_reverse(self, x_t: Tensor, x0: Tensor, x_s: Tensor, t: Tensor, s: Tensor, generator=None) -> Tensor:
        if not self.categorical:
            return x_s
        return torch.cat([space.categorical_reverse(a, b, c, t, s, generator) for (space, _), a, b, c in
                          zip(self.parts, self._split(x_t), self._split(x0), self._split(x_s))], dim=-1)

    def categorical_mask(self, like: Tensor) -> Tensor:
        return torch.cat([s.categorical_mask(xi) for (s, _), xi in zip(self.parts, self._split(like))], dim=-1)

    def categorical_loss(self, pred: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        losses = [s.categorical_loss(p, x) for (s, _), p, x in zip(self.parts, self._split(pred), self._split(x0))]
        return sum(total for total, _ in losses), sum(rows for _, rows in losses)


@dataclass
class StackedSpace(StateSpace):
    """Spaces over row blocks of ``x``: ``x = cat([x_1, x_2, ...], dim=0)``, e.g. a molecule's atoms (a
    :class:`ProductSpace` of coordinates and features) stacked on its atom pairs (a categorical space of
    bond orders, ``categorical.py``), so that one state tensor holds both.

    ``parts`` is a sequence of ``(space, rows, width)``: block b is the next ``rows`` rows, its space sees
    their first ``width`` columns, and the rest of its columns (up to ``x``'s width, the largest) are
    padding held at 0. Every part groups its rows into the same samples through a batch vector; the first
    part's ``num_samples`` is the space's.
    """

    parts: Sequence[tuple[StateSpace, int, int]]

    def __post_init__(self) -> None:
        self.num_samples = self.parts[0][0].num_samples
        self.width = max(width for _, _, width in self.parts)
        self.categorical = any(space.categorical for space, _, _ in self.parts)

    def _split(self, x: Tensor) -> list[Tensor]:
        rows = [r for _, r, _ in self.parts]
        if x.shape[0] != sum(rows) or x.shape[1] != self.width:
            raise ValueError(f"x is {tuple(x.shape)} but the stacked space holds {sum(rows)} rows of {self.width}.")
        return [block[:, :width] for block, (_, _, width) in zip(torch.split(x, rows, dim=0), self.parts)]

    def _join(self, blocks: list[Tensor], fill: float = 0.0) -> Tensor:
        """The blocks ``(rows_b, width_b)`` stacked into ``(sum rows_b, width)``, padding filled with ``fill``."""
        return torch.cat([torch.nn.functional.pad(b, (0, self.width - b.shape[1]), value=fill) for b in blocks])

    def project(self, x: Tensor) -> Tensor:
        return self._join([s.project(b) for (s, _, _), b in zip(self.parts, self._split(x))])

    def project_moving(self, x: Tensor, movable: Tensor) -> Tensor:
        movable = self._split(movable.to(x.dtype).expand_as(x))
        return self._join([s.project_moving(b, m) for (s, _, _), b, m in zip(self.parts, self._split(x), movable)])

    def noise(self, like: Tensor, generator: torch.Generator | PerSampleGenerator | None = None) -> Tensor:
        return self._join([s.noise(b, generator) for (s, _, _), b in zip(self.parts, self._split(like))])

    def sample_of_rows(self, like: Tensor) -> Tensor:
        return torch.cat([s.sample_of_rows(b) for (s, _, _), b in zip(self.parts, self._split(like))])

    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        if per_sample.dim() == 0:
            return per_sample.to(like.dtype)
        return torch.cat([s.expand(per_sample, b).reshape(b.shape[0], 1)
                          for (s, _, _), b in zip(self.parts, self._split(like))])

    def sample_sum(self, values: Tensor) -> Tensor:
        return sum(s.sample_sum(b) for (s, _, _), b in zip(self.parts, self._split(values)))

    def categorical_forward(self, x_t: Tensor, x0: Tensor, t: Tensor, generator=None) -> Tensor:
        if not self.categorical:
            return x_t
        return self._join([s.categorical_forward(a, b, t, generator) for (s, _, _), a, b in
                           zip(self.parts, self._split(x_t), self._split(x0))])

    def categorical_reverse(self, x_t: Tensor, x0: Tensor, x_s: Tensor, t: Tensor, s: Tensor, generator=None) -> Tensor:
        if not self.categorical:
            return x_s
        return self._join([space.categorical_reverse(a, b, c, t, s, generator) for (space, _, _), a, b, c in
                           zip(self.parts, self._split(x_t), self._split(x0), self._split(x_s))])

    def categorical_mask(self, like: Tensor) -> Tensor:
        return self._join([s.categorical_mask(b) for (s, _, _), b in zip(self.parts, self._split(like))], fill=1.0)

    def categorical_loss(self, pred: Tensor, x0: Tensor) -> tuple[Tensor, Tensor]:
        losses = [s.categorical_loss(p, x) for (s, _, _), p, x in zip(self.parts, self._split(pred), self._split(x0))]
        return sum(total for total, _ in losses), sum(rows for _, rows in losses)

"""Random draws that belong to a sample, not to a batch (EDM's ``StackedRandomGenerator``).

With one ``torch.Generator`` for a whole batch, sample i's noise depends on how many samples came
before it in the batch, so the same seed gives other samples at another batch size. A
:class:`PerSampleGenerator` holds one generator per sample; a state space given one draws each
sample's rows from that sample's own generator, so sample i gets the same draws whatever batch it
is in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SEED_LIMIT = 2 ** 62


def per_sample_seeds(generator: torch.Generator | None, num: int) -> list[int]:
    """``num`` seeds drawn once from ``generator`` (None: the global RNG), one per sample in order."""
    return torch.randint(0, SEED_LIMIT, (num,), generator=generator, device="cpu" if generator is None
                         else generator.device).tolist()


class PerSampleGenerator:
    """One ``torch.Generator`` per sample, seeded from ``seeds`` on ``device`` (CPU or CUDA).

    Args:
        seeds: one integer per sample, e.g. from :func:`per_sample_seeds`.
        device: where the generators live and the noise is drawn.
    """

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, rows_per_sample: Sequence[int], trailing: Sequence[int], dtype: torch.dtype,
              device: torch.device | str) -> Tensor:
        """Standard normal rows, sample by sample: ``(sum(rows_per_sample), *trailing)``, sample i's
        ``rows_per_sample[i]`` rows from generator i, in sample order."""
        if len(rows_per_sample) != len(self.generators):
            raise ValueError(f"{len(rows_per_sample)} samples but {len(self.generators)} generators.")
        parts = [torch.randn((int(n), *trailing), generator=g, dtype=dtype, device=self.device)
                 for g, n in zip(self.generators, rows_per_sample)]
        return torch.cat(parts).to(device)

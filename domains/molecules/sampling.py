"""Drawing molecules from a trained :class:`~.module.MoleculeDiffusion` with any core sampler."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from sci_diffusion.samplers import get_sampler

from .module import FEATURE_DIM, MoleculeDiffusion, decode_atoms, molecule_space

PRECISIONS = ("bf16", "fp32")


def draw_atom_counts(histogram: dict[int, int], num: int, generator: torch.Generator) -> list[int]:
    """``num`` molecule sizes drawn from an atom-count histogram ``{n_atoms: count}``."""
    sizes = torch.tensor(sorted(histogram), dtype=torch.long)
    weights = torch.tensor([histogram[int(s)] for s in sizes], dtype=torch.float64)
    return sizes[torch.multinomial(weights, num, replacement=True, generator=generator)].tolist()


@torch.no_grad()
def sample_molecules(module: MoleculeDiffusion, atom_counts: Sequence[int], sampler: str = "dpmpp2m",
                     steps: int = 50, generator: torch.Generator | None = None, batch_size: int = 100,
                     cond: torch.Tensor | None = None, denoiser_wrapper=None,
                     progress: bool = False, precision: str = "bf16") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(atomic_numbers (n,), positions (n, 3) Angstrom)`` for each requested size.

    Molecules are sampled ``batch_size`` at a time, as one sparse PyG-style batch each, so memory
    stays bounded however many are asked for.

    Args:
        module: the trained model (in eval mode).
        atom_counts: the size of every molecule to draw.
        sampler, steps: a core sampler name and its step count.
        generator: makes the draw deterministic.
        cond: ``(len(atom_counts), P + 1)`` condition rows, or None.
        denoiser_wrapper: optional ``f(denoiser, space) -> denoiser`` (guidance).
        precision: ``"bf16"`` runs the network's matrix products under bfloat16 autocast (faster
            on CPUs with AVX512-BF16; the sampler's state and updates stay float32), or ``"fp32"``.
            ``benchmarks/molecules_qm9.py`` measures both on the bundled model.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    sample = get_sampler(sampler)
    device = next(module.parameters()).device
    for start in range(0, len(atom_counts), batch_size):
        counts = torch.as_tensor(list(atom_counts[start:start + batch_size]), dtype=torch.long)
        num_graphs = len(counts)
        batch = torch.repeat_interleave(torch.arange(num_graphs), counts).to(device)
        space = molecule_space(batch, num_graphs)
        x_T = space.noise(torch.zeros(int(counts.sum()), 3 + FEATURE_DIM, device=device), generator)
        denoiser = module.denoiser(context=(batch, num_graphs))
        if denoiser_wrapper is not None:
            denoiser = denoiser_wrapper(denoiser, space)
        c = None if cond is None else cond[start:start + num_graphs].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            x = sample(denoiser, x_T, module.schedule, steps, space, cond=c, generator=generator, progress=progress)
        for part in torch.split(x, counts.tolist()):
            pos, z = decode_atoms(part)
            yield z, pos

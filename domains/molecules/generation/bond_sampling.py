"""Drawing molecules with their bonds from a bond-aware model (``models/bond_diffusion.py``) with a core sampler.

The model offers what ``sampling.MoleculeGenerator`` names, over the stacked state of
``data/bond_state.py`` (atoms over atom pairs): ``state_space(batch, num_graphs)`` is a ``StackedSpace`` with
a categorical part, so only the samplers with a categorical step serve it (``ddpm``, ``dpmpp2m_sde``; the
others refuse in one sentence).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from sci_diffusion.compilation import compiled_forward
from sci_diffusion.denoiser import LowNoiseExpert, isolate_failed_samples
from sci_diffusion.distillation import distilled_times
from sci_diffusion.generators import PerSampleGenerator
from sci_diffusion.guidance import ClassifierFreeGuidance, classifier_free_passes
from sci_diffusion.polish import Polish
from sci_diffusion.restart import Restarts
from sci_diffusion.samplers import get_sampler

from ..chem.bond_types import NUM_BOND_CLASSES
from ..data.atom_state import decode_atoms, decode_formal_charges
from .sampling import (
    PRECISIONS,
    BatchCallback,
    Expert,
    Guidance,
    MoleculeGenerator,
    molecule_seeds,
    sample_molecules,
    with_finishing,
)


@torch.no_grad()
def sample_bonded_molecules(module: MoleculeGenerator, atom_counts: Sequence[int], sampler: str = "dpmpp2m_sde",
                            steps: int = 50, generator: torch.Generator | None = None, batch_size: int = 100,
                            progress: bool = False, precision: str = "bf16",
                            spacing: str | None = None, cond: torch.Tensor | None = None,
                            guidance: Guidance | None = None, compile_network: bool = False,
                            seeds: Sequence[int] | None = None, restarts: Restarts | None = None,
                            polish: Polish | None = None, expert: Expert | None = None) -> Iterator[tuple]:
    """Yield ``(atomic_numbers (n,), positions (n, 3) Angstrom, formal_charges (n,) or None, bond_types (n, n))``
    for each requested size: ``sampling.sample_molecules``'s molecule (``evaluation/metrics.evaluate_molecules``
    reads its first three items) with the generated bond classes (``chem/bond_types.BOND_CLASSES``) of every
    atom pair as a symmetric int64 matrix; formal charges are None for a model without them.

    Args are ``sample_molecules``' (``restarts`` too: a restart draws the bonds forward by their own process and
    back with the atoms; ``polish`` moves the atoms' coordinates only, the bonds keep their classes; ``expert``, a
    low-noise expert, answers the network calls at its times, restarts and polishing included): molecule i's
    noise comes from its own generator, seeded from ``generator``, so it is the same whatever ``batch_size``.
    ``cond`` ``(len(atom_counts), 2P)`` are a conditional model's rows
    (``PropertyConditioning.condition``); ``guidance`` may be classifier-free (its two passes as two network calls:
    the pairs follow the atoms in the state, so two molecules' copies do not stack into one batch; the bonds' class
    probabilities are extrapolated too, then clipped and renormalised by the categorical step), not gradient
    guidance (the regressors read atoms without bonds).

    Raises:
        ValueError: a sampler without a categorical step, or an unknown sampler, precision or spacing; guidance
            without a condition, or gradient guidance.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if guidance is not None and cond is None:
        raise ValueError("Guidance needs a condition to guide towards.")
    if guidance is not None and guidance.gradient_scale:
        raise ValueError("The bond-aware model takes classifier-free guidance only, not gradient guidance.")
    if guidance is not None:
        batch_size = max(1, batch_size // classifier_free_passes(guidance.scale))
    sample = with_finishing(get_sampler(sampler), restarts, polish, module, sampler, spacing)  # bonds restart too
    times = distilled_times(module, sampler, steps, spacing)
    device = next(module.parameters()).device
    seeds = molecule_seeds(generator, atom_counts, seeds)
    with compiled_forward(module.net, compile_network):
        yield from _sample_batches(module, atom_counts, sample, times, seeds, batch_size, progress, precision, cond,
                                   guidance, device, expert)


def _sample_batches(module, atom_counts, sample, times, seeds, batch_size, progress, precision, cond, guidance,
                    device, expert: Expert | None = None) -> Iterator[tuple]:
    """:func:`sample_bonded_molecules`' loop over batches of ``batch_size`` molecules, its arguments checked."""
    atom_width = 3 + module.state_features
    for start in range(0, len(atom_counts), batch_size):
        counts = torch.as_tensor(list(atom_counts[start:start + batch_size]), dtype=torch.long)
        num_graphs, num_atoms = len(counts), int(counts.sum())
        pair_counts = (counts * (counts - 1) // 2).tolist()
        batch = torch.repeat_interleave(torch.arange(num_graphs), counts).to(device)
        space = module.state_space(batch, num_graphs)
        generators = PerSampleGenerator(seeds[start:start + num_graphs], device)
        x_T = space.noise(torch.zeros(num_atoms + sum(pair_counts), space.width, device=device), generators)
        denoiser = module.denoiser(context=(batch, num_graphs))
        if expert is not None:
            denoiser = LowNoiseExpert(denoiser, expert.module.denoiser(context=(batch, num_graphs)), expert.below)
        if guidance is not None:
            denoiser = ClassifierFreeGuidance(denoiser, guidance.scale, interval=guidance.interval)
        denoiser = isolate_failed_samples(denoiser, space)
        c = None if cond is None else cond[start:start + num_graphs].to(device=device, dtype=torch.float32)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            x = sample(denoiser, x_T, module.schedule, times, space, cond=c, generator=generators, progress=progress)
        x = x.float()
        atoms, pairs = x[:num_atoms, :atom_width], x[num_atoms:, :NUM_BOND_CLASSES]
        classes = pairs.argmax(1).cpu().numpy()
        for part, bonds, n in zip(torch.split(atoms, counts.tolist()), np.split(classes, np.cumsum(pair_counts)[:-1]),
                                  counts.tolist()):
            pos, z = decode_atoms(part, module.element_set)
            types = np.zeros((n, n), dtype=np.int64)
            i, j = np.triu_indices(n, k=1)  # the pairs' order within a molecule (data/bond_state.upper_pairs)
            types[i, j] = types[j, i] = bonds
            yield z, pos, decode_formal_charges(part, module.element_set), types


def draw_molecules(module: MoleculeGenerator, atom_counts: Sequence[int], sampler: str, steps: int,
                   generator: torch.Generator | None = None, batch_size: int = 100, precision: str = "bf16",
                   compile_network: bool = False, cond: torch.Tensor | None = None, guidance: Guidance | None = None,
                   spacing: str | None = None, seeds: Sequence[int] | None = None,
                   callback: BatchCallback | None = None, restarts: Restarts | None = None,
                   polish: Polish | None = None, expert: Expert | None = None) -> Iterator[tuple]:
    """Molecules of any kind of model, with the same per-molecule seeds: a bond-aware model's through
    :func:`sample_bonded_molecules` (4-tuples with their bonds), the others' through ``sampling.sample_molecules``.
    ``callback`` (watching the first batch form) is the atoms-only samplers'; a bond-aware model refuses it. A low-noise
    ``expert`` is the bond-aware model's for now; the others refuse it."""
    shared = dict(precision=precision, compile_network=compile_network, cond=cond, guidance=guidance, spacing=spacing,
                  seeds=seeds, restarts=restarts, polish=polish)
    if getattr(module, "model_kind", "") == "bonds":
        if callback is not None:
            raise ValueError("The bond-aware model's sampler takes no callback (trajectories are the EDM model's).")
        return sample_bonded_molecules(module, atom_counts, sampler, steps, generator, batch_size, expert=expert,
                                       **shared)
    if expert is not None:
        raise ValueError("A low-noise expert samples with the bond-aware model only, for now.")
    return sample_molecules(module, atom_counts, sampler, steps, generator, batch_size, callback=callback, **shared)

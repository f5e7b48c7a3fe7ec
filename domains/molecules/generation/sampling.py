"""Drawing molecules from a trained model (``models/diffusion.py``, ``models/latent.py``) with any core sampler.

This layer sits under the models: it knows a model only through :class:`MoleculeGenerator`, the
interface a trained molecule model offers, and never imports ``models`` (the models import it, to
sample at validation).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from sci_diffusion.compilation import compiled_forward
from sci_diffusion.denoiser import PredictionDenoiser, isolate_failed_samples
from sci_diffusion.distillation import distilled_times
from sci_diffusion.errors import UserError
from sci_diffusion.generators import PerSampleGenerator, per_sample_seeds
from sci_diffusion.guidance import ClassifierFreeGuidance, PropertyGradientGuidance, classifier_free_passes
from sci_diffusion.polish import Polish
from sci_diffusion.precision import PRECISIONS
from sci_diffusion.restart import Restarts
from sci_diffusion.samplers import get_sampler, resolve_spacing
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.state_spaces import StateSpace

from ..chem.elements import ElementSet
from ..data.atom_state import decode_atoms, decode_formal_charges
from ..data.conditioning import PropertyConditioning

# callback(i, t, x_t, x0_hat, counts): the core samplers' callback plus the batch's atom counts.
BatchCallback = Callable[[int, float, Tensor, Tensor, list[int]], None]


class MoleculeGenerator(Protocol):
    """What drawing molecules needs of a trained model: ``MoleculeDiffusion`` (``models/diffusion.py``)
    and ``LatentMoleculeDiffusion`` (``models/latent.py``) offer it.

    Attributes:
        model_kind: ``"edm"`` (diffuses atoms) or ``"latent"`` (diffuses an autoencoder's latents).
        schedule: the noise schedule the model was trained with.
        element_set: the elements of its one-hot columns (and whether it diffuses formal charges).
        property_conditioning: the normalisation of its condition; None for an unconditional model.
        net: the network, which ``compile_network`` compiles.
    """

    model_kind: str
    schedule: NoiseSchedule
    element_set: ElementSet
    property_conditioning: PropertyConditioning | None
    net: torch.nn.Module

    @property
    def state_features(self) -> int:
        """Invariant columns of the diffused state per atom (the state is ``(N, 3 + state_features)``)."""

    @property
    def types_given(self) -> bool:
        """A conformer model: the atom types are given and only the positions are generated."""

    def denoiser(self, context: Any = None) -> PredictionDenoiser:
        """The x0-denoiser ``D(x_t, t, cond)`` for a batch ``context = (batch (N,), num_graphs)``."""

    def state_space(self, batch: Tensor, num_graphs: int) -> StateSpace:
        """The space the diffusion runs in, for a batch vector ``(N,)``."""

    def decode_state(self, x: Tensor, batch: Tensor, num_graphs: int, cond: Tensor | None = None) -> Tensor:
        """The atom state ``(N, 3 + F)`` (``data/atom_state.py``) of a sampled state; ``cond`` ``(G, P + 1)`` is
        the condition it was sampled with (a conditional latent model's decoder reads it), or None."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The model's parameters (their device is the sampling device)."""


def draw_atom_counts(histogram: dict[int, int], num: int, generator: torch.Generator) -> list[int]:
    """``num`` molecule sizes drawn from an atom-count histogram ``{n_atoms: count}``."""
    sizes = torch.tensor(sorted(histogram), dtype=torch.long)
    weights = torch.tensor([histogram[int(s)] for s in sizes], dtype=torch.float64)
    return sizes[torch.multinomial(weights, num, replacement=True, generator=generator)].tolist()


@dataclass
class Guidance:
    """How to steer a conditional model while sampling.

    Attributes:
        scale: classifier-free guidance weight ``w`` (1: the plain conditional model, 0: the
            unconditional one, above 1: pushed further towards the condition).
        regressor: a noise-aware ``PropertyPredictor`` (``models/property_model.py``) for gradient guidance,
            predicting (at least) the properties the model is conditioned on.
        gradient_scale: strength of the gradient guidance (0: none).
        interval: the diffusion times ``(t_low, t_high)`` at which classifier-free guidance applies
            (``ClassifierFreeGuidance``); at other times one pass of the conditional model. On the
            bundled gap model guidance acts between t = 0.1 and 0.5: there it lowers the gap MAE as
            much as at every step, at 20 of the 50 steps of the default grid (README,
            conditional table).
    """

    scale: float = 1.0
    regressor: Any = None
    gradient_scale: float = 0.0
    interval: tuple[float, float] = (0.0, 1.0)


def paired_condition_denoiser(module: MoleculeGenerator, batch: Tensor, num_graphs: int):
    """``f(x_t, t, cond, null) -> (D(x_t, t, cond), D(x_t, t, null))`` in one network call: the
    molecules are stacked twice into one graph batch, once with each condition (``null`` None
    is the all-zero, dropped condition)."""
    stacked = torch.cat([batch, batch + num_graphs])
    denoiser = module.denoiser(context=(stacked, 2 * num_graphs))

    def paired(x_t: Tensor, t: Tensor, cond: Tensor, null: Tensor | None) -> tuple[Tensor, Tensor]:
        null = torch.zeros_like(cond) if null is None else null
        both = denoiser(torch.cat([x_t, x_t]), t, torch.cat([cond, null]))
        return both[: len(x_t)], both[len(x_t):]

    return paired


def check_regressor_fits(regressor: Any, module: Any) -> None:
    """Refuse, in one sentence, a regressor that cannot guide ``module``: a classifier of clean molecules (no
    schedule), or one that reads ``x_t`` on another forward process than the generator samples on. Its noise level
    at each time ``t`` (``alpha_t``, ``sigma_t`` on 101 times in [0, 1]) must be the generator's: a regressor trained
    on another schedule, another number of steps or another time convention sees at every ``t`` another noise level
    than the one it is given, and would guide wrongly without a word.

    Raises:
        UserError: the first mismatch, naming both schedules.
    """
    if getattr(regressor, "schedule", None) is None:
        raise UserError("Gradient guidance needs a noise-aware regressor (trained on noisy states, noise_aware: true); "
                        "this checkpoint is a classifier of clean molecules.")
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)

    def described(model: Any) -> str:
        hparams = getattr(model, "hparams", {})
        return f"{hparams.get('schedule', '?')} with T = {hparams.get('timesteps', '?')}"

    for name in ("alpha", "sigma"):
        ours = getattr(module.schedule, name)(t).double()
        theirs = getattr(regressor.schedule, name)(t).double()
        if not torch.allclose(ours, theirs, rtol=0.0, atol=1e-5):
            raise UserError(f"The regressor was trained on the noise schedule {described(regressor)}, the generator "
                            f"samples on {described(module)} ({name}_t differs by up to "
                            f"{float((ours - theirs).abs().max()):.2g}): train the regressor on the generator's schedule.")


def guided_denoiser(module: MoleculeGenerator, batch: Tensor, num_graphs: int, space, guidance: Guidance | None):
    """The module's denoiser for one batch, wrapped in the requested guidance (CFG, then gradient)."""
    denoiser = module.denoiser(context=(batch, num_graphs))
    if guidance is None:
        return denoiser
    if guidance.scale != 1.0:
        denoiser = ClassifierFreeGuidance(denoiser, guidance.scale, interval=guidance.interval,
                                          paired=paired_condition_denoiser(module, batch, num_graphs))
    if guidance.gradient_scale:
        if module.model_kind != "edm":
            raise ValueError("Gradient guidance needs a model that diffuses atoms, not latents: the regressor "
                             "reads atom positions and types.")
        regressor, conditioning = guidance.regressor, module.property_conditioning
        check_regressor_fits(regressor, module)
        cols = [regressor.properties.index(n) for n in conditioning.names]

        p = len(cols)

        def property_fn(x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            predicted = regressor.to_units(regressor.predict_noisy(x_t, t, batch, num_graphs).double())
            # in the generator's normalisation, as cond; a property not asked for (flag 0) pulls nowhere
            return conditioning.normalise(predicted[:, cols]) * cond[:, p:].double()

        denoiser = PropertyGradientGuidance(denoiser, property_fn, lambda cond: (cond[:, :p] * cond[:, p:]).double(),
                                            guidance.gradient_scale, module.schedule, space.project)
    return denoiser


def with_finishing(sample: Callable[..., torch.Tensor], restarts: Restarts | None, polish: Polish | None,
                   module: MoleculeGenerator, sampler: str, spacing: str | None) -> Callable[..., torch.Tensor]:
    """``sample`` followed by ``restarts`` (on the sampler's own time spacing), then by ``polish`` of the coordinates
    only (the state's first 3 columns: the elements stay those the sampler drew); ``sample`` itself without them.

    Raises:
        UserError: restarts or polishing asked of a distilled student (it samples its own grid only), or restarts from
            a time the model's grid cannot start at (one sentence).
    """
    restarting = restarts is not None and restarts.count > 0
    polishing = polish is not None and polish.iterations > 0
    if (restarting or polishing) and getattr(module, "sampling_times", None) is not None:
        raise UserError("A distilled student samples only its own grid, so it takes no restarts or polishing; "
                        "ask them of its teacher.")
    if restarting:
        try:
            sample = restarts.wrap(sample, module.schedule, resolve_spacing(sampler, spacing))
        except ValueError as err:
            raise UserError(f"Restarts from t = {restarts.t_max:g}: {err}") from None
    return replace(polish, columns=3).wrap(sample) if polishing else sample


def molecule_seeds(generator: torch.Generator | None, atom_counts: Sequence[int], seeds: Sequence[int] | None) -> list[int]:
    """One seed per molecule: ``seeds`` as given (ValueError unless one per atom count), else drawn from ``generator``."""
    if seeds is None:
        return per_sample_seeds(generator, len(atom_counts))
    if len(seeds) != len(atom_counts):
        raise ValueError(f"{len(seeds)} seeds for {len(atom_counts)} molecules: give one seed per molecule.")
    return list(seeds)


@dataclass(frozen=True)
class Expert:
    """A low-noise expert (``sci_diffusion.denoiser.LowNoiseExpert``) of the model a run samples: ``module``, a model
    of the same kind and state trained on times up to its ``loss_max_time`` only, answers at ``t <= below``."""

    module: Any
    below: float

    @classmethod
    def of(cls, model: MoleculeGenerator, expert: Any, below: float | None = None) -> Expert:
        """``expert`` (a loaded module) as the low-noise expert of ``model``, answering at ``t <= below`` (None: the
        latest time it was trained on, its ``loss_max_time``).

        Raises:
            UserError: ``model`` is not a bond-aware model sampled on its own grid, ``expert`` is not a bond-aware
                model of the same atom features, was trained on every time, or ``below`` lies outside its times.
        """
        if getattr(model, "model_kind", None) != "bonds" or getattr(model, "sampling_times", None) is not None:
            raise UserError("A low-noise expert serves the bond-aware model's own sampler; this run's model is another "
                            "kind or a distilled student.")
        if getattr(expert, "model_kind", None) != "bonds" or expert.state_features != model.state_features:
            raise UserError(f"The expert {expert.checkpoint_path} is not a bond-aware model of the same atom features as "
                            "the model.")
        trained_below = float(expert.hparams.get("loss_max_time", 1.0))
        if trained_below >= 1.0:
            raise UserError(f"The expert {expert.checkpoint_path} was trained on every time, so it is no low-noise "
                            "expert (configs/molecules/recipes/expert_low_noise.yaml trains one).")
        below = trained_below if below is None else below
        if not 0.0 < below <= trained_below:
            raise UserError(f"The expert's time (--expert-below) must lie in (0, {trained_below:g}], the times it was "
                            f"trained on, not {below:g}.")
        return cls(expert.eval(), below)


@dataclass
class _BatchWatch:
    """The core samplers' ``callback(i, t, x_t, x0_hat)`` that passes the batch's atom counts on."""

    callback: BatchCallback
    counts: list[int]

    def __call__(self, i: int, t: float, x_t: Tensor, x0: Tensor) -> None:
        self.callback(i, t, x_t, x0, self.counts)


@torch.no_grad()
def sample_molecules(module: MoleculeGenerator, atom_counts: Sequence[int], sampler: str = "dpmpp2m",
                     steps: int = 50, generator: torch.Generator | None = None, batch_size: int = 100,
                     cond: torch.Tensor | None = None, guidance: Guidance | None = None,
                     progress: bool = False, precision: str = "bf16",
                     spacing: str | None = None, callback: BatchCallback | None = None,
                     compile_network: bool = False, seeds: Sequence[int] | None = None,
                     restarts: Restarts | None = None, polish: Polish | None = None) -> Iterator[tuple]:
    """Yield ``(atomic_numbers (n,), positions (n, 3) Angstrom)`` for each requested size, and for a
    model with formal charges ``(atomic_numbers, positions, formal_charges (n,))``.

    Molecules are sampled ``batch_size`` at a time, as one sparse PyG-style batch each, so memory
    stays bounded however many are asked for. Classifier-free guidance stacks every batch twice
    (conditional and unconditional) into one network call, so it samples ``batch_size // 2``
    molecules at a time and the network always sees at most ``batch_size`` graphs: larger calls
    are slower per graph on a CPU (the edge tensors leave the caches).

    Args:
        module: the trained model (in eval mode).
        atom_counts: the size of every molecule to draw.
        sampler, steps: a core sampler name and its step count.
        spacing: the sampler's time grid (``sci_diffusion.time_grids.SPACINGS``); None: the sampler's default.
        generator: makes the draw deterministic. One seed per molecule is drawn from it first, and
            each molecule's noise comes from its own generator (``generators.PerSampleGenerator``),
            so molecule i is the same whatever ``batch_size`` (up to float rounding, as matrix
            kernels may round differently for another batch shape).
        cond: ``(len(atom_counts), P + 1)`` condition rows (``PropertyConditioning.condition``), or None.
        guidance: classifier-free and/or gradient guidance (needs ``cond``); None samples the
            model as it is.
        precision: ``"bf16"`` runs the network's matrix products under bfloat16 autocast (faster
            on CPUs with AVX512-BF16; the sampler's state and updates stay float32), or ``"fp32"``.
            ``benchmarks/molecules_qm9.py`` measures both on the bundled model.
        callback: watches the FIRST batch form: called after each sampler step as
            ``callback(i, t, x_t, x0_hat, counts)``, the core samplers' ``callback(i, t, x_t, x0_hat)``
            (step ``i`` from 0, time ``t`` after the step, the state ``(N, 3 + F)`` and the data estimate,
            in the model's state space: latents for the latent model) plus ``counts``, the atom counts
            of the batch's molecules, whose atoms are the state's rows in that order. It runs under the
            precision's autocast; the first batch holds ``min(batch_size, len(atom_counts))`` molecules
            (``batch_size`` halved by classifier-free guidance).
        seeds: molecule i's own seed (``generators.per_sample_seeds``), one per atom count; None: drawn from
            ``generator`` first. A part of a run (``sample molecules --shard``) passes the whole run's seeds of its
            molecules, so that they come out as they do in the whole run.
        restarts: restart sampling from the end (``sci_diffusion.restart.Restarts``): each molecule, once drawn,
            carried forward to ``restarts.t_max`` and sampled back ``restarts.count`` times; None: none.
        polish: denoiser iterations at a small time after the sampler and restarts (``sci_diffusion.polish.Polish``):
            the coordinates climb to a mode of the blurred density; None: none.
        compile_network: run the network through ``torch.compile`` (``sci_diffusion.compilation``; needs
            a C++ compiler): seconds to compile once per process, then about 1.1x the molecules per second
            on this CPU (``benchmarks/molecules_conditional.py --compile`` measures it).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if guidance is not None and cond is None:
        raise ValueError("Guidance needs a condition to guide towards.")
    sample = with_finishing(get_sampler(sampler), restarts, polish, module, sampler, spacing)
    times = distilled_times(module, sampler, steps, spacing)  # the grid is built once, outside the sampler
    device = next(module.parameters()).device
    if guidance is not None:
        batch_size = max(1, batch_size // classifier_free_passes(guidance.scale))
    seeds = molecule_seeds(generator, atom_counts, seeds)  # molecule i's own seed, whatever its batch
    with compiled_forward(module.net, compile_network):
        for start in range(0, len(atom_counts), batch_size):
            counts = torch.as_tensor(list(atom_counts[start:start + batch_size]), dtype=torch.long)
            num_graphs = len(counts)
            batch = torch.repeat_interleave(torch.arange(num_graphs), counts).to(device)
            space = module.state_space(batch, num_graphs)
            generators = PerSampleGenerator(seeds[start:start + num_graphs], device)
            x_T = space.noise(torch.zeros(int(counts.sum()), 3 + module.state_features, device=device), generators)
            denoiser = isolate_failed_samples(guided_denoiser(module, batch, num_graphs, space, guidance), space)
            c = None if cond is None else cond[start:start + num_graphs].to(device=device, dtype=torch.float32)
            watch = None if callback is None or start > 0 else _BatchWatch(callback, counts.tolist())
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                x = sample(denoiser, x_T, module.schedule, times, space, cond=c, generator=generators, progress=progress,
                           callback=watch)
                x = isolate_failed_samples(module.decode_state, space)(x, batch, num_graphs, c).float()
            for part in torch.split(x, counts.tolist()):
                pos, z = decode_atoms(part, module.element_set)
                charges = decode_formal_charges(part, module.element_set)
                yield (z, pos) if charges is None else (z, pos, charges)

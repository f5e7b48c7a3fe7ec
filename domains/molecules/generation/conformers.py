"""Conformers of a given molecule and growth of a given fragment (issue 14 §2), on the EDM-style model.

- **Conformers** (``sample molecules --smiles``): the molecule is the SMILES with its hydrogens added by
  RDKit, in RDKit's atom order. Every sampler step's x0 estimate gets the molecule's atom types and is
  refined towards the distance bounds of its graph (``GraphRestrainedDenoiser``); the network supplies
  everything the bounds leave open. Holding the types alone does not work on the bundled model (see
  ``GraphRestrainedDenoiser``).
- **Fragments** (``sample molecules --fix-atoms``): the fragment's atoms (types and positions) are held
  by inpainting (``sci_diffusion.inpainting.inpaint``, RePaint with ``resample`` passes per step) and
  the remaining atoms of the requested size are generated, types and positions. In the zero-centre-of-
  mass space the fragment moves as a whole, so it keeps its shape up to one translation per molecule.

A conformer is *kept* when the connectivity that RDKit perceives from its distances
(``rdDetermineBonds.DetermineConnectivity``, covalent radii) is the input's; the others are counted.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds, rdDistGeom
from torch import Tensor

from sci_diffusion.denoiser import isolate_failed_samples
from sci_diffusion.errors import UserError
from sci_diffusion.generators import PerSampleGenerator, per_sample_seeds
from sci_diffusion.inpainting import inpaint
from sci_diffusion.samplers import get_sampler, sampler_times
from sci_diffusion.schedules import NoiseSchedule
from sci_diffusion.time_grids import time_grid

from ..chem.elements import ATOM_TYPES, QM9_ELEMENTS
from ..data.atom_state import decode_atoms, encode_atoms, molecule_space
from .sampling import MoleculeGenerator

STATE_WIDTH = 3 + len(ATOM_TYPES) + 1


def molecule_from_smiles(smiles: str):
    """The RDKit molecule of ``smiles`` with explicit hydrogens (its atoms in RDKit's order).

    Raises:
        UserError: not a SMILES RDKit can read, or elements outside H, C, N, O, F. Formal charges
            (a nitro group's N+ and O-) are kept in the written records; the model sees elements only.
    """
    mol = Chem.MolFromSmiles(smiles) if smiles and smiles.strip() else None
    if mol is None:
        raise UserError(f"--smiles {smiles!r} is not a SMILES that RDKit can read.")
    mol = Chem.AddHs(mol)
    others = sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetSymbol() not in ATOM_TYPES})
    if others:
        raise UserError(f"--smiles {smiles!r} contains {', '.join(others)}; the model knows only {', '.join(ATOM_TYPES)}.")
    return mol


def atom_state(z: np.ndarray, pos: np.ndarray | None = None) -> Tensor:
    """The EDM state ``(n, 9)`` of atoms with atomic numbers ``z``; positions zero when ``pos`` is None."""
    z = np.asarray(z, dtype=np.int64)
    positions = torch.zeros(len(z), 3) if pos is None else torch.as_tensor(np.asarray(pos), dtype=torch.float32)
    return encode_atoms(positions, torch.from_numpy(QM9_ELEMENTS.one_hot(z)), torch.as_tensor(z, dtype=torch.float32)[:, None])


@dataclass
class InpaintingTask:
    """What is known of every molecule: ``known (n, 9)`` state rows and a 0/1 ``mask (n, 9)`` of the known entries."""

    known: Tensor
    mask: Tensor

    @classmethod
    def fragment(cls, z: np.ndarray, pos: np.ndarray, atoms: int) -> InpaintingTask:
        """The fragment's atoms (first rows) fully known; ``atoms - len(z)`` more atoms generated."""
        if atoms < len(z):
            raise UserError(f"--atoms {atoms} is smaller than the fragment's {len(z)} atoms.")
        pos = np.asarray(pos, dtype=np.float64)
        known = torch.zeros(atoms, STATE_WIDTH)
        known[: len(z)] = atom_state(z, pos - pos.mean(axis=0))
        mask = torch.zeros_like(known)
        mask[: len(z)] = 1.0
        return cls(known, mask)


def inpaint_molecules(module: MoleculeGenerator, task: InpaintingTask, num: int, steps: int = 50, resample: int = 1,
                      generator: torch.Generator | None = None, batch_size: int = 100,
                      precision: str = "bf16") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``num`` molecules ``(atomic_numbers (n,), positions (n, 3) Angstrom)`` that complete ``task``.

    Molecule i draws its noise from its own generator (``per_sample_seeds``), so it does not depend on
    ``batch_size``.
    """
    if getattr(module, "model_kind", None) != "edm":
        raise UserError("Inpainting needs a model that diffuses atoms (the EDM-style model), not latents.")
    if module.types_given:
        raise UserError("A conformer model (types_given) generates positions for given atoms: use it with --smiles, "
                        "not --fix-atoms.")
    if module.element_set != QM9_ELEMENTS:
        raise UserError(f"Conformers and fragment growth work with QM9's element set only, not with this model's "
                        f"{module.element_set.describe()}.")
    n = task.known.shape[0]
    device = next(module.parameters()).device
    seeds = per_sample_seeds(generator, num)
    for start in range(0, num, batch_size):
        graphs = min(batch_size, num - start)
        batch = torch.arange(graphs, device=device).repeat_interleave(n)
        space = module.state_space(batch, graphs)
        generators = PerSampleGenerator(seeds[start:start + graphs], device)
        known, mask = task.known.repeat(graphs, 1).to(device), task.mask.repeat(graphs, 1).to(device)
        x_T = space.noise(torch.zeros(graphs * n, STATE_WIDTH, device=device), generators)
        denoiser = isolate_failed_samples(module.denoiser(context=(batch, graphs)), space)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            x = inpaint(denoiser, x_T, module.schedule, time_grid(module.schedule, steps, "uniform"), space, known, mask,
                        resample=resample, generator=generators).float()
        for part in torch.split(x, n):
            pos, z = decode_atoms(part)
            yield z, pos


def skeleton(z: np.ndarray, bonds: set[tuple[int, int]]):
    """An RDKit graph of elements ``z`` joined by single bonds ``bonds``: connectivity without bond orders."""
    mol = Chem.RWMol()
    for number in z:
        atom = Chem.Atom(int(number))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    for i, j in sorted(bonds):
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    return mol.GetMol()


def perceived_bonds(z: np.ndarray, pos: np.ndarray) -> set[tuple[int, int]]:
    """Bonded atom pairs ``(i < j)`` that RDKit perceives from distances (covalent radii)."""
    mol = with_conformer(skeleton(z, set()), pos)
    rdDetermineBonds.DetermineConnectivity(mol)
    return graph_bonds(mol)


def graph_bonds(mol) -> set[tuple[int, int]]:
    """Bonded atom pairs ``(i < j)`` of an RDKit molecule's graph."""
    return {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}


def match_connectivity(mol, z: np.ndarray, pos: np.ndarray) -> np.ndarray | None:
    """The atom order that maps a generated geometry onto ``mol``'s graph, or None if its connectivity differs.

    The model knows the atom types, not which atom bonds to which, so equal atoms may swap places (any
    of a carbon's hydrogens) or the geometry may be another isomer. The check: RDKit's connectivity
    perceived from the distances, as a graph of elements, is isomorphic to ``mol``'s (same bond
    count and a substructure match covering every atom).

    Returns:
        ``order (n,)``: generated atom ``order[i]`` plays ``mol``'s atom i; None when not isomorphic.
    """
    bonds = perceived_bonds(z, pos)
    if len(bonds) != mol.GetNumBonds():
        return None
    reference = skeleton(np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), graph_bonds(mol))
    match = skeleton(z, bonds).GetSubstructMatch(reference)
    return np.asarray(match, dtype=np.int64) if len(match) == mol.GetNumAtoms() else None


def with_conformer(mol, pos: np.ndarray):
    """A copy of ``mol`` whose only conformer has positions ``pos (n, 3)`` Angstrom."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    conformer = Chem.Conformer(out.GetNumAtoms())
    for i, p in enumerate(np.asarray(pos, dtype=np.float64)):
        conformer.SetAtomPosition(i, p.tolist())
    out.AddConformer(conformer, assignId=True)
    return out


def fragment_rmsd(fragment_pos: np.ndarray, generated_pos: np.ndarray) -> float:
    """RMSD (Angstrom) between a fragment and its generated copy (first rows) after removing the translation."""
    a = np.asarray(fragment_pos, dtype=np.float64)
    b = np.asarray(generated_pos, dtype=np.float64)[: len(a)]
    return float(np.sqrt((((a - a.mean(0)) - (b - b.mean(0))) ** 2).sum(1).mean()))


def distance_bounds(mol) -> tuple[Tensor, Tensor]:
    """RDKit's distance-geometry bounds ``(lower (n, n), upper (n, n))`` in Angstrom for ``mol`` (with its Hs).

    The bounds come from the molecular graph alone (``rdDistGeom.GetMoleculeBoundsMatrix``): bond lengths
    for bonded pairs, angle ranges for 1-3 pairs, torsion ranges for 1-4 pairs and van der Waals contact
    for the rest; the same bounds ETKDG embeds from.
    """
    bounds = torch.as_tensor(rdDistGeom.GetMoleculeBoundsMatrix(mol), dtype=torch.float32)
    upper, lower = torch.triu(bounds, 1), torch.tril(bounds, -1)
    return lower + lower.T, upper + upper.T


class GraphRestrainedDenoiser:
    """An x0-denoiser for a batch of given molecules whose estimate keeps each molecule's types and graph.

    After every network call the estimate's atom features are set to the molecules' (row r of the batch
    is a fixed atom of a fixed molecule), and its positions are refined towards each molecule's distance
    bounds (``distance_bounds``, ``restrain``) and re-centred. The sampler then steps towards an estimate
    with the input's connectivity; what the bounds leave free (torsions, ring puckers, bond lengths
    inside their bounds) is the network's.

    Types alone are not enough: with only the atom types held (RePaint, or the estimate's types replaced),
    the bundled model places an atom wherever its noise starts and then cannot honour a type it did
    not expect there; with the types assigned to the nodes that want them, it draws valid molecules of
    the right formula but other isomers (0 of 80 on QM9 test molecules had the input's connectivity).

    Args:
        denoiser: the model's x0-denoiser over the batch (rows in the order of ``mols``, ``copies`` each).
        mols: RDKit molecules with their hydrogens.
        copies: graphs per molecule, consecutive in the batch.
        iterations: refinement passes over the bounds per network call.
        types_given: the network is a conformer model (``MoleculeDiffusion(types_given=True)``): it reads
            the molecules' atom features clean in its input, whatever the state holds there.
    """

    def __init__(self, denoiser, mols: list, copies: int = 1, iterations: int = 50, types_given: bool = False) -> None:
        self.denoiser, self.iterations, self.types_given = denoiser, iterations, types_given
        features, pairs, graph, offset = [], [], [], 0
        for mol in mols:
            z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
            lower, upper = distance_bounds(mol)
            i, j = torch.triu_indices(len(z), len(z), 1)
            for _ in range(copies):
                features.append(atom_state(z)[:, 3:])
                pairs.append(torch.stack([i + offset, j + offset, lower[i, j], upper[i, j]], dim=1))
                graph.append(torch.full((len(z),), len(graph)))
                offset += len(z)
        self.features = torch.cat(features)
        self.pairs = torch.cat(pairs)
        self.batch = torch.cat(graph)

    def restrain(self, pos: Tensor) -> Tensor:
        """Positions ``(N, 3)`` moved towards the distance bounds, every graph re-centred.

        Each pass moves both atoms of every pair outside its bounds half-way to the nearest bound along
        their separation, every atom by the mean of its corrections (the classic distance-geometry
        refinement: stable without a step size, and atoms that meet every bound stay put).
        """
        i, j = self.pairs[:, 0].long(), self.pairs[:, 1].long()
        lower, upper = self.pairs[:, 2], self.pairs[:, 3]
        p = pos.detach().float().clone()
        for _ in range(self.iterations):
            v = p[i] - p[j]
            d = (v.square().sum(-1) + 1e-12).sqrt()
            target = torch.minimum(torch.maximum(d, lower), upper)
            violating = (target != d).float()
            if not violating.any():
                break
            correction = (0.5 * (target - d) / d)[:, None] * v
            delta = torch.zeros_like(p).index_add_(0, i, correction).index_add_(0, j, -correction)
            count = torch.zeros(len(p)).index_add_(0, i, violating).index_add_(0, j, violating)
            p = p + delta / count.clamp(min=1)[:, None]
        graphs = int(self.batch.max()) + 1
        centre = torch.zeros(graphs, 3).index_add_(0, self.batch, p) / torch.bincount(self.batch, minlength=graphs)[:, None]
        return (p - centre[self.batch]).to(pos.dtype)

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        if self.types_given:
            x = torch.cat([x[:, :3], self.features.to(x)], dim=1)
        x0 = self.denoiser(x, t, cond)
        with torch.autocast(x0.device.type, enabled=False):
            pos = self.restrain(x0[:, :3].float().cpu()).to(x0)
        return torch.cat([pos, self.features.to(x0)], dim=1)


def generate_conformers(module: MoleculeGenerator | None, mols: list, copies: int, sampler: str = "dpmpp2m_sde",
                        steps: int = 50, generator: torch.Generator | None = None,
                        precision: str = "bf16") -> list[list[np.ndarray]]:
    """``copies`` conformers ``(n, 3)`` Angstrom (atoms in each molecule's own order) of every molecule.

    All ``len(mols) * copies`` graphs are one batch through ``sampler`` with a
    ``GraphRestrainedDenoiser``. ``module=None`` replaces the network by a denoiser that predicts the
    current state itself: the bounds refinement alone, the ablation that shows what the network adds.
    """
    if module is not None and getattr(module, "model_kind", None) != "edm":
        raise UserError("Conformers need a model that diffuses atoms (the EDM-style model), not latents.")
    sizes = [mol.GetNumAtoms() for mol in mols for _ in range(copies)]
    device = torch.device("cpu") if module is None else next(module.parameters()).device
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes)).to(device)
    space = molecule_space(batch, len(sizes))
    if module is None:
        def network(x, t, cond):  # noqa: ANN001 - the ablation's "denoiser": the state is its own estimate
            return x
    else:
        network = module.denoiser(context=(batch, len(sizes)))
    denoiser = GraphRestrainedDenoiser(network, mols, copies, types_given=module is not None and module.types_given)
    generators = PerSampleGenerator(per_sample_seeds(generator, len(sizes)), device)
    x_T = space.noise(torch.zeros(int(sum(sizes)), STATE_WIDTH, device=device), generators)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        schedule = module.schedule if module else _default_schedule()
        x = get_sampler(sampler)(denoiser, x_T, schedule, sampler_times(sampler, schedule, steps), space,
                                 generator=generators).float()
    parts = [p[:, :3].cpu().numpy().astype(np.float64) for p in torch.split(x, sizes)]
    return [parts[m * copies:(m + 1) * copies] for m in range(len(mols))]


def _default_schedule() -> NoiseSchedule:
    return NoiseSchedule.from_name("polynomial_2", 1000)


def bound_violation(mol, pos: np.ndarray) -> float:
    """The largest violation (Angstrom) of ``mol``'s distance bounds by positions ``pos (n, 3)``."""
    lower, upper = distance_bounds(mol)
    p = torch.as_tensor(np.asarray(pos), dtype=torch.float32)
    d = (p[:, None] - p[None]).square().sum(-1).sqrt()
    off = ~torch.eye(len(p), dtype=torch.bool)
    return float(torch.maximum(d - upper, lower - d)[off].clamp(min=0).max()) if len(p) > 1 else 0.0

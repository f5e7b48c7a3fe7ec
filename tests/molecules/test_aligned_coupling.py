"""The aligned noise-data coupling (``data/aligned_coupling.py``): Kabsch finds proper rotations and recovers a
known one, the assignment recovers a known permutation, the coupled noise is closer to the data, keeps zero
centre of mass and is a rearrangement of the draw, and training with it changes the noise but not the data.
Then the flow arm's config trains a few steps and samples through the harness's calls."""
from pathlib import Path

import pytest
import torch
import yaml

from sci_diffusion.checkpoints import load_module
from sci_diffusion.module import DiffusionBatch
from sci_diffusion.state_spaces import EuclideanSpace
from sci_diffusion_molecules.data.aligned_coupling import aligned_coupling, kabsch_rotations, noise_coupling, optimal_assignment
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.generation.sampling import sample_molecules
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

from .conftest import fit_tiny

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "molecules" / "recipes" / "d_flow_aligned.yaml"


def random_rotations(n: int, seed: int) -> torch.Tensor:
    """``(n, 3, 3)`` proper rotations (QR of Gaussian matrices, signs fixed so that det = +1)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    return q * torch.linalg.det(q)[:, None, None]  # a reflection times -1 is a rotation in 3-D


@pytest.fixture(scope="module")
def flow_model():
    return MoleculeDiffusion(hidden=16, layers=1, schedule="rectified_flow", prediction="x0", coupling="aligned")


def test_kabsch_recovers_a_known_rotation_and_is_always_proper(qm9_batch):
    batch, G = qm9_batch.batch, qm9_batch.num_graphs
    pos = qm9_batch.pos.double()
    pos = pos - torch.zeros(G, 3, dtype=torch.float64).index_add_(0, batch, pos)[batch] / torch.bincount(batch)[batch, None]
    known = random_rotations(G, 0)
    rotated = torch.einsum("nij,nj->ni", known[batch], pos)
    torch.testing.assert_close(kabsch_rotations(pos, rotated, batch, G), known, rtol=1e-9, atol=1e-9)
    # against an unrelated (noise) target, the best rotation is still proper, never a reflection
    noise = torch.randn(pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    R = kabsch_rotations(noise, pos, batch, G)
    torch.testing.assert_close(R @ R.mT, torch.eye(3, dtype=torch.float64).expand(G, 3, 3), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(G, dtype=torch.float64))
    # and it is the best one: no random rotation brings the noise closer to the data
    best = (torch.einsum("nij,nj->ni", R[batch], noise) - pos).pow(2).sum()
    for Q in random_rotations(50, 2):
        assert best <= (noise @ Q.T - pos).pow(2).sum() + 1e-9


def test_assignment_recovers_a_known_permutation_within_each_molecule(qm9_batch):
    batch, G = qm9_batch.batch, qm9_batch.num_graphs
    pos = qm9_batch.pos.double()
    perm = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(i)) + start for i, (start, n) in
                      enumerate(zip(qm9_batch.ptr[:-1].tolist(), torch.bincount(batch).tolist()))])
    noise = pos[perm] + 0.01 * torch.randn(pos.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    order = optimal_assignment(noise, pos, batch, G)
    assert torch.equal(batch[order], batch)  # never across molecules
    torch.testing.assert_close(noise[order], pos, atol=0.05, rtol=0)  # each data atom finds its own noisy copy
    assert torch.equal(perm[order], torch.arange(len(pos)))


def test_the_coupled_noise_is_closer_to_the_data_keeps_zero_com_and_is_the_same_draw_rearranged(qm9_batch, flow_model):
    b = flow_model.prepare_batch(qm9_batch)
    eps = b.space.noise(b.x0, torch.Generator().manual_seed(0))
    coupled = aligned_coupling(eps, b.x0, b)
    assert coupled.shape == eps.shape and coupled.dtype == eps.dtype
    distance = lambda e: (e[:, :3] - b.x0[:, :3]).pow(2).sum(1).mean()  # noqa: E731  (A^2 per atom)
    assert distance(coupled) < 0.5 * distance(eps), (distance(coupled), distance(eps))
    com = torch.zeros(b.num_samples, 3).index_add_(0, qm9_batch.batch, coupled[:, :3])
    assert com.abs().max() < 1e-5
    # a rearrangement: the type noise is the draw's rows permuted within each molecule, and each molecule's
    # coordinate noise keeps its norm (a rotation of permuted rows)
    assert torch.equal(coupled[:, 3:].sort(0).values, eps[:, 3:].sort(0).values)
    norms = lambda e: torch.zeros(b.num_samples).index_add_(0, qm9_batch.batch, e[:, :3].pow(2).sum(1))  # noqa: E731
    torch.testing.assert_close(norms(coupled), norms(eps), rtol=1e-5, atol=1e-5)


def test_training_with_the_coupling_changes_the_noise_but_not_the_data(qm9_batch, flow_model):
    b = flow_model.prepare_batch(qm9_batch)
    kept = b.x0.clone()
    coupled = flow_model.loss_fn.noise(b, torch.Generator().manual_seed(0))
    independent = MoleculeDiffusion(hidden=16, layers=1, schedule="rectified_flow", prediction="x0").loss_fn
    plain = independent.noise(b, torch.Generator().manual_seed(0))
    assert torch.equal(b.x0, kept)
    assert not torch.allclose(coupled.eps, plain.eps)
    torch.testing.assert_close(coupled.eps, aligned_coupling(plain.eps, b.x0, b))
    torch.testing.assert_close(coupled.x_t, (1 - coupled.t.float()[qm9_batch.batch, None]) * b.x0
                               + coupled.t.float()[qm9_batch.batch, None] * coupled.eps)


def test_a_wrong_coupling_or_state_is_one_sentence():
    with pytest.raises(ValueError, match="Unknown noise coupling 'ot'"):
        MoleculeDiffusion(hidden=16, layers=1, coupling="ot")
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="needs a molecule state"):
        aligned_coupling(x, x, DiffusionBatch(x, EuclideanSpace()))
    assert noise_coupling("independent") is None and MoleculeDiffusion(hidden=16, layers=1).loss_fn.coupling is None


def test_the_flow_arm_trains_loads_and_samples_as_the_study_does(tmp_path):
    """Arm (d)'s model at a tiny size: a few training steps, then load_module and sample_molecules with the ODE
    sampler, as benchmarks/molecules_recipes.py scores it."""
    args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    model = MoleculeDiffusion(**{**args, "hidden": 16, "layers": 1})
    data = QM9DataModule(batch_size=8, limit=64)
    loaded = load_module(fit_tiny(model, data, tmp_path), domain="molecules")
    assert loaded.schedule.name == "rectified_flow" and loaded.loss_fn.coupling is aligned_coupling
    molecules = list(sample_molecules(loaded, [5, 9], "ddim", 4, torch.Generator().manual_seed(0)))
    assert [len(z) for z, _ in molecules] == [5, 9]
    assert all(torch.isfinite(torch.as_tensor(pos)).all() for _, pos in molecules)

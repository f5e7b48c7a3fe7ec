"""The e3nn tensor-product denoiser: E(3) and permutation equivariance, molecules that do not
interact, zero CoM, and a tiny fit on real QM9 whose checkpoint loads and samples."""
import pytest
import torch
from e3nn import o3

from sci_diffusion.checkpoints import load_module
from sci_diffusion_molecules.data.atom_state import molecule_space
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.generation.sampling import sample_molecules
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion
from sci_diffusion_molecules.models.e3nn_backbone import E3nnDenoiser

from .conftest import centred_state, fit_tiny, permuted_first_molecule, predict


@pytest.fixture(scope="module", params=[1, 2], ids=["lmax1", "lmax2"])
def net(request):
    torch.manual_seed(0)
    # float64 throughout, so roundoff cannot hide or fake an equivariance error; built in float64 too,
    # since e3nn computes its Clebsch-Gordan constants in the default dtype at construction
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = MoleculeDiffusion(backbone="e3nn", hidden=16, layers=2, lmax=request.param, ema_decay=0)
    finally:
        torch.set_default_dtype(default)
    assert isinstance(m.net, E3nnDenoiser)
    return m.net.eval().double()


def test_coordinates_rotate_and_features_stay_invariant_under_e3nn_rotations(net, qm9_batch):
    x = centred_state(qm9_batch)
    out = predict(net, qm9_batch, x)
    assert out[:, :3].abs().max() > 1e-2 and out[:, 3:].abs().max() > 1e-2  # not an empty test
    for seed in range(3):
        torch.manual_seed(seed)
        R = o3.rand_matrix(dtype=torch.float64)
        shift = torch.randn(1, 3, dtype=torch.double) * 5
        x_rot = x.clone()
        x_rot[:, :3] = x[:, :3] @ R.T + shift
        out_rot = predict(net, qm9_batch, x_rot)
        torch.testing.assert_close(out_rot[:, :3], out[:, :3] @ R.T, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(out_rot[:, 3:], out[:, 3:], atol=1e-9, rtol=1e-9)


def test_a_reflection_flips_the_coordinate_output(net, qm9_batch):
    """E(3), not just SE(3): the position output is a polar vector (1o), the features scalars (0e)."""
    x = centred_state(qm9_batch)
    x_ref = x.clone()
    x_ref[:, :3] = -x[:, :3]
    out, out_ref = predict(net, qm9_batch, x), predict(net, qm9_batch, x_ref)
    torch.testing.assert_close(out_ref[:, :3], -out[:, :3], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out_ref[:, 3:], out[:, 3:], atol=1e-9, rtol=1e-9)


def test_permuting_atoms_permutes_the_output(net, qm9_batch):
    b1, b2, perm = permuted_first_molecule(qm9_batch)
    out1, out2 = predict(net, b1, centred_state(b1)), predict(net, b2, centred_state(b2))
    torch.testing.assert_close(out2, out1[perm], atol=1e-10, rtol=1e-10)


def test_molecules_in_one_batch_do_not_interact(net, qm9_batch):
    x = centred_state(qm9_batch)
    out = predict(net, qm9_batch, x)
    b = qm9_batch.batch == 1
    x2 = x.clone()
    x2[b] = molecule_space(qm9_batch.batch, qm9_batch.num_graphs).project(x2 + torch.randn_like(x2))[b]
    out2 = predict(net, qm9_batch, x2)
    assert (out2[b] - out[b]).abs().max() > 1e-3  # molecule 1 did change
    torch.testing.assert_close(out2[~b], out[~b], atol=1e-12, rtol=0)


def test_the_coordinate_output_has_zero_centre_of_mass(net, qm9_batch):
    x = centred_state(qm9_batch)
    x[:, :3] += 3.0  # even off-centre input gives a zero-CoM output
    out = predict(net, qm9_batch, x)
    com = torch.zeros(qm9_batch.num_graphs, 3, dtype=out.dtype).index_add_(0, qm9_batch.batch, out[:, :3])
    assert com.abs().max() < 1e-10


def test_two_atoms_at_one_place_keep_a_finite_gradient(net):
    x = torch.zeros(2, 9, dtype=torch.double, requires_grad=True)
    out = net(x, torch.tensor(0.5, dtype=torch.double), None, torch.zeros(2, dtype=torch.long), 1)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_a_condition_enters_as_invariant_input(qm9_batch):
    torch.manual_seed(0)
    net = E3nnDenoiser(hidden=16, layers=2, cond_dim=2).double()
    x = centred_state(qm9_batch)
    g = qm9_batch.num_graphs
    cond = torch.randn(g, 2, dtype=torch.double)
    t = torch.full((g,), 0.3, dtype=torch.double)
    out = net(x, t, cond, qm9_batch.batch, g)
    assert not torch.allclose(out, net(x, t, None, qm9_batch.batch, g))
    R = o3.rand_matrix(dtype=torch.float64)
    x_rot = x.clone()
    x_rot[:, :3] = x[:, :3] @ R.T
    out_rot = net(x_rot, t, cond, qm9_batch.batch, g)
    torch.testing.assert_close(out_rot[:, :3], out[:, :3] @ R.T, atol=1e-9, rtol=1e-9)


def test_an_unknown_backbone_or_lmax_is_refused_and_the_default_stays_the_egnn():
    from sci_diffusion_molecules.models.egnn import EGNN

    with pytest.raises(ValueError, match="backbone"):
        MoleculeDiffusion(backbone="painn")
    with pytest.raises(ValueError, match="lmax"):
        MoleculeDiffusion(backbone="e3nn", hidden=16, layers=1, lmax=3)
    assert isinstance(MoleculeDiffusion(hidden=16, layers=1).net, EGNN)


def test_a_tiny_e3nn_fit_saves_a_checkpoint_that_loads_and_samples(tmp_path):
    model = MoleculeDiffusion(backbone="e3nn", hidden=16, layers=2, ema_decay=0.9, val_molecules=0)
    ckpt = fit_tiny(model, QM9DataModule(batch_size=16, limit=64), tmp_path)
    loaded = load_module(ckpt, domain="molecules")
    assert loaded.hparams.backbone == "e3nn" and isinstance(loaded.net, E3nnDenoiser)
    mols = list(sample_molecules(loaded, [5, 8], "dpmpp2m", 2, torch.Generator().manual_seed(0)))
    assert [len(z) for z, _ in mols] == [5, 8]
    for z, pos in mols:
        assert pos.shape == (len(z), 3) and abs(pos.mean(0)).max() < 1e-5 * max(1.0, abs(pos).max())


def test_a_checkpoint_without_a_backbone_hparam_loads_as_an_egnn(tiny_checkpoint, tmp_path):
    """Checkpoints saved before the option existed hold no ``backbone``: they stay EGNNs."""
    from sci_diffusion_molecules.models.egnn import EGNN

    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    for key in ("backbone", "lmax"):
        ckpt["hyper_parameters"].pop(key, None)
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    loaded = load_module(old, domain="molecules")
    assert isinstance(loaded.net, EGNN) and loaded.hparams.get("backbone", "egnn") == "egnn"

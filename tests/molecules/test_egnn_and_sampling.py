"""The EDM denoiser: E(3) and permutation equivariance, zero CoM, and a tiny fit on real QM9."""
import lightning as L
import pytest
import torch
from e3nn import o3

from sci_diffusion.checkpoints import load_module
from sci_diffusion.denoiser import failed_samples, isolate_failed_samples
from sci_diffusion.names import SAMPLER_NAMES
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.generation.sampling import sample_molecules
from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion
from sci_diffusion_molecules.models.egnn import fully_connected_edges

from .conftest import centred_state, permuted_first_molecule, predict


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MoleculeDiffusion(hidden=32, layers=3, ema_decay=0)
    # the coordinate head starts near zero (gain 0.001); perturb it so the test sees real motion
    with torch.no_grad():
        for block in m.net.blocks:
            block.update.mlp[-1].weight.normal_(0, 0.3)
    return m.eval().double()  # float64, so roundoff cannot hide or fake an equivariance error


def test_fully_connected_edges_cover_every_ordered_pair_inside_each_graph():
    batch = torch.tensor([0, 0, 0, 1, 1, 2])
    edges = fully_connected_edges(batch, 3)
    assert edges.shape[1] == 3 * 2 + 2 * 1 + 0
    assert set(map(tuple, edges.T.tolist())) == {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)}


def test_coordinates_rotate_and_features_stay_invariant_under_e3nn_rotations(model, qm9_batch):
    x = centred_state(qm9_batch)
    out = predict(model.net, qm9_batch, x)
    assert out[:, :3].abs().max() > 1e-3  # the test would be empty if the network did not move atoms
    for seed in range(3):
        torch.manual_seed(seed)
        R = o3.rand_matrix().double()
        shift = torch.randn(1, 3, dtype=torch.double) * 5
        x_rot = x.clone()
        x_rot[:, :3] = x[:, :3] @ R.T + shift
        out_rot = predict(model.net, qm9_batch, x_rot)
        torch.testing.assert_close(out_rot[:, :3], out[:, :3] @ R.T, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out_rot[:, 3:], out[:, 3:], atol=1e-4, rtol=1e-4)


def test_permuting_atoms_permutes_the_output(model, qm9_batch):
    b1, b2, perm = permuted_first_molecule(qm9_batch)
    out1, out2 = predict(model.net, b1, centred_state(b1)), predict(model.net, b2, centred_state(b2))
    torch.testing.assert_close(out2, out1[perm], atol=1e-8, rtol=1e-8)


def test_network_output_and_sampled_molecules_have_zero_centre_of_mass(model, qm9_batch):
    out = predict(model.net, qm9_batch, centred_state(qm9_batch))
    com = torch.zeros(qm9_batch.num_graphs, 3, dtype=out.dtype).index_add_(0, qm9_batch.batch, out[:, :3])
    assert com.abs().max() < 1e-8
    torch.manual_seed(0)
    fresh = MoleculeDiffusion(hidden=32, layers=3, ema_decay=0).eval()  # float32, as the CLI samples
    for z, pos in sample_molecules(fresh, [4, 9, 17], "dpmpp2m", 5, torch.Generator().manual_seed(0)):
        assert abs(pos.mean(0)).max() < 1e-6 * max(1.0, abs(pos).max()) and len(z) == len(pos)


def fixed_batch_loss(model, batch, zero_network: bool = False) -> float:
    """The model's loss on one batch with fixed noise and times (or that of a network answering zeros)."""
    net_forward = model.net.forward
    if zero_network:
        model.net.forward = lambda x_t, *args, **kwargs: torch.zeros_like(x_t)
    try:
        with torch.no_grad():
            return float(model.loss_fn(model, model.prepare_batch(batch), torch.Generator().manual_seed(0)))
    finally:
        model.net.forward = net_forward


def test_tiny_fit_on_real_qm9_runs_lowers_the_loss_and_saves_a_usable_checkpoint(tmp_path):
    """Three epochs on 320 real molecules: on a held batch with fixed noise, the loss falls well below the untrained
    network's and below a network that answers zeros (which knows nothing and is not the loss's maximum)."""
    L.seed_everything(0)
    data = QM9DataModule(batch_size=32, limit=320)
    model = MoleculeDiffusion(hidden=32, layers=2, lr=1e-3, ema_decay=0.9, val_molecules=4, val_steps=4)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    untrained, zero = fixed_batch_loss(model, batch), fixed_batch_loss(model, batch, zero_network=True)
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path, enable_progress_bar=False, log_every_n_steps=1,
                        limit_val_batches=2, enable_model_summary=False)
    trainer.fit(model, data)
    trained = fixed_batch_loss(model.eval(), batch)
    assert trained < 0.6 * untrained and trained < 0.9 * zero, (untrained, zero, trained)  # measured: 1.75, 0.98, 0.79
    assert "val/atom_stability" in trainer.callback_metrics
    ckpt = next((tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt"))
    loaded = load_module(ckpt, domain="molecules")
    assert loaded.atom_count_histogram == data.atom_count_histogram
    with pytest.raises(Exception, match="molecules"):
        load_module(ckpt, domain="medical")


def test_bf16_autocast_changes_the_network_only_at_bfloat16_precision(qm9_batch):
    torch.manual_seed(0)
    m = MoleculeDiffusion(hidden=32, layers=3, ema_decay=0).eval()
    with torch.no_grad():
        for block in m.net.blocks:
            block.update.mlp[-1].weight.normal_(0, 0.3)
    x = centred_state(qm9_batch).float()
    with torch.no_grad():
        exact = predict(m.net, qm9_batch, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = predict(m.net, qm9_batch, x)
    assert fast.dtype == torch.float32  # the sampler's state never drops to bfloat16
    error = (fast - exact).abs().max() / exact.abs().max()
    assert 0 < error < 3e-2  # engaged (not bit-identical) and within bfloat16's 8-bit mantissa


def test_bf16_sampling_keeps_zero_centre_of_mass_and_refuses_an_unknown_precision():
    torch.manual_seed(0)
    fresh = MoleculeDiffusion(hidden=32, layers=3, ema_decay=0).eval()
    for _, pos in sample_molecules(fresh, [5, 11], "dpmpp2m_sde", 4, torch.Generator().manual_seed(0), precision="bf16"):
        assert pos.dtype.name == "float64" and abs(pos.mean(0)).max() < 1e-6 * max(1.0, abs(pos).max())
    with pytest.raises(ValueError, match="precision"):
        next(sample_molecules(fresh, [5], precision="fp16"))


def edm_equivariant_block(h, x, edge_index, d2_input, w, coords_range):
    """One EDM ``EquivariantBlock`` with one ``GCL`` (``egnn_new.py``), written out from EDM's
    equations on dense weight matrices ``w`` (a dict of (W, b) pairs)."""
    silu = torch.nn.functional.silu
    row, col = edge_index
    coord_diff = x[row] - x[col]
    radial = (coord_diff ** 2).sum(1, keepdim=True)  # coord2diff
    coord_diff = coord_diff / (torch.sqrt(radial + 1e-8) + 1.0)  # norm_constant = 1
    edge_attr = torch.cat([radial, d2_input], dim=1)

    def lin(name, v):
        W, b = w[name]
        return v @ W.T + (0 if b is None else b)

    # GCL.edge_model: edge_mlp = Linear, SiLU, Linear, SiLU on cat[h_row, h_col, edge_attr]; attention
    mij = silu(lin("edge2", silu(lin("edge1", torch.cat([h[row], h[col], edge_attr], 1)))))
    mij = mij * torch.sigmoid(lin("att", mij))
    agg = torch.zeros_like(h).index_add_(0, row, mij)  # unsorted_segment_sum, normalization_factor 1
    h = h + lin("node2", silu(lin("node1", torch.cat([h, agg], 1))))  # GCL.node_model, residual
    # EquivariantUpdate.coord_model: coord_mlp = Linear, SiLU, Linear, SiLU, Linear(no bias); tanh
    phi = lin("coord3", silu(lin("coord2", silu(lin("coord1", torch.cat([h[row], h[col], edge_attr], 1))))))
    trans = coord_diff * torch.tanh(phi) * coords_range
    return h, x + torch.zeros_like(x).index_add_(0, row, trans)


def dense_weights(block):
    """EDM's dense matrices from one of our blocks (our first edge layer is split per node)."""
    def first(split):
        W = torch.cat([split.receiver.weight, split.sender.weight, split.edge.weight], dim=1)
        return W, split.receiver.bias

    conv, update = block.convs[0], block.update
    return {"edge1": first(conv.edge_in), "edge2": (conv.edge_out[1].weight, conv.edge_out[1].bias),
            "att": (conv.attention[0].weight, conv.attention[0].bias),
            "node1": (conv.node_mlp[0].weight, conv.node_mlp[0].bias),
            "node2": (conv.node_mlp[2].weight, conv.node_mlp[2].bias),
            "coord1": first(update.edge_in), "coord2": (update.mlp[1].weight, update.mlp[1].bias),
            "coord3": (update.mlp[3].weight, None)}


@pytest.mark.parametrize("edm_coords_range", [True, False])
def test_one_egnn_layer_follows_edm_equations(edm_coords_range, qm9_batch):
    from sci_diffusion_molecules.models.egnn import EGNN
    torch.manual_seed(0)
    layers = 3
    net = EGNN(feature_dim=6, hidden=16, layers=layers, edm_coords_range=edm_coords_range).double()
    block = net.blocks[1]
    with torch.no_grad():
        block.update.mlp[-1].weight.normal_(0, 0.3)  # move atoms visibly (EDM's init gain is 0.001)
    b = qm9_batch
    x = centred_state(b)[:, :3]
    h = torch.randn(b.num_nodes, 16, dtype=torch.float64)
    edges = fully_connected_edges(b.batch, b.num_graphs)
    d2_input = ((x[edges[0]] - x[edges[1]]) ** 2).sum(1, keepdim=True)
    x_in = x + 0.1 * torch.randn_like(x)  # the block's positions differ from the network input's
    ours_h, ours_x = block(h, x_in, edges, d2_input)
    coords_range = 15.0 if edm_coords_range else 15.0 / layers  # EDM passes the full range to every block
    ref_h, ref_x = edm_equivariant_block(h, x_in, edges, d2_input, dense_weights(block), coords_range)
    assert (ref_x - x_in).abs().max() > 1e-2
    torch.testing.assert_close(ours_h, ref_h, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours_x, ref_x, atol=1e-10, rtol=1e-10)


def test_two_atoms_at_one_place_keep_a_finite_gradient():
    torch.manual_seed(0)
    m = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0)
    x = torch.randn(4, 9)
    x[1, :3] = x[0, :3]  # two atoms on top of each other
    x.requires_grad_(True)
    out = m(x, torch.tensor(0.5), None, (torch.zeros(4, dtype=torch.long), 1))
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_training_positions_are_centred(qm9_batch):
    shifted = qm9_batch.clone()
    shifted.pos = shifted.pos + torch.tensor([5.0, -3.0, 2.0])
    b = MoleculeDiffusion(hidden=16, layers=2, ema_decay=0).prepare_batch(shifted)
    com = torch.zeros(shifted.num_graphs, 3).index_add_(0, shifted.batch, b.x0[:, :3])
    assert com.abs().max() < 1e-4


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_a_molecule_is_the_same_whatever_the_batch_it_is_sampled_in(sampler, bundled_model):
    # The bundled model, QM9-sized molecules and 20 steps: where a trajectory diverges (an untrained
    # network, a 4-atom molecule, a 10-step SDE run that flings atoms 50 Angstrom away) float32 rounding
    # grows past 1e-3 Angstrom; on these, molecules agree to 1e-4.
    def draw(seed, batch_size, precision="fp32"):
        return list(sample_molecules(bundled_model, [19, 12, 9], sampler, 20, torch.Generator().manual_seed(seed),
                                     batch_size=batch_size, precision=precision))

    one_by_one, together = draw(3, 1), draw(3, 3)
    for (z1, p1), (z3, p3) in zip(one_by_one, together):
        assert (z1 == z3).all() and abs(p1 - p3).max() < 1e-3  # Angstrom; matrix kernels may round apart
    assert all((a[1] == b[1]).all() for a, b in zip(together, draw(3, 3)))  # bit for bit with the same batch
    assert all(abs(a[1] - b[1]).max() > 1e-2 for a, b in zip(together, draw(4, 3)))  # another seed, other molecules
    bf16 = draw(3, 3, "bf16")
    assert all((a[1] == b[1]).all() for a, b in zip(bf16, draw(3, 3, "bf16")))  # the CLI's precision repeats too


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_failed_molecule_leaves_the_rest_of_its_batch_untouched(precision, bundled_model):
    # Molecule 1 (rows 9-16) has gone non-finite. oneDNN's bfloat16 matrix product on this machine's
    # CPU (AMX) writes NaN into the row before such a block (row 8, molecule 0) unless the sampler keeps
    # failed molecules away from the network: they come back NaN, the others as if it were healthy.
    counts = torch.tensor([9, 8, 12, 19, 17])
    batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
    x = torch.randn(int(counts.sum()), 9, generator=torch.Generator().manual_seed(0))
    failed, healthy = x.clone(), x.clone()
    failed[batch == 1] = float("nan")
    healthy[batch == 1] = 0.0
    space = bundled_model.state_space(batch, len(counts))
    denoiser = isolate_failed_samples(bundled_model.denoiser(context=(batch, len(counts))), space)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out, reference = denoiser(failed, torch.tensor(0.5)), denoiser(healthy, torch.tensor(0.5))
    assert out[batch == 1].isnan().all()
    assert torch.equal(out[batch != 1], reference[batch != 1])
    assert failed_samples(out, space).tolist() == [False, True, False, False, False]

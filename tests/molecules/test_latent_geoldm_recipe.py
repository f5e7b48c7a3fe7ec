"""The latent model with ``geoldm_code=True`` does each step as GeoLDM's released code does (issue 28, section 3):
raw features into the encoder, GeoLDM's encoder head, its loss scale and 0.5 / 1 weighting, its two-stage VAE
(fixed sigma 0.0032, KL of the means summed per molecule) and a conditioned autoencoder. The numbers below
are worked out by hand from GeoLDM's ``EnHierarchicalVAE`` and ``EnVariationalDiffusion`` formulas."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from sci_diffusion.checkpoints import bundled_checkpoint, load_module
from sci_diffusion.errors import UserError
from sci_diffusion_molecules.data.atom_state import centred_atom_state
from sci_diffusion_molecules.data.conditioning import PropertyConditioning
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.graphs import atoms_to_data
from sci_diffusion_molecules.data.qm9 import PROPERTY_NAMES
from sci_diffusion_molecules.generation.sampling import sample_molecules
from sci_diffusion_molecules.generation.trajectory import TrajectoryRecorder
from sci_diffusion_molecules.models import latent
from sci_diffusion_molecules.models.latent import (
    GeoLDMEncoder,
    LatentMoleculeDiffusion,
    MoleculeAutoencoder,
    geoldm_atom_features,
    geoldm_kl,
    geoldm_molecule_mean,
    geoldm_reconstruction_loss,
)

from .conftest import fit_tiny

GAP_COLUMN = PROPERTY_NAMES.index("gap")


def two_molecules(gaps=(6.0, 7.0)):
    """Methane without two hydrogens (C, H, H: 3 atoms) and formaldehyde (C, O, H, H: 4 atoms), as one batch."""
    y = np.zeros((2, 6))
    y[:, GAP_COLUMN] = gaps
    a = atoms_to_data([6, 1, 1], [[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [-0.36, 1.03, 0.0]], y=y[0])
    b = atoms_to_data([6, 8, 1, 1], [[0.0, 0.0, 0.0], [1.21, 0.0, 0.0], [-0.55, 0.94, 0.0], [-0.55, -0.94, 0.0]],
                      y=y[1])
    return Batch.from_data_list([a, b])


def tiny_model(**kwargs):
    torch.manual_seed(0)
    return LatentMoleculeDiffusion(hidden=16, layers=1, decoder_layers=1, ema_decay=0, val_molecules=0,
                                   geoldm_code=True, **kwargs)


def test_the_autoencoder_reads_raw_one_hot_and_nuclear_charges():
    b = two_molecules()
    raw = geoldm_atom_features(centred_atom_state(b))
    torch.testing.assert_close(raw[:, 3:8], b.one_hot)  # 0/1, not the diffusion's x0.25
    assert raw[:, 8].tolist() == [6, 1, 1, 6, 8, 1, 1]  # Z, not the diffusion's Z x 0.1


def test_the_reconstruction_loss_of_two_molecules_is_geoldms_number():
    """compute_reconstruction_error in training: per molecule, sum over atoms of |dx|^2 + CE(types) + dZ^2,
    divided by (3 + 6) x N_max = 9 x 4 = 36 (the 3-atom molecule too, as GeoLDM pads it to 4 rows), then the
    mean over the 2 molecules."""
    b = two_molecules()
    target = geoldm_atom_features(centred_atom_state(b))
    decoded = target.clone()
    # molecule A (3 atoms): every atom 0.1 A off in x (0.01 each), all five logits 0 (CE = ln 5), Z off by 0.5
    decoded[:3, 0] += 0.1
    decoded[:3, 3:8] = 0.0
    decoded[:3, 8] += 0.5
    # molecule B (4 atoms): 0.2 A off in y (0.04 each), its true type's logit ln 4, the others 0 (p = 4/8, CE = ln 2)
    decoded[3:, 1] += 0.2
    decoded[3:, 3:8] = b.one_hot[3:] * math.log(4.0)
    sum_a = 3 * 0.01 + 3 * math.log(5) + 3 * 0.25  # 0.78 + 4.8283137 = 5.6083137
    sum_b = 4 * 0.04 + 4 * math.log(2)  # 0.16 + 2.7725887 = 2.9325887
    expected = (sum_a / 36 + sum_b / 36) / 2  # = 0.1186236
    assert expected == pytest.approx(0.1186236, abs=1e-7)
    loss = geoldm_reconstruction_loss(decoded, target, b.batch, b.num_graphs)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_the_vae_kl_is_half_the_squared_means_summed_per_molecule():
    """KL(N(mu, 1) || N(0, 1)) = 0.5 mu^2 per latent column, summed over a molecule's atoms and columns:
    GeoLDM scores the means only, with sigma 1 on both sides."""
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    mean = torch.tensor([[1.0, 0, 0, 0.5], [-1, 0, 0, 0.5], [0, 0, 0, -1],  # A: 2 (coordinates) + 1.5 (invariant)
                         [0, 2, 0, 0], [0, -2, 0, 0], [0, 0, 1, 0], [0, 0, -1, 2]])  # B: 10 + 4
    torch.testing.assert_close(geoldm_kl(mean, batch, 2), torch.tensor([0.5 * 3.5, 0.5 * 14.0]))


def test_a_mean_over_atoms_becomes_geoldms_mean_over_padded_molecules():
    """An error of 1 on every entry: molecule A sums 3 atoms / 4 padded rows = 0.75, B 4 / 4 = 1; the mean 7/8."""
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert geoldm_molecule_mean(torch.tensor(1.0), batch, 2).item() == pytest.approx(7 / 8)


def test_the_loss_weighs_the_diffusion_by_half_and_the_reconstruction_by_one(monkeypatch):
    """GeoLDM: 0.5 x the l2 diffusion error + 1 x the reconstruction (first version: 1 and 1); the diffusion
    term averaged as GeoLDM averages it (7/8 of the atom mean for molecules of 3 and 4 atoms)."""
    monkeypatch.setattr(latent, "geoldm_reconstruction_loss", lambda *args: torch.tensor(3.0))
    monkeypatch.setattr(latent, "reconstruction_loss", lambda *args: torch.tensor(3.0))
    for geoldm_code, expected in ((True, 0.5 * 2.0 * 7 / 8 + 1 * 3.0), (False, 2.0 + 3.0)):
        model = LatentMoleculeDiffusion(hidden=16, layers=1, decoder_layers=1, ema_decay=0, val_molecules=0,
                                        geoldm_code=geoldm_code)
        model.loss_fn = lambda module, batch, generator=None: torch.tensor(2.0)
        assert model.training_loss(two_molecules()).item() == pytest.approx(expected)


def test_the_encoder_and_the_reconstruction_see_raw_features_in_training(monkeypatch):
    model = tiny_model()
    seen = {}
    model.autoencoder.encoder.register_forward_pre_hook(lambda module, args: seen.update(encoder=args[0].clone()))
    real = latent.geoldm_reconstruction_loss

    def spy(decoded, target, batch, num_graphs):
        seen["target"] = target.clone()
        return real(decoded, target, batch, num_graphs)

    monkeypatch.setattr(latent, "geoldm_reconstruction_loss", spy)
    b = two_molecules()
    model.training_loss(b)
    for name in ("encoder", "target"):
        torch.testing.assert_close(seen[name][:, 3:8], b.one_hot)
        assert seen[name][:, 8].tolist() == [6, 1, 1, 6, 8, 1, 1]


def test_the_encoder_head_is_geoldms_linear_then_linear_silu_linear():
    model = tiny_model(latent_features=2, encoder_hidden=8)
    encoder = model.autoencoder.encoder
    assert isinstance(encoder, GeoLDMEncoder)
    head = encoder.egnn.head  # GeoLDM's EGNN embedding_out: hidden -> hidden
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (8, 8)
    layers = list(encoder.final_mlp)
    assert [type(m) for m in layers] == [nn.Linear, nn.SiLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (8, 8)
    assert (layers[2].in_features, layers[2].out_features) == (8, 2 * 2 + 1)
    with torch.no_grad():  # GeoLDM's output order: coordinate log-variance, k means, k log-variances
        layers[2].weight.zero_()
        layers[2].bias.copy_(torch.tensor([9.0, 1.5, -2.5, 7.0, 7.0]))
    b = two_molecules()
    mean, log_sigma = model.autoencoder.encode(geoldm_atom_features(centred_atom_state(b)), b.batch, b.num_graphs)
    torch.testing.assert_close(mean[:, 3:], torch.tensor([[1.5, -2.5]]).expand(7, 2))
    torch.testing.assert_close(log_sigma, torch.full((7, 3), math.log(0.0032)))  # GeoLDM's fixed sigma


def test_the_first_version_keeps_its_one_layer_head_so_old_checkpoints_load():
    model = LatentMoleculeDiffusion(hidden=16, layers=1, decoder_layers=1, ema_decay=0, val_molecules=0)
    assert not model.geoldm_code and isinstance(model.autoencoder.encoder.head, nn.Linear)
    assert model.autoencoder.encoder.head.out_features == 2 * 1 + 1
    bundled = load_module(bundled_checkpoint("sci_diffusion_molecules", "latent"), domain="molecules")
    assert "geoldm_code" not in bundled.checkpoint_record["config"] and not bundled.geoldm_code


def conditioned_model():
    model = tiny_model(conditioning=["gap"])
    properties = np.zeros((2, 6))
    properties[:, GAP_COLUMN] = [6.0, 7.0]  # mean 6.5, mean absolute deviation 0.5
    model.property_conditioning = PropertyConditioning.from_training_set(["gap"], np.array([3, 4]), properties)
    return model


def test_a_conditional_models_encoder_and_decoder_see_the_condition():
    model = conditioned_model()
    b = two_molecules()
    x0 = centred_atom_state(b)
    low, high = (model.property_conditioning.condition(torch.tensor([[g], [g]], dtype=torch.float64)).float()
                 for g in (5.0, 9.0))
    z = [model.encode(x0, b.batch, b.num_graphs, torch.Generator().manual_seed(0), cond) for cond in (low, high)]
    assert (z[0][:, 3:] - z[1][:, 3:]).abs().max() > 1e-4
    decoded = [model.decode_state(z[0], b.batch, b.num_graphs, cond) for cond in (low, high)]
    assert (decoded[0] - decoded[1]).abs().max() > 1e-4
    first_version = LatentMoleculeDiffusion(hidden=16, layers=1, decoder_layers=1, ema_decay=0, val_molecules=0,
                                            conditioning=["gap"])
    torch.testing.assert_close(first_version.decode_state(z[0], b.batch, b.num_graphs, low),
                               first_version.decode_state(z[0], b.batch, b.num_graphs, high))


def test_training_and_sampling_hand_the_condition_to_the_autoencoder(monkeypatch):
    model = conditioned_model()
    seen = []
    decode = model.autoencoder.decode

    def spy(z, batch, num_graphs, cond=None):
        seen.append(cond)
        return decode(z, batch, num_graphs, cond)

    monkeypatch.setattr(model.autoencoder, "decode", spy)
    b = two_molecules(gaps=(6.0, 7.0))
    model.training_loss(b)
    torch.testing.assert_close(seen[-1], torch.tensor([[-1.0], [1.0]]))  # (gap - 6.5) / 0.5, no presence flag
    cond = torch.tensor([[0.5, 1.0], [-2.0, 1.0]])
    list(sample_molecules(model.eval(), [3, 4], "dpmpp2m", 2, torch.Generator().manual_seed(0), cond=cond,
                          precision="fp32"))
    torch.testing.assert_close(seen[-1], cond[:, :1])


def test_the_two_stage_vae_draws_at_sigma_0_0032_and_adds_the_weighted_kl(monkeypatch):
    dm = QM9DataModule(batch_size=32, limit=32)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    vae = MoleculeAutoencoder(latent_features=1, encoder_hidden=16, decoder_hidden=16, decoder_layers=1,
                              geoldm_code=True)
    drawn = {}
    decode = vae.autoencoder.decode

    def spy(z, *args):
        drawn["z"] = z
        return decode(z, *args)

    monkeypatch.setattr(vae.autoencoder, "decode", spy)
    recon, kl, decoded, target = vae._step(b, torch.Generator().manual_seed(0))
    mean, _ = vae.autoencoder.encode(target, b.batch, b.num_graphs)
    assert (drawn["z"] - mean)[:, 3:].std().item() == pytest.approx(0.0032, rel=0.1)
    torch.testing.assert_close(kl, geoldm_kl(mean, b.batch, b.num_graphs).mean())
    torch.testing.assert_close(recon, geoldm_reconstruction_loss(decoded, target, b.batch, b.num_graphs))


def test_the_two_stage_recipe_refuses_an_autoencoder_of_the_other_version(tmp_path):
    stage_one = tmp_path / "ae.ckpt"
    torch.save({"state_dict": {}, "sci_diffusion": {"config": {"latent_features": 1}}}, stage_one)  # no geoldm_code
    model = tiny_model(autoencoder_ckpt=str(stage_one))
    with pytest.raises(UserError, match="geoldm_code"):
        model.setup("fit")
    with pytest.raises(ValueError, match="joint recipe"):
        tiny_model(autoencoder_ckpt=str(stage_one), conditioning=["gap"])


def test_a_conditional_geoldm_model_trains_saves_loads_and_samples(tmp_path):
    model = tiny_model(conditioning=["gap"])
    ckpt = fit_tiny(model, QM9DataModule(batch_size=16, limit=64, subset="Db"), tmp_path, steps=2)
    loaded = load_module(ckpt, domain="molecules")
    assert loaded.geoldm_code and loaded.autoencoder.cond_dim == 1
    cond = loaded.property_conditioning.condition(torch.tensor([[6.5], [7.5]], dtype=torch.float64))
    mols = list(sample_molecules(loaded, [5, 7], "dpmpp2m_sde", 3, torch.Generator().manual_seed(0), cond=cond))
    assert [len(z) for z, _ in mols] == [5, 7]


def test_a_conditional_trajectory_decodes_with_the_asked_condition():
    """The recorder hands the decoder the condition, so the last frame is the sample itself."""
    model = conditioned_model().eval()
    cond = model.property_conditioning.condition(torch.tensor([[5.0], [9.0]], dtype=torch.float64))
    recorder = TrajectoryRecorder(model, molecules=2, cond=cond)
    molecules = list(sample_molecules(model, [4, 6], "dpmpp2m", 3, torch.Generator().manual_seed(0), cond=cond,
                                      precision="fp32", callback=recorder))
    for k in range(2):
        last = recorder.frames["x_t"][k][-1]
        assert (last.z == molecules[k][0]).all() and abs(last.pos - molecules[k][1]).max() < 1e-4

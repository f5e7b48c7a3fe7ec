"""The bond-aware model (models/bond_diffusion.py, bond_egnn.py, data/bond_state.py, data/bond_datamodule.py,
generation/bond_sampling.py): its state puts each bond on its pair, its network is E(3)-equivariant on the
coordinates and invariant on the bond logits, under rotations and atom permutations alike, and a trained
checkpoint loads and samples molecules whose bonds are one symmetric class per pair."""
import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from sci_diffusion.checkpoints import load_module
from sci_diffusion.cli import main
from sci_diffusion.precision import resolve_precision
from sci_diffusion_molecules.chem.bond_types import NUM_BOND_CLASSES
from sci_diffusion_molecules.chem.files import read_generated_bonds
from sci_diffusion_molecules.data.bond_datamodule import QM9BondDataModule
from sci_diffusion_molecules.data.bond_state import bonded_state, pair_rows, split_state, upper_pairs
from sci_diffusion_molecules.data.qm9_bonds import load_qm9_bonds
from sci_diffusion_molecules.generation.bond_sampling import sample_bonded_molecules
from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion
from sci_diffusion_molecules.models.bond_egnn import BondEGNN

from .conftest import fit_tiny

FEATURES = 7  # QM9's one-hot (5), nuclear charge and formal charge


@pytest.fixture(scope="module")
def bond_batch():
    """The first training batch of four QM9 molecules with their bonds and formal charges."""
    dm = QM9BondDataModule(batch_size=4, limit=40)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def test_pairs_run_molecule_by_molecule_and_each_edge_finds_its_pair():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    pairs = upper_pairs(batch, 2)
    assert pairs.T.tolist() == [[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [3, 6], [4, 5], [4, 6], [5, 6]]
    assert torch.equal(pair_rows(pairs, batch, 2), torch.arange(9))
    assert torch.equal(pair_rows(pairs.flip(0), batch, 2), torch.arange(9))  # (j, i) is the pair of (i, j)


def test_the_stacked_state_holds_each_bond_on_its_pair(bond_batch, qm9):
    x0 = bonded_state(bond_batch, QM9BondDataModule().element_set)
    atoms, bonds = split_state(x0, bond_batch.num_nodes, 3 + FEATURES)
    classes = bonds.argmax(1)
    pairs = upper_pairs(bond_batch.batch, bond_batch.num_graphs)
    first = bond_batch.get_example(0)
    row = int(np.searchsorted(qm9.index, int(first.idx)))
    expected = load_qm9_bonds().matrix(row, first.num_nodes)
    mine = pairs[0] < first.num_nodes
    assert torch.equal(classes[mine], torch.from_numpy(expected[pairs[0][mine], pairs[1][mine]]))
    assert (bonds.sum(1) == 1).all() and (x0[bond_batch.num_nodes:, NUM_BOND_CLASSES:] == 0).all()


def test_training_leaves_out_the_unmatched_molecules_and_the_references_keep_them():
    dm = QM9BondDataModule()
    dm.setup()
    matched = load_qm9_bonds().matched
    assert matched[dm.datasets["train"].rows].all()
    for split, size in (("valid", 17_748), ("test", 13_083)):
        assert len(dm.datasets[split]) == size
    assert len(dm.datasets["train"]) + int((~matched).sum()) >= 100_000


def noisy_state(batch, generator) -> torch.Tensor:
    """A noisy stacked state ``(N + P, W)`` float64 of a batch: its atoms' state plus noise, random bond classes."""
    x0 = bonded_state(batch, QM9BondDataModule().element_set).double()
    n = batch.num_nodes
    x = x0.clone()
    x[:n, :3 + FEATURES] += 0.3 * torch.randn(n, 3 + FEATURES, generator=generator, dtype=torch.float64)
    classes = torch.randint(0, NUM_BOND_CLASSES, (x.shape[0] - n,), generator=generator)
    x[n:, :NUM_BOND_CLASSES] = torch.nn.functional.one_hot(classes, NUM_BOND_CLASSES).double()
    return x


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return BondEGNN(FEATURES, hidden=32, layers=3).double().eval()


def test_coordinates_rotate_with_the_molecule_and_bond_logits_do_not(network, bond_batch):
    g = torch.Generator().manual_seed(0)
    x = noisy_state(bond_batch, g)
    n, t = bond_batch.num_nodes, torch.tensor(0.4, dtype=torch.float64)
    rotation, shift = o3.rand_matrix(dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    moved = x.clone()
    moved[:n, :3] = x[:n, :3] @ rotation.T + shift
    with torch.no_grad():
        out = network(x, t, None, bond_batch.batch, bond_batch.num_graphs)
        out_moved = network(moved, t, None, bond_batch.batch, bond_batch.num_graphs)
    assert torch.allclose(out_moved[:n, :3], out[:n, :3] @ rotation.T, atol=1e-9)  # equivariant displacement
    assert torch.allclose(out_moved[:n, 3:], out[:n, 3:], atol=1e-9)  # invariant atom features
    assert torch.allclose(out_moved[n:], out[n:], atol=1e-9)  # invariant bond logits
    assert out[n:, :NUM_BOND_CLASSES].abs().sum() > 0 and (out[n:, NUM_BOND_CLASSES:] == 0).all()


def logit_matrix(out: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """The bond logits of a one-molecule output as a symmetric ``(n, n, K)`` tensor."""
    logits = torch.zeros(num_atoms, num_atoms, NUM_BOND_CLASSES, dtype=out.dtype)
    i, j = torch.triu_indices(num_atoms, num_atoms, 1)
    logits[i, j] = logits[j, i] = out[num_atoms:, :NUM_BOND_CLASSES]
    return logits


def test_permuting_the_atoms_permutes_coordinates_and_bond_logits_with_them(network, bond_batch):
    molecule = Batch.from_data_list([bond_batch.get_example(1)])
    n = molecule.num_nodes
    x = noisy_state(molecule, torch.Generator().manual_seed(1))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    i, j = torch.triu_indices(n, n, 1)
    classes = torch.zeros(n, n, dtype=torch.long)
    classes[i, j] = classes[j, i] = x[n:, :NUM_BOND_CLASSES].argmax(1)
    moved_bonds = torch.nn.functional.one_hot(classes[perm][:, perm][i, j], NUM_BOND_CLASSES).double()
    permuted = torch.cat([x[:n][perm], torch.nn.functional.pad(moved_bonds, (0, x.shape[1] - NUM_BOND_CLASSES))])
    t, batch = torch.tensor(0.6, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
    with torch.no_grad():
        out, out_permuted = network(x, t, None, batch, 1), network(permuted, t, None, batch, 1)
    assert torch.allclose(out_permuted[:n], out[:n][perm], atol=1e-9)
    assert torch.allclose(logit_matrix(out_permuted, n), logit_matrix(out, n)[perm][:, perm], atol=1e-9)


@pytest.fixture(scope="module")
def bond_checkpoint(tmp_path_factory):
    """A bond-aware model trained 3 steps on 16 QM9 molecules (tests plumbing, not quality)."""
    model = BondMoleculeDiffusion(hidden=16, layers=2, val_molecules=0)
    return fit_tiny(model, QM9BondDataModule(batch_size=4, limit=16), tmp_path_factory.mktemp("bonds"))


def test_a_trained_bond_model_loads_and_samples_one_symmetric_bond_class_per_pair(bond_checkpoint):
    model = load_module(str(bond_checkpoint), domain="molecules")
    assert isinstance(model, BondMoleculeDiffusion) and model.bond_counts[0] > model.bond_counts[1] > 0
    counts = [5, 9, 3]
    molecules = list(sample_bonded_molecules(model, counts, "dpmpp2m_sde", 4, torch.Generator().manual_seed(0)))
    for (z, pos, charges, bonds), n in zip(molecules, counts):
        assert z.shape == (n,) and pos.shape == (n, 3) and charges.shape == (n,) and bonds.shape == (n, n)
        assert (bonds == bonds.T).all() and (np.diag(bonds) == 0).all()
        assert bonds.min() >= 0 and bonds.max() < NUM_BOND_CLASSES
    one_by_one = [next(sample_bonded_molecules(model, counts, "ddpm", 3, torch.Generator().manual_seed(0),
                                               batch_size=b)) for b in (1, 3)]
    assert np.array_equal(one_by_one[0][3], one_by_one[1][3])  # molecule 0's draws do not depend on its batch


def test_an_ode_sampler_refuses_the_bonds_in_one_sentence(bond_checkpoint):
    model = load_module(str(bond_checkpoint), domain="molecules")
    with pytest.raises(ValueError, match="dpmpp2m sampler has no update for a categorical variable"):
        list(sample_bonded_molecules(model, [4], "dpmpp2m", 3, torch.Generator().manual_seed(0)))


def test_sample_molecules_writes_the_generated_bonds_and_refuses_an_ode_sampler(bond_checkpoint, tmp_path, capsys):
    """The CLI draws a bond-aware model with its own sampler path: each SDF record carries the bonds the
    model generated (read back equal to a direct draw with the same seed: with --atoms the CLI's generator
    draws no sizes first); an ODE sampler without a categorical step is refused in one sentence."""
    out = tmp_path / "m.sdf"
    assert main(["sample", "molecules", "--ckpt", str(bond_checkpoint), "--num", "3", "--atoms", "6", "--steps", "3",
                 "--seed", "1", "--out", str(out)]) == 0
    written = read_generated_bonds(out)
    model = load_module(str(bond_checkpoint), domain="molecules")
    # at the precision the CLI resolved (--precision auto: fp32 on a CPU without bf16), or near-tied bond classes differ
    direct = list(sample_bonded_molecules(model, [6, 6, 6], "dpmpp2m_sde", 3, torch.Generator().manual_seed(1),
                                          precision=resolve_precision("auto", "cpu")))
    assert len(written) == 3
    for bonds, (_, _, _, expected) in zip(written, direct):
        assert np.array_equal(np.asarray(bonds), expected)
    assert main(["sample", "molecules", "--ckpt", str(bond_checkpoint), "--num", "1", "--sampler", "heun",
                 "--out", str(tmp_path / "x.sdf")]) == 2
    assert "need a sampler with a categorical step (ddpm, dpmpp2m_sde, ddim), not heun" in capsys.readouterr().err


def test_a_bond_model_distils_through_lightning_and_its_student_samples_only_as_distilled(bond_checkpoint, tmp_path,
                                                                                          capsys):
    """One round of progressive distillation of the bond-aware model (zero-CoM atoms, categorical bonds): the
    student trains beside its teacher checkpoint, records its grid, and ``sample molecules`` draws it with ddim
    at its step count, refusing another count in one sentence."""
    student = BondMoleculeDiffusion(hidden=16, layers=2, val_molecules=0, distill_from=str(bond_checkpoint),
                                    distill_steps=2, init_from=None, teacher_times=None)  # as LightningCLI passes them
    student_file = fit_tiny(student, QM9BondDataModule(batch_size=4, limit=16), tmp_path / "student", steps=2)
    loaded = load_module(str(student_file), domain="molecules")
    assert loaded.hparams.init_from == str(bond_checkpoint)  # it started as its teacher
    assert len(loaded.sampling_times) == 3
    out = tmp_path / "s.sdf"
    assert main(["sample", "molecules", "--ckpt", str(student_file), "--num", "2", "--atoms", "5", "--steps", "2",
                 "--sampler", "ddim", "--out", str(out)]) == 0
    assert len(read_generated_bonds(out)) == 2
    assert main(["sample", "molecules", "--ckpt", str(student_file), "--num", "2", "--steps", "50", "--sampler", "ddim",
                 "--out", str(tmp_path / "t.sdf")]) == 2
    assert "distilled for 2 steps; sample it with --steps 2, not 50" in capsys.readouterr().err


def test_the_bundled_bond_model_is_what_model_bonds_samples(tmp_path, capsys):
    """``--model bonds`` samples the shipped bond-aware checkpoint (at most 10 MB, its budget recorded) and writes
    the bonds it generated; it is unconditional, so a condition with it is refused in one sentence."""
    import json

    from sci_diffusion.checkpoints import bundled_checkpoint, read_checkpoint

    path = bundled_checkpoint("sci_diffusion_molecules", "bonds")
    assert path.stat().st_size < 10 * 2**20
    record = read_checkpoint(path)["sci_diffusion"]
    assert record["module_class"].endswith(":BondMoleculeDiffusion") and "CPU-hours" in record["training_budget"]
    out = tmp_path / "bundled.sdf"
    assert main(["sample", "molecules", "--model", "bonds", "--num", "3", "--steps", "5", "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "bundled.sdf.json").read_text())
    assert summary["model"] == "bonds" and summary["checkpoint"].endswith("qm9_bonds_x0.ckpt")
    assert len(read_generated_bonds(out)) == 3
    assert main(["sample", "molecules", "--model", "bonds", "--condition", "gap=6.5", "--out", str(tmp_path / "c.sdf")]) == 2
    assert "The bundled bonds model is unconditional" in capsys.readouterr().err


def test_sample_without_model_draws_from_the_bond_aware_default_and_edm_stays_loadable_by_name(tmp_path, capsys):
    """Issue 28 §4: the bond-aware model is the default of ``sample molecules``; the EDM-style one that was the
    default answers to ``--model edm``; a flag only the EDM model serves names it in its one sentence."""
    import json

    from sci_diffusion_molecules import BUNDLED_CHECKPOINTS, DEFAULT_MODEL

    assert DEFAULT_MODEL == "bonds" and BUNDLED_CHECKPOINTS["unconditional"] == BUNDLED_CHECKPOINTS["bonds"]
    for flags, kind, file in (([], "bonds", "qm9_bonds_x0.ckpt"), (["--model", "edm"], "edm", "qm9_edm_small.ckpt")):
        out = tmp_path / f"{kind}.sdf"
        assert main(["sample", "molecules", *flags, "--num", "2", "--steps", "3", "--no-novelty", "--no-progress",
                     "--out", str(out)]) == 0
        summary = json.loads(out.with_suffix(".sdf.json").read_text())
        assert summary["model"] == kind and summary["checkpoint"].endswith(file)
    assert main(["sample", "molecules", "--sampler", "heun", "--out", str(tmp_path / "d.sdf")]) == 2
    assert "--model edm samples with it" in capsys.readouterr().err


def test_a_conditional_bond_model_samples_with_its_condition_and_classifier_free_guidance():
    """Issue 29 §1: the six-property model is bond-aware, so bond sampling takes the condition rows (each molecule
    its own) and classifier-free guidance (the conditional and the all-zero null condition at every step, inside
    the interval only); gradient guidance is refused in one sentence."""
    from sci_diffusion_molecules.data.conditioning import PropertyConditioning
    from sci_diffusion_molecules.generation.sampling import Guidance

    torch.manual_seed(0)
    model = BondMoleculeDiffusion(hidden=16, layers=1, ema_decay=0, bond_prior="uniform", conditioning=["gap", "alpha"],
                                  val_molecules=0).eval()
    model.property_conditioning = PropertyConditioning(["gap", "alpha"], np.array([6.8, 75.0]), np.array([1.0, 6.0]),
                                                       np.array([5]), np.array([[6.8, 75.0]]))
    seen = []
    real_forward = model.net.forward
    model.net.forward = lambda x, t, cond, *rest: seen.append((float(t.flatten()[0]), cond)) or real_forward(x, t, cond, *rest)
    cond = model.property_conditioning.condition(torch.tensor([[7.8, float("nan")], [5.8, 81.0]], dtype=torch.float64))
    with torch.no_grad():
        plain = list(sample_bonded_molecules(model, [4, 5], "ddpm", 6, torch.Generator().manual_seed(0), cond=cond))
        assert len(plain) == 2 and len(seen) == 6
        assert all(torch.equal(c, cond.float()) for _, c in seen)  # both molecules' own rows, at every step
        seen.clear()
        list(sample_bonded_molecules(model, [4, 5], "ddpm", 6, torch.Generator().manual_seed(0), batch_size=4, cond=cond,
                                     guidance=Guidance(3.0, interval=(0.0, 0.5))))
    inside = [c for t, c in seen if t <= 0.5]
    outside = [c for t, c in seen if t > 0.5]
    assert len(inside) == 2 * 3 and len(outside) == 3  # two passes per guided step, one per plain step
    assert sum(c is None or not c.any() for c in inside) == 3  # one of each guided pair is the null condition
    assert all(c is not None and torch.equal(c, cond.float()) for c in outside)
    with pytest.raises(ValueError, match="classifier-free guidance only"):
        next(sample_bonded_molecules(model, [4], "ddpm", 3, cond=cond[:1], guidance=Guidance(1.0, gradient_scale=1.0)))


def test_three_shards_write_exactly_the_molecules_of_one_run_and_evaluate_scores_them_together(tmp_path, capsys):
    """Issue 32 §3: ``--shard K/N`` draws the whole run's sizes and seeds and writes only its part, with the run's
    indices, so the parts' union is the one run (batches of 4 that the parts share, float32: bit for bit); evaluate
    molecules takes the parts together, and refuses a part given twice; bad --shard values are one sentence."""
    import json

    from sci_diffusion_molecules.chem.files import read_molecules

    common = ["sample", "molecules", "--num", "12", "--steps", "3", "--seed", "5", "--precision", "fp32",
              "--batch-size", "4", "--no-novelty", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "whole.sdf")]) == 0
    for k in range(3):
        assert main([*common, "--shard", f"{k}/3", "--out", str(tmp_path / f"part{k}.sdf")]) == 0
    whole = read_molecules(tmp_path / "whole.sdf")
    parts = [m for k in range(3) for m in read_molecules(tmp_path / f"part{k}.sdf")]
    assert [p["index"] for _, _, p in parts] == [str(i) for i in range(12)]
    for (z, pos, _), (z_part, pos_part, _) in zip(whole, parts, strict=True):
        assert np.array_equal(z, z_part) and np.array_equal(pos, pos_part)
    summary = json.loads((tmp_path / "part1.sdf.json").read_text())
    assert summary["shard"] == {"part": 1, "parts": 3, "first_index": 4, "last_index": 7}
    capsys.readouterr()
    paths = [str(tmp_path / f"part{k}.sdf") for k in range(3)]
    assert main(["evaluate", "molecules", "--samples", *paths, "--out", str(tmp_path / "parts.json"), "--no-novelty"]) == 0
    assert main(["evaluate", "molecules", "--samples", str(tmp_path / "whole.sdf"), "--out", str(tmp_path / "whole.json"),
                 "--no-novelty"]) == 0
    together, alone = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("parts", "whole"))
    assert together["n_molecules"] == 12 and together["molecule_stability"] == alone["molecule_stability"]
    assert together["generated_bonds"]["molecule_stability"] == alone["generated_bonds"]["molecule_stability"]
    assert main(["evaluate", "molecules", "--samples", paths[0], paths[0], "--out", str(tmp_path / "twice.json")]) == 2
    assert "both hold molecule 0 of a run" in capsys.readouterr().err
    for bad, words in (("3/3", "0 <= K < N"), ("a/b", "should read K/N"), ("0/13", "would leave some empty")):
        assert main([*common, "--shard", bad, "--out", str(tmp_path / "bad.sdf")]) == 2
        assert words in capsys.readouterr().err


def test_draw_molecules_picks_the_sampler_of_the_models_kind_and_refuses_a_callback_for_bonds():
    """``draw_molecules`` serves both kinds with the same per-molecule seeds: the bond-aware model's molecules carry
    their bonds, an atoms-only model's do not; a trajectory callback is the atoms-only samplers' alone."""
    from sci_diffusion_molecules.generation.bond_sampling import draw_molecules
    from sci_diffusion_molecules.models.diffusion import MoleculeDiffusion

    torch.manual_seed(0)
    bonded = BondMoleculeDiffusion(hidden=16, layers=1, ema_decay=0, bond_prior="uniform", val_molecules=0).eval()
    atoms_only = MoleculeDiffusion(hidden=16, layers=1, ema_decay=0, val_molecules=0).eval()
    with torch.no_grad():
        assert len(next(draw_molecules(bonded, [4], "ddpm", 2, torch.Generator().manual_seed(0)))) == 4
        assert len(next(draw_molecules(atoms_only, [4], "ddpm", 2, torch.Generator().manual_seed(0)))) == 2
        with pytest.raises(ValueError, match="takes no callback"):
            draw_molecules(bonded, [4], "ddpm", 2, callback=lambda *a: None)

"""The property classifier (EDM's invariant EGNN) and the conditional protocol on a small real split."""
import lightning as L
import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from sci_diffusion.checkpoints import load_module
from sci_diffusion_molecules.data.datamodule import QM9DataModule
from sci_diffusion_molecules.data.graphs import atoms_to_data
from sci_diffusion_molecules.data.qm9 import conditional_halves, edm_split
from sci_diffusion_molecules.evaluation.conditional_protocol import (
    atom_count_predictor,
    baselines,
    evaluate_generator,
    mean_absolute_error,
    normalised_mae,
    predict_from_atom_count,
)
from sci_diffusion_molecules.generation.sampling import Guidance
from sci_diffusion_molecules.models.property_model import PropertyPredictor, predict_properties


def test_the_classifier_is_invariant_to_rotations_translations_and_atom_order(qm9):
    torch.manual_seed(0)
    model = PropertyPredictor(["gap", "alpha"], hidden=32, layers=3).double().eval()
    datas = [atoms_to_data(*qm9.molecule(r)) for r in (5, 500, 5000)]
    batch = Batch.from_data_list(datas)
    h, pos = batch.one_hot.double(), batch.pos.double()
    out = model(h, pos, batch.batch, batch.num_graphs)
    assert out.shape == (3, 2)
    R = o3.rand_matrix().double()  # drawn in float32: orthogonal to ~1e-7, hence the tolerance
    moved = model(h, pos @ R.T + torch.randn(1, 3, dtype=torch.double), batch.batch, batch.num_graphs)
    torch.testing.assert_close(moved, out, atol=1e-5, rtol=1e-5)
    assert (moved - out).abs().max() < 1e-3 * out.abs().max()
    perm = torch.randperm(datas[0].num_nodes)
    first = model(h[: datas[0].num_nodes][perm], pos[: datas[0].num_nodes][perm],
                  torch.zeros(datas[0].num_nodes, dtype=torch.long), 1)
    torch.testing.assert_close(first, out[:1], atol=1e-9, rtol=1e-9)


def test_a_molecule_with_non_finite_coordinates_gets_no_prediction(qm9):
    model = PropertyPredictor(["gap"], hidden=16, layers=1).eval()
    from sci_diffusion_molecules.data.conditioning import PropertyConditioning

    model.normalisation = PropertyConditioning(["gap"], np.zeros(1), np.ones(1), np.array([1]), np.zeros((1, 1)))
    z, pos = qm9.molecule(3)
    broken = pos.astype(np.float64).copy()
    broken[0, 0] = np.nan
    pred = predict_properties(model, [(z, pos), (z, broken), (z, pos)], batch_size=2)
    assert np.isfinite(pred[[0, 2]]).all() and np.isnan(pred[1]).all() and pred[0] == pytest.approx(pred[2])
    assert mean_absolute_error(pred, np.zeros((3, 1)))[1] == 2


def test_atom_count_baseline_is_the_l1_optimal_function_of_the_atom_count():
    counts = np.array([3, 3, 3, 5, 5])
    values = np.array([[1.0], [2.0], [10.0], [4.0], [6.0]])
    table = atom_count_predictor(counts, values)
    np.testing.assert_allclose(predict_from_atom_count(table, [3, 5, 7]), [[2.0], [5.0], [4.0]])  # 7: overall median
    assert normalised_mae(0.6, 0.1, 1.1) == pytest.approx(0.5)


def test_the_protocol_end_to_end_on_a_small_real_split(qm9, conditional_checkpoint):
    """Da trains the classifier, Db gives the baselines and the generator's targets; a classifier
    that learned anything beats shuffled labels, and the rows come out with the protocol's fields.
    alpha (polarisability) grows with molecule size, so a tiny classifier learns it in seconds."""
    halves = conditional_halves(edm_split(qm9)["train"])
    L.seed_everything(0)
    classifier = PropertyPredictor(["alpha", "gap"], hidden=32, layers=2, lr=3e-3)
    data = QM9DataModule(batch_size=64, limit=3000, subset="Da")
    trainer = L.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(classifier, data)
    classifier.eval()
    rows = baselines(classifier, qm9, halves["Da"][:3000], halves["Db"][:1000])
    assert rows["db_molecules"] == 1000
    for name in ("alpha", "gap"):
        assert rows["lower_bound"][name] < rows["naive"][name]
        assert rows["atoms"][name] < rows["naive"][name]
    assert rows["lower_bound"]["alpha"] < 0.5 * rows["naive"]["alpha"]

    generator = load_module(conditional_checkpoint, domain="molecules")
    row = evaluate_generator(generator, classifier, num=8, sampler="dpmpp2m_sde", steps=3, guidance=Guidance(2.0),
                             batch_size=4, failure_error=rows["naive"])
    assert row["molecules"] == 8 and row["scored"] + row["non_finite"] == 8
    assert set(row["mae"]) == set(row["mae_failures_at_naive"]) == {"gap"}
    assert row["failed_fraction"] == row["non_finite"] / 8


class KnownClassifier(torch.nn.Module):
    """A stub evaluation classifier whose answers are known: a gap of 0.4 eV per atom, and none (NaN: a molecule it
    cannot score) for molecules of the atom counts in ``unscorable``."""

    properties = ["gap"]

    def __init__(self, unscorable=()):
        super().__init__()
        self.unscorable = torch.tensor(list(unscorable), dtype=torch.long)

    def predict_clean(self, batch):
        atoms = torch.bincount(batch.batch, minlength=batch.num_graphs)
        gap = 0.4 * atoms.double()
        gap[torch.isin(atoms, self.unscorable)] = float("nan")
        return gap[:, None]

    def to_units(self, values):
        return values


def test_the_protocol_scores_each_molecule_against_its_own_target_and_counts_failures(conditional_checkpoint):
    """With a classifier whose answers are known, the MAE is exactly mean |0.4 n_i - target_i| over the targets drawn
    with the molecules' sizes; molecules it cannot score are the failed fraction and count at the naive error."""
    generator = load_module(conditional_checkpoint, domain="molecules")
    counts, targets = generator.property_conditioning.draw_joint(12, torch.Generator().manual_seed(3))
    counts = np.array(counts)
    expected = np.abs(0.4 * counts - targets.numpy()[:, 0])
    row = evaluate_generator(generator, KnownClassifier(), num=12, sampler="ddim", steps=2, guidance=None, seed=3,
                             batch_size=5, failure_error={"gap": 9.0})
    assert row["failed_fraction"] == 0.0
    assert row["mae"]["gap"] == pytest.approx(expected.mean()) == pytest.approx(row["mae_failures_at_naive"]["gap"])
    failing = int(counts[0])
    failed = counts == failing
    row = evaluate_generator(generator, KnownClassifier(unscorable=[failing]), num=12, sampler="ddim", steps=2,
                             guidance=None, seed=3, batch_size=5, failure_error={"gap": 9.0})
    assert row["scored"] == 12 - failed.sum() and row["failed_fraction"] == pytest.approx(failed.mean())
    assert row["mae"]["gap"] == pytest.approx(expected[~failed].mean())
    assert row["mae_failures_at_naive"]["gap"] == pytest.approx(np.where(failed, 9.0, expected).mean())


def test_a_protocol_row_conditions_a_multi_property_bond_model_on_one_property_alone():
    """Issue 29 §1: the row for one property asks for it alone (the others' values and flags zero in the network's
    condition), samples the bond-aware model, and scores that property with the known classifier."""
    from sci_diffusion_molecules.data.conditioning import PropertyConditioning
    from sci_diffusion_molecules.models.bond_diffusion import BondMoleculeDiffusion

    torch.manual_seed(0)
    model = BondMoleculeDiffusion(hidden=16, layers=1, ema_decay=0, bond_prior="uniform", conditioning=["alpha", "gap"],
                                  val_molecules=0).eval()
    table = np.array([[70.0, 6.0], [80.0, 7.0], [75.0, 8.0]])
    model.property_conditioning = PropertyConditioning(["alpha", "gap"], np.array([75.0, 7.0]), np.array([5.0, 1.0]),
                                                       np.array([4, 5, 6]), table)
    seen = []
    real_forward = model.net.forward
    model.net.forward = lambda x, t, cond, *rest: seen.append(cond) or real_forward(x, t, cond, *rest)
    counts, targets = model.property_conditioning.draw_joint(6, torch.Generator().manual_seed(1))
    row = evaluate_generator(model, KnownClassifier(), num=6, sampler="ddpm", steps=2, guidance=None, seed=1,
                             condition_on=["gap"])
    assert list(row["mae"]) == ["gap"]
    assert row["mae"]["gap"] == pytest.approx(np.abs(0.4 * np.array(counts) - targets.numpy()[:, 1]).mean())
    cond = seen[0]
    assert not cond[:, [0, 2]].any() and (cond[:, 3] == 1).all()  # alpha: value and flag zero; gap: present
    torch.testing.assert_close(cond[:, 1].double(), (targets[:, 1] - 7.0) / 1.0)
    with pytest.raises(ValueError, match="not on mu"):
        evaluate_generator(model, KnownClassifier(), num=2, sampler="ddpm", steps=2, guidance=None, condition_on=["mu"])

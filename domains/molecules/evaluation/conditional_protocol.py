"""The conditional QM9 protocol of EDM (Hoogeboom et al. 2022, Table 3; docs/protocols.md §1).

A property classifier trained on Da predicts the property of molecules generated with targets
drawn jointly with their atom counts from Db; the score is the mean absolute error between
prediction and target. Three baselines put the score in context, all measured on Db:

- *lower bound*: the classifier on the real Db molecules and their true labels;
- *naive*: the same predictions against shuffled labels (a model that ignores the target);
- *#atoms*: a predictor that sees only the atom count.

Our classifier trains for CPU-hours, not GPU-days, so its own error (the lower bound) is larger
than EDM's; the normalised MAE ``(MAE - lower) / (#atoms - lower)`` removes most of that.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..data.conditioning import PropertyConditioning
from ..data.qm9 import PROPERTY_NAMES, QM9Arrays
from ..generation.bond_sampling import draw_molecules
from ..generation.sampling import Guidance
from ..models.property_model import PropertyPredictor, predict_properties
from .metrics import evaluate_molecules


def atom_count_predictor(num_atoms: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """The #atoms baseline, fitted on Da: the median of each property per atom count.

    The median is the exact minimiser of the L1 loss among all functions of the atom count, so it
    is at least as strong as EDM's small MLP on ``n / 29`` trained with that loss.

    Args:
        num_atoms: ``(M,)`` atom counts; values: ``(M, P)`` property values.
    Returns:
        ``{atom count: (P,) median}``, with key ``-1`` holding the overall median for unseen counts.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(num_atoms), -1)
    table = {int(n): np.median(values[num_atoms == n], axis=0) for n in np.unique(num_atoms)}
    table[-1] = np.median(values, axis=0)
    return table


def predict_from_atom_count(table: dict[int, np.ndarray], num_atoms: Sequence[int]) -> np.ndarray:
    """``(M, P)`` predictions of the #atoms baseline."""
    return np.stack([table.get(int(n), table[-1]) for n in num_atoms])


def mean_absolute_error(predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, int]:
    """``(P,)`` MAE over the rows whose prediction is finite, and how many rows those are.

    A generated molecule whose coordinates diverged gets no prediction (NaN); it is left out of
    the MAE and the count says so.
    """
    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    finite = np.isfinite(predictions).all(1)
    if not finite.any():
        return np.full(targets.shape[1], np.nan), 0
    return np.abs(predictions[finite] - targets[finite]).mean(0), int(finite.sum())


def mae_counting_failures(predictions: np.ndarray, targets: np.ndarray, failure_error: np.ndarray) -> np.ndarray:
    """``(P,)`` MAE over every row, a row without a finite prediction (a failed molecule: non-finite coordinates, or
    none the classifier can score) counted at ``failure_error`` ``(P,)``, the naive row's MAE: a molecule that
    failed is worth no more than one that ignored its target, so failures cannot flatter the MAE by leaving it."""
    predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
    errors = np.abs(predictions - targets)
    errors[~np.isfinite(predictions).all(1)] = np.asarray(failure_error, np.float64)
    return errors.mean(0)


def normalised_mae(mae: float, lower_bound: float, atoms: float) -> float:
    """``(MAE - lower bound) / (#atoms - lower bound)``: 0 is the classifier's own error on real
    data, 1 is no better than knowing the atom count. Published: GeoLDM 0.65, EEGSDE 0.53 (gap)."""
    return (mae - lower_bound) / (atoms - lower_bound)


def baselines(classifier: PropertyPredictor, arrays: QM9Arrays, da_rows: np.ndarray, db_rows: np.ndarray,
              seed: int = 0, batch_size: int = 50) -> dict:
    """The three baseline rows on Db, with the classifier's scoring speed.

    Returns:
        ``{"lower_bound", "naive", "atoms"}``: each ``{name: MAE}`` in property units, plus
        ``classifier_molecules_per_second`` and ``db_molecules``.
    """
    names = classifier.properties
    cols = [PROPERTY_NAMES.index(n) for n in names]
    truth = arrays.properties[db_rows][:, cols].astype(np.float64)
    start = time.perf_counter()
    predictions = predict_properties(classifier, (_molecule(arrays, r) for r in db_rows), batch_size)
    rate = len(db_rows) / (time.perf_counter() - start)
    shuffled = truth[np.random.RandomState(seed).permutation(len(truth))]
    table = atom_count_predictor(arrays.num_atoms[da_rows], arrays.properties[da_rows][:, cols])
    by_count = predict_from_atom_count(table, arrays.num_atoms[db_rows])
    as_dict = lambda mae: dict(zip(names, mae.tolist()))  # noqa: E731
    return {"lower_bound": as_dict(mean_absolute_error(predictions, truth)[0]),
            "naive": as_dict(mean_absolute_error(predictions, shuffled)[0]),
            "atoms": as_dict(mean_absolute_error(by_count, truth)[0]),
            "classifier_molecules_per_second": rate, "db_molecules": len(db_rows)}


def _molecule(arrays: QM9Arrays, row: int) -> tuple[np.ndarray, np.ndarray]:
    z, pos = arrays.molecule(int(row))
    return z.astype(np.int64), pos.astype(np.float64)


@torch.no_grad()
def evaluate_generator(module, classifier: PropertyPredictor, num: int, sampler: str, steps: int,
                       guidance: Guidance | None, seed: int = 0, batch_size: int = 100, precision: str = "bf16",
                       train_smiles: frozenset[str] | None = None, compile_network: bool = False,
                       failure_error: Mapping[str, float] | None = None, part: str = "all",
                       condition_on: Sequence[str] | None = None) -> dict:
    """Sample ``num`` molecules with sizes and targets drawn jointly from the generator's training
    set (Db), and score them: the classifier's MAE against the targets, and the EDM metrics.

    Args:
        module: a conditional ``MoleculeDiffusion`` (``models/diffusion.py``).
        classifier: the evaluation classifier (trained on Da).
        guidance: classifier-free / gradient guidance, or None for the plain conditional model.
        compile_network: sample through ``torch.compile`` (``sample_molecules``); the timing then
            includes a first compilation unless the network was compiled before.
        failure_error: ``{name: error}`` a failed molecule counts at in ``mae_failures_at_naive``: the
            naive row's MAE (``baselines``).
        part: the part of Db the targets are drawn from (``PropertyConditioning.draw_joint``): choose
            settings on ``selection`` and measure the chosen ones on ``protocol``.
        condition_on: the properties asked for (the others of a multi-property model are dropped, as the
            protocol's row for one property conditions on it alone); None: all of the model's. The MAE is
            reported for those the classifier predicts.

    Returns:
        A row: ``mae`` ``{name: value}`` in property units over the molecules the classifier scored,
        ``scored`` (how many), ``failed_fraction`` (the others), with ``failure_error`` also
        ``mae_failures_at_naive`` (``mae_counting_failures``: every molecule), the EDM metrics of all
        molecules, ``seconds`` and ``molecules_per_second`` of the sampling.
    """
    conditioning: PropertyConditioning = module.property_conditioning
    asked = list(conditioning.names if condition_on is None else condition_on)
    unknown = [n for n in asked if n not in conditioning.names]
    if unknown:
        raise ValueError(f"The generator is conditioned on {', '.join(conditioning.names)}, not on {', '.join(unknown)}.")
    gen = torch.Generator().manual_seed(seed)
    counts, values = conditioning.draw_joint(num, gen, part)
    dropped = [j for j, n in enumerate(conditioning.names) if n not in asked]
    cond = conditioning.condition(values.index_fill(1, torch.tensor(dropped, dtype=torch.long), float("nan")))
    start = time.perf_counter()
    stream = draw_molecules(module, counts, sampler, steps, gen, batch_size, precision, compile_network, cond, guidance)
    molecules = [m[:2] for m in stream]  # atoms and positions: what the classifier and EDM's metric read
    seconds = time.perf_counter() - start
    predictions = predict_properties(classifier, molecules)
    names = [n for n in asked if n in classifier.properties]
    if not names:
        raise ValueError(f"The classifier predicts {', '.join(classifier.properties)}, none of {', '.join(asked)}.")
    cols = [classifier.properties.index(n) for n in names]
    truth = values[:, [conditioning.names.index(n) for n in names]].numpy()
    mae, scored = mean_absolute_error(predictions[:, cols], truth)
    counted = {} if failure_error is None else {"mae_failures_at_naive": dict(zip(names, mae_counting_failures(
        predictions[:, cols], truth, np.array([failure_error[n] for n in names])).tolist()))}
    finite = [(z, pos) for z, pos in molecules if np.isfinite(pos).all()]
    metrics = evaluate_molecules(finite, train_smiles) if finite else {}
    failed = len(molecules) - len(finite)
    # a diverged sample is unstable and invalid: it stays in the denominators
    scale = len(finite) / len(molecules)
    return {"molecules": len(molecules), "scored": scored, "non_finite": failed, "targets_from": part,
            "mae": dict(zip(names, mae.tolist())), "failed_fraction": 1.0 - scored / len(molecules),
            **counted,
            "molecule_stability": metrics.get("molecule_stability", 0.0) * scale,
            "atom_stability": metrics.get("n_stable_atoms", 0) / max(sum(counts), 1),
            "validity": metrics.get("validity", 0.0) * scale,
            "novelty": metrics.get("novelty"),
            "seconds": round(seconds, 1), "molecules_per_second": round(len(molecules) / seconds, 2)}

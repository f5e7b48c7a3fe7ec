"""Triage of the candidates (issue 14 §5): RDKit descriptors, the --filter/--rank language, the
ranking, the diversity summary, and `sample molecules --filter --top-png` as a user runs it."""
import csv
import json
import math
import os
import sys

import numpy as np
import pytest
from rdkit import Chem, RDConfig
from rdkit.Chem import QED, AllChem

from sci_diffusion.cli import main
from sci_diffusion.errors import UserError
from sci_diffusion_molecules.evaluation.candidates import CandidateTable
from sci_diffusion_molecules.evaluation.triage import (
    CandidateExpression,
    Ranking,
    TopCandidates,
    Triage,
    descriptors,
    diversity_summary,
    mean_pairwise_tanimoto_distance,
    row_values,
)


def rdkit_sa(mol):
    sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
    import sascorer

    return sascorer.calculateScore(mol)


# --- descriptors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("smiles, rings, aromatic", [("c1ccccc1", 1, 1), ("CCO", 0, 0)])
def test_qed_and_sa_are_rdkits_own_values(smiles, rings, aromatic):
    mol = Chem.MolFromSmiles(smiles)
    got = descriptors(Chem.MolToSmiles(Chem.AddHs(mol)))  # the table's SMILES carry explicit hydrogens
    assert got["qed"] == pytest.approx(QED.qed(mol), abs=1e-4)
    assert got["sa"] == pytest.approx(rdkit_sa(mol), abs=1e-4)
    assert (got["rings"], got["aromatic_rings"]) == (rings, aromatic)
    assert (got["charged_atoms"], got["net_charge"]) == (0, 0)


def test_charges_are_counted_and_an_invalid_molecule_gets_empty_cells():
    assert descriptors("[NH3+]CC(=O)[O-]")["charged_atoms"] == 2 and descriptors("[NH3+]CC(=O)[O-]")["net_charge"] == 0
    assert descriptors("[NH4+]")["net_charge"] == 1
    assert set(descriptors(None).values()) == set(descriptors("").values()) == {""}


def test_the_candidates_table_holds_the_descriptors_of_a_valid_molecule():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    table = CandidateTable()
    row = table.add(0, z, mol.GetConformer().GetPositions())
    assert row["valid"] == 1 and row["qed"] == pytest.approx(QED.qed(Chem.MolFromSmiles("CCO")), abs=1e-4)
    failed = table.add(1, z, np.full((len(z), 3), np.nan))
    assert failed["qed"] == failed["sa"] == failed["rings"] == ""
    assert {"qed", "sa", "rings", "aromatic_rings", "charged_atoms", "net_charge"} <= set(table.columns)


def test_without_rdkits_sa_score_the_column_stays_empty_after_one_warning(tmp_path, monkeypatch, capsys):
    from sci_diffusion_molecules.evaluation import triage

    monkeypatch.setattr(RDConfig, "RDContribDir", str(tmp_path))  # an RDKit without its Contrib folder
    triage._sascorer.cache_clear()
    try:
        cells = [descriptors("CCO"), descriptors("c1ccccc1")]
        assert [c["sa"] for c in cells] == ["", ""] and cells[0]["qed"] != ""
        assert capsys.readouterr().err.count("SA_Score is not installed") == 1
        with pytest.raises(UserError, match="no SA_Score"):
            CandidateExpression.parse("sa < 4").check_run([], [], novelty=True)
    finally:
        triage._sascorer.cache_clear()


# --- the expression language ---------------------------------------------------------------------

ROWS = [  # index, valid, novel, qed, sa, target and predicted gap (eV)
    {"index": 0, "smiles": "x", "stable": 1, "valid": 1, "novel": 1, "failed": 0, "qed": 0.6, "sa": 3.0,
     "target_gap [eV]": "6.5", "predicted_gap [eV]": "6.8"},
    {"index": 1, "smiles": "x", "stable": 0, "valid": 1, "novel": 0, "failed": 0, "qed": 0.4, "sa": 5.0,
     "target_gap [eV]": "6.5", "predicted_gap [eV]": "5.9"},
    {"index": 2, "smiles": "", "stable": 0, "valid": 0, "novel": "", "failed": 0, "qed": "", "sa": "",
     "target_gap [eV]": "6.5", "predicted_gap [eV]": "7.2"},
    {"index": 3, "smiles": "", "stable": 0, "valid": 0, "novel": "", "failed": 1, "qed": "", "sa": "",
     "target_gap [eV]": "6.5", "predicted_gap [eV]": ""},
]


def kept(expression, predicted=("gap",)):
    parsed = CandidateExpression.parse(expression)
    return [r["index"] for r in ROWS if parsed.passes(row_values(r, predicted))]


@pytest.mark.parametrize("expression, indices", [
    ("valid", [0, 1]),
    ("not valid", [2, 3]),
    ("valid and novel and gap > 6", [0]),
    ("qed > 0.5 and sa < 4", [0]),
    ("qed > 0.5 or gap > 7", [0, 2]),
    ("not qed > 0.5", [1, 2, 3]),  # an empty cell makes every comparison false
    ("6 < gap < 7", [0]),  # chained as in Python
    ("predicted_gap - target_gap > 0.2", [0, 2]),
    ("(gap - 6.5) * 2 / 1 < -1", [1]),
    ("-sa < -4 and stable == 0", [1]),
    ("target_gap == 6.5 and failed", [3]),
    ("index >= 2 and not failed", [2]),
])
def test_expressions_evaluate_on_a_small_table(expression, indices):
    assert kept(expression) == indices


def test_a_property_name_is_the_prediction_where_the_run_has_one_else_the_target():
    assert kept("gap > 6.6", predicted=("gap",)) == [0, 2]
    assert kept("gap > 6.6", predicted=()) == []  # every target is 6.5
    assert kept("gap == 6.5", predicted=()) == [0, 1, 2, 3]


def test_the_allowed_names_can_be_refused_for_a_run_that_leaves_them_empty():
    CandidateExpression.parse("gap > 6").check_run(["gap"], [], novelty=False)
    with pytest.raises(UserError, match="no value for it"):
        CandidateExpression.parse("gap > 6").check_run([], [], novelty=True)
    with pytest.raises(UserError, match="no value for it"):
        CandidateExpression.parse("predicted_gap > 6").check_run(["gap"], [], novelty=True)
    with pytest.raises(UserError, match="--no-novelty"):
        CandidateExpression.parse("novel").check_run([], [], novelty=False)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "uses function calls"),
    ("__import__('os').system('true')", "uses function calls"),
    ("qed.real > 0", "uses attribute access"),
    ("[qed][0]", "uses"),
    ("qed if valid else 0", "uses if-else"),
    ("'valid'", "uses text"),
    ("qed ** 99", "'Pow'"),
    ("colour > 3 and smell", "unknown names colour, smell"),
    ("qed >", "not an expression"),
])
def test_anything_but_the_grammar_is_refused(expression, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("*", r"\*")):
        CandidateExpression.parse(expression)


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('touch pwned')", "uses function calls"),
    ("valid.__class__", "uses attribute access"),
    ("colour > 3", "unknown name colour; the names are index, valid, stable, novel"),
])
def test_a_bad_filter_gets_one_sentence_and_exit_2_before_any_checkpoint_is_read(expression, message, tmp_path,
                                                                                  capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["sample", "molecules", "--ckpt", "missing.ckpt", "--out", "x.sdf", "--no-progress", "--filter", expression]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.sdf").exists()


def test_a_filter_on_a_property_the_run_lacks_is_refused_before_sampling(tiny_checkpoint, tmp_path, capsys,
                                                                          sampling_forbidden):
    assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--out", str(tmp_path / "x.sdf"),
                 "--no-novelty", "--no-progress", "--filter", "valid and gap > 6"]) == 2
    err = capsys.readouterr().err
    assert "--filter uses gap, but this run has no value for it" in err and err.count("\n") == 1


# --- ranking and diversity -----------------------------------------------------------------------

def test_the_default_ranking_is_the_distance_to_the_target_else_qed():
    conditional = Triage(None, Ranking.default(["gap"], ["gap"]), ["gap"])
    plain = Triage(None, Ranking.default([], []))
    for triage in (conditional, plain):
        for row in ROWS:
            triage.see(row, (np.ones(1), np.zeros((1, 3))))
    assert [r["index"] for r in conditional.ranked(ROWS)] == [0, 1, 2, 3]  # 0.3, 0.6, 0.7 eV, then no prediction
    assert [r["rank"] for r in conditional.ranked(ROWS)] == [1, 2, 3, 4]
    assert [r["index"] for r in plain.ranked(ROWS)] == [0, 1, 2, 3]  # QED 0.6, 0.4, then empty ones by index
    by_sa = Triage(CandidateExpression.parse("valid"), Ranking("sa", CandidateExpression.parse("sa", "--rank")))
    for row in ROWS:
        by_sa.see(dict(row), (np.ones(1), np.zeros((1, 3))))
    assert [r["index"] for r in by_sa.ranked([{**r, "passes_filter": int(r["valid"])} for r in ROWS])] == [0, 1]


def test_the_top_candidates_are_the_first_rows_of_the_ranking():
    top = TopCandidates(3)
    keys = [0.5, math.nan, 0.1, 0.9, 0.1, 0.3]
    for index, key in enumerate(keys):
        charges = np.full(1, index - 2)  # a charged model's molecules keep their formal charges to the PNG
        top.offer(key, {"index": index}, (np.ones(1), np.zeros((1, 3)), charges))
    assert [row["index"] for _, row in top.best()] == [2, 4, 5]
    assert [int(molecule[2][0]) for molecule, _ in top.best()] == [0, 2, 3]


def test_diversity_is_zero_for_identical_molecules_and_grows_for_different_ones():
    assert mean_pairwise_tanimoto_distance(["CCO", "CCO", "OCC"]) == pytest.approx(0.0)
    close = mean_pairwise_tanimoto_distance(["CCO", "CCCO"])
    far = mean_pairwise_tanimoto_distance(["CCO", "Fc1ccccc1"])
    assert 0 < close < far <= 1
    assert mean_pairwise_tanimoto_distance(["CCO"]) is None
    assert diversity_summary(["CCO", "CCO", ""])["molecules"] == 1  # unique valid ones only


def test_diversity_is_computed_on_a_seeded_sample_above_the_cap():
    smiles = ["C" * n + "O" for n in range(1, 9)]
    first, again = diversity_summary(smiles, cap=4), diversity_summary(list(reversed(smiles)), cap=4)
    assert first["molecules"] == 4 and first["unique_valid"] == 8 and first["subsampled"]
    assert first["mean_pairwise_tanimoto_distance"] == again["mean_pairwise_tanimoto_distance"]


# --- end to end ----------------------------------------------------------------------------------

def test_sample_filter_and_top_png_write_the_ranked_candidates(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.sdf"
    assert main(["sample", "molecules", "--ckpt", str(tiny_checkpoint), "--num", "12", "--steps", "3", "--seed", "1",
                 "--batch-size", "5", "--no-novelty", "--no-progress", "--out", str(out), "--filter", "valid and index < 7",
                 "--top-png", str(tmp_path / "top.png")]) == 0
    with open(tmp_path / "m.csv") as fh:
        rows = list(csv.DictReader(fh))
    with open(tmp_path / "m.filtered.csv") as fh:
        ranked = list(csv.DictReader(fh))
    valid = [r for r in rows if r["valid"] == "1" and int(r["index"]) < 7]
    assert len(rows) == 12 and [r["passes_filter"] == "1" for r in rows] == [r in valid for r in rows]
    assert 0 < len(valid) < 12
    assert sorted(r["index"] for r in ranked) == sorted(r["index"] for r in valid)
    qeds = [float(r["qed"]) for r in ranked]
    assert qeds == sorted(qeds, reverse=True) and [r["rank"] for r in ranked] == [str(k) for k in range(1, len(valid) + 1)]
    assert (tmp_path / "top.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "m.sdf.json").read_text())
    assert summary["filter"] == {"expression": "valid and index < 7", "passed": len(valid), "of": 12,
                                 "filtered_candidates": str(tmp_path / "m.filtered.csv")}
    assert summary["ranking"] == "qed descending" and summary["top_png"] == str(tmp_path / "top.png")
    assert summary["diversity"]["molecules"] == len({r["smiles"] for r in rows if r["valid"] == "1"})
    assert f"--filter 'valid and index < 7': {len(valid)} of 12 passed" in capsys.readouterr().out

"""Triage of a sampling run's candidates: descriptors, a safe filter expression, a ranking and a
diversity measure (``sample molecules --filter``, ``--rank``, ``--top-png``; issue 14 §5).

A candidate is a row of :class:`~.candidates.CandidateTable`. The descriptors are RDKit's, computed
from the row's SMILES (the largest fragment of the molecule, bonds by the EDM rule), and left empty
for an invalid molecule:

- ``qed``: quantitative estimate of drug-likeness (``rdkit.Chem.QED.qed``), 0..1, higher is more drug-like;
- ``sa``: synthetic accessibility score (Ertl & Schuffenhauer 2009, RDKit Contrib ``sascorer``),
  1 (easy) .. 10 (hard); empty, with one warning, where the RDKit installation lacks the Contrib code;
- ``rings``, ``aromatic_rings``: SSSR ring counts;
- ``charged_atoms``, ``net_charge``: atoms with a non-zero formal charge, and the sum of the formal
  charges (elementary charges). The EDM bond rule assigns no charges, so both are 0 for sampled molecules.

The filter language (:class:`CandidateExpression`) is parsed with :mod:`ast` and evaluated by walking
the tree: names, numbers, comparisons, ``and``/``or``/``not`` and ``+ - * /``; nothing else
(no calls, attributes, subscripts, strings), so an expression cannot run code.
"""
from __future__ import annotations

import ast
import heapq
import importlib.util
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from rdkit import Chem, DataStructs, RDConfig
from rdkit.Chem import QED, rdFingerprintGenerator, rdMolDescriptors
from rdkit.rdBase import BlockLogs

from sci_diffusion.errors import UserError

from ..data.qm9 import PROPERTY_NAMES, PROPERTY_UNITS

DESCRIPTOR_COLUMNS = ("qed", "sa", "rings", "aromatic_rings", "charged_atoms", "net_charge")
FLAG_COLUMNS = ("valid", "stable", "novel", "failed")
BASE_NAMES = ("index", *FLAG_COLUMNS, *DESCRIPTOR_COLUMNS)
MAX_EXPRESSION_LENGTH = 1000  # characters; a longer one is a mistake, and deep nesting would exhaust the parser
DIVERSITY_CAP = 2000  # molecules; the pairwise mean costs cap^2 / 2 similarities
DIVERSITY_SEED = 0
FINGERPRINT = "Morgan (ECFP4-like), radius 2, 2048 bits; Tanimoto distance = 1 - similarity"


# --- descriptors ---------------------------------------------------------------------------------

@cache
def _sascorer():
    """RDKit Contrib's ``sascorer`` module, or None (with a one-time warning) if this RDKit lacks it."""
    folder = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if not os.path.isfile(os.path.join(folder, "sascorer.py")):
        print(f"sci-diffusion: warning: RDKit's Contrib SA_Score is not installed ({folder} is missing); "
              "the sa column stays empty.", file=sys.stderr)
        return None
    # Contrib is a folder of scripts, not a package: load the one file by its path (it finds its fragment
    # scores beside itself), leaving sys.path as it is
    spec = importlib.util.spec_from_file_location("sascorer", os.path.join(folder, "sascorer.py"))
    sascorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sascorer)
    return sascorer


def sa_available() -> bool:
    """Whether the SA score can be computed in this RDKit installation."""
    return _sascorer() is not None


def descriptors(smiles: str | None) -> dict[str, float | int | str]:
    """The descriptor cells of one candidate from its SMILES; empty strings for an invalid one (None or "").

    Returns:
        ``{qed: 0..1, sa: 1..10 or "", rings, aromatic_rings, charged_atoms: counts, net_charge: e}``.
    """
    mol = _mol(smiles)
    if mol is None:
        return dict.fromkeys(DESCRIPTOR_COLUMNS, "")
    scorer = _sascorer()
    charges = [atom.GetFormalCharge() for atom in mol.GetAtoms()]
    with BlockLogs():  # QED removes hydrogens, and warns about a lone H2's
        return {"qed": round(QED.qed(mol), 4),
                "sa": "" if scorer is None else round(scorer.calculateScore(mol), 4),
                "rings": rdMolDescriptors.CalcNumRings(mol),
                "aromatic_rings": rdMolDescriptors.CalcNumAromaticRings(mol),
                "charged_atoms": sum(c != 0 for c in charges),
                "net_charge": sum(charges)}


def _mol(smiles: str | None) -> Chem.Mol | None:
    """The RDKit molecule of a SMILES (hydrogens implicit), None for an empty or unreadable one."""
    if not smiles:
        return None
    with BlockLogs():
        return Chem.MolFromSmiles(smiles)


# --- the expression language ---------------------------------------------------------------------

_COMPARE = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
            ast.Eq: np.equal, ast.NotEq: np.not_equal}
_ARITHMETIC = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b if b != 0 else math.nan}
_FORBIDDEN = {ast.Call: "function calls", ast.Attribute: "attribute access", ast.Subscript: "subscripts",
              ast.Lambda: "lambdas", ast.NamedExpr: "assignments", ast.IfExp: "if-else",
              ast.ListComp: "comprehensions", ast.GeneratorExp: "comprehensions", ast.Starred: "starred names"}


def allowed_names(properties: Iterable[str] = PROPERTY_NAMES) -> list[str]:
    """The names an expression may use: the table's flags and descriptors, and for every property
    ``p`` of ``properties``: ``p``, ``target_p`` and ``predicted_p``."""
    props = list(properties)
    return [*BASE_NAMES, *props, *(f"target_{p}" for p in props), *(f"predicted_{p}" for p in props)]


def _property_of(name: str) -> tuple[str, str] | None:
    """``("", p)``, ``("target", p)`` or ``("predicted", p)`` for a property name, else None."""
    for kind in ("target", "predicted"):
        if name.startswith(kind + "_") and name[len(kind) + 1:] in PROPERTY_NAMES:
            return kind, name[len(kind) + 1:]
    return ("", name) if name in PROPERTY_NAMES else None


@dataclass(frozen=True)
class CandidateExpression:
    """A parsed ``--filter`` or ``--rank`` expression over a candidate's columns.

    Build it with :meth:`parse` (raises ``UserError`` on anything but the allowed grammar or an
    unknown name), then :meth:`check_run` once the run's properties are known, then evaluate rows
    with :meth:`value` or :meth:`passes`. An empty cell reads as NaN: every comparison with it is
    false, and NaN is false as a truth value.
    """

    text: str
    flag: str
    tree: ast.Expression = field(repr=False)
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str, flag: str = "--filter") -> CandidateExpression:
        """Parse and check ``text``; ``flag`` names the option in the one-sentence errors."""
        if len(text) > MAX_EXPRESSION_LENGTH:
            raise UserError(f"{flag} is {len(text)} characters long; keep it under {MAX_EXPRESSION_LENGTH}.")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            reason = getattr(exc, "msg", None) or type(exc).__name__
            raise UserError(f"{flag} {text!r} is not an expression: {reason}.") from None
        names = set()
        for node in ast.walk(tree):
            _check_node(node, text, flag)
            if isinstance(node, ast.Name):
                names.add(node.id)
        unknown = sorted(n for n in names if n not in BASE_NAMES and _property_of(n) is None)
        if unknown:
            raise UserError(f"{flag} {text!r} uses unknown name{'s' * (len(unknown) > 1)} {', '.join(unknown)}; "
                            f"the names are {', '.join(BASE_NAMES)}, and for a property p (e.g. gap) p, "
                            f"target_p and predicted_p.")
        return cls(text, flag, tree, frozenset(names))

    def check_run(self, targets: Sequence[str], predicted: Sequence[str], novelty: bool) -> None:
        """Refuse (one sentence) names this run leaves empty: a property with neither a target nor a
        prediction, ``novel`` without the novelty reference, ``sa`` without the SA scorer."""
        missing = []
        for name in sorted(self.names):
            kind, prop = _property_of(name) or ("base", name)
            if (kind == "" and prop not in (*targets, *predicted)) or (kind == "target" and prop not in targets) \
                    or (kind == "predicted" and prop not in predicted):
                missing.append(name)
        if missing:
            raise UserError(f"{self.flag} uses {', '.join(missing)}, but this run has no value for "
                            f"{'them' if len(missing) > 1 else 'it'} (targets: {', '.join(targets) or 'none'}; "
                            f"classifier predictions: {', '.join(predicted) or 'none'}); add --condition or --classifier.")
        if "novel" in self.names and not novelty:
            raise UserError(f"{self.flag} uses novel, which --no-novelty leaves empty.")
        if "sa" in self.names and not sa_available():
            raise UserError(f"{self.flag} uses sa, but this RDKit installation has no SA_Score Contrib module.")

    def value(self, values: Mapping[str, float]) -> float:
        """The expression's value for one candidate's ``{name: value}`` (:func:`row_values`); booleans
        are 1.0 and 0.0."""
        return float(_evaluate(self.tree.body, values))

    def passes(self, values: Mapping[str, float]) -> bool:
        """The expression as a truth value (NaN is false)."""
        return _truth(self.value(values))


def _check_node(node: ast.AST, text: str, flag: str) -> None:
    allowed = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
               ast.Compare, ast.Name, ast.Load, *_COMPARE, *_ARITHMETIC)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        try:
            float(node.value)
        except OverflowError:
            raise UserError(f"{flag} {text!r} holds a number too large for a float.") from None
        return
    if isinstance(node, allowed):
        return
    what = next((v for k, v in _FORBIDDEN.items() if isinstance(node, k)), None)
    if what is None:
        what = "text" if isinstance(node, ast.Constant) else f"'{type(node).__name__}'"
    raise UserError(f"{flag} {text!r} uses {what}; it may hold only column names, numbers, comparisons, "
                    "and/or/not and + - * /.")


def _truth(value: float) -> bool:
    return bool(value) and not math.isnan(value)


def _evaluate(node: ast.AST, values: Mapping[str, float]) -> float:
    """The value of a checked expression node (see :func:`_check_node`) as a float."""
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BoolOp):
        truths = (_truth(_evaluate(v, values)) for v in node.values)
        return float(all(truths) if isinstance(node.op, ast.And) else any(truths))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        if isinstance(node.op, ast.Not):
            return float(not _truth(operand))
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return float(_ARITHMETIC[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values)))
    if isinstance(node, ast.Compare):  # chained, as Python: a < b < c is a < b and b < c
        left = _evaluate(node.left, values)
        for op, comparator in zip(node.ops, node.comparators):
            right = _evaluate(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return 0.0
            left = right
        return 1.0
    raise TypeError(f"unchecked node {type(node).__name__}")  # _check_node lets none through


def _cell(value) -> float:
    """A table cell as a float; an empty cell is NaN."""
    return math.nan if value in ("", None) else float(value)


def row_values(row: Mapping[str, object], predicted: Sequence[str] = ()) -> dict[str, float]:
    """A candidate row's ``{name: value}`` for expressions (see :func:`allowed_names`).

    ``p`` is ``predicted_p`` for a property that the run's classifier predicts (``predicted``),
    else ``target_p``: the run-wide choice, so a diverged sample (no prediction) never passes on
    its target.
    """
    out = {name: _cell(row.get(name)) for name in BASE_NAMES}
    for column, cell in row.items():
        for kind in ("target", "predicted"):
            if column.startswith(kind + "_") and " [" in column:
                prop = column[len(kind) + 1:column.index(" [")]
                out[f"{kind}_{prop}"] = _cell(cell)
    for prop in PROPERTY_NAMES:
        kind = "predicted" if prop in predicted else "target"
        out.setdefault(prop, out.get(f"{kind}_{prop}", math.nan))
    return out


# --- ranking -------------------------------------------------------------------------------------

@dataclass
class Ranking:
    """How candidates are ordered, smallest key first; NaN keys last, ties by index.

    The default (:meth:`default`): for a run with targets and a classifier's predictions of them,
    the summed ``|predicted - target|`` over those properties (each in its own unit); else QED,
    highest first. ``--rank EXPR`` replaces it with an expression (smallest first: ``-qed`` for the
    highest QED, ``sa`` for the easiest to make).
    """

    description: str
    expression: CandidateExpression | None = None
    properties: tuple[str, ...] = ()

    @classmethod
    def default(cls, targets: Sequence[str], predicted: Sequence[str]) -> Ranking:
        both = tuple(p for p in targets if p in predicted)
        if both:
            terms = " + ".join(f"|predicted_{p} - target_{p}|" for p in both)
            return cls(f"{terms} ascending", properties=both)
        return cls("qed descending", CandidateExpression.parse("-qed", "--rank"))

    def key(self, values: Mapping[str, float]) -> float:
        """The sort key of one candidate's ``{name: value}``; NaN where it cannot be computed."""
        if self.expression is not None:
            return self.expression.value(values)
        return float(sum(abs(values[f"predicted_{p}"] - values[f"target_{p}"]) for p in self.properties))


def sort_key(key: float, index: int) -> tuple[bool, float, int]:
    """Order of (rank key, index): smallest key first, NaN last, ties by index."""
    return (math.isnan(key), 0.0 if math.isnan(key) else key, index)


class TopCandidates:
    """The best ``n`` molecules seen so far under a ranking, kept while streaming (memory ``O(n)``)."""

    def __init__(self, n: int = 16):
        self.n = n
        self._heap: list[tuple] = []  # (negated sort key, index, molecule, row): the worst kept one on top

    def offer(self, key: float, row: dict, molecule: tuple) -> None:
        """Keep ``molecule`` (``(z, pos)`` or ``(z, pos, formal_charges)``, as sampled) if it ranks among the best."""
        s = sort_key(key, row["index"])
        item = (tuple(-v for v in s), row["index"], molecule, row)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def best(self) -> list[tuple[tuple, dict]]:
        """``[(molecule, row), ...]``, best first; each molecule as offered, formal charges included."""
        return [(molecule, row) for _, _, molecule, row in sorted(self._heap, key=lambda item: item[:2], reverse=True)]


@dataclass
class Triage:
    """A run's triage while it streams: each row's filter verdict (``passes_filter``, with a filter)
    and rank key, and the ``TopCandidates`` among the passing molecules that did not diverge.

    Args:
        keep: the ``--filter`` expression, or None (every candidate passes).
        ranking: how candidates are ordered.
        predicted: the properties the run's classifier predicts (``row_values``).
    """

    keep: CandidateExpression | None
    ranking: Ranking
    predicted: Sequence[str] = ()
    top: TopCandidates = field(default_factory=TopCandidates)
    keys: dict[int, float] = field(default_factory=dict)

    def see(self, row: dict, molecule: tuple) -> None:
        """Judge one new row (adds ``passes_filter`` to it with a filter) and offer its molecule
        (``(z, pos)`` or ``(z, pos, formal_charges)``) to ``top``."""
        named = row_values(row, self.predicted)
        passes = self.keep is None or self.keep.passes(named)
        if self.keep is not None:
            row["passes_filter"] = int(passes)
        self.keys[row["index"]] = self.ranking.key(named)
        if passes and not row["failed"]:
            self.top.offer(self.keys[row["index"]], row, molecule)

    def ranked(self, rows: Iterable[dict]) -> list[dict]:
        """Copies of the passing rows, best first, each with its 1-based ``rank``."""
        passing = [r for r in rows if self.keep is None or r["passes_filter"]]
        passing.sort(key=lambda r: sort_key(self.keys[r["index"]], r["index"]))
        return [{**r, "rank": k} for k, r in enumerate(passing, start=1)]


def legend(row: Mapping[str, object], properties: Sequence[str]) -> str:
    """A two-line caption of a ranked candidate: index and heavy-atom SMILES, then QED and SA, or
    its properties (predicted, with the target)."""
    mol = _mol(str(row.get("smiles") or ""))
    short = Chem.MolToSmiles(mol) if mol is not None else "invalid"
    short = short if len(short) <= 28 else short[:27] + "…"
    values = row_values(row, properties)
    parts = []
    for p in properties:
        predicted, target = values[f"predicted_{p}"], values[f"target_{p}"]
        if not math.isnan(predicted):
            parts.append(f"{p} {predicted:.2f}" + ("" if math.isnan(target) else f" (target {target:.2f})")
                         + f" {PROPERTY_UNITS[p]}")
    if not parts:
        parts = [f"{label} {values[name]:.2f}" for label, name in (("QED", "qed"), ("SA", "sa"))
                 if not math.isnan(values[name])]
    return f"#{row['index']} {short}\n{', '.join(parts)}"


# --- diversity -----------------------------------------------------------------------------------

def _fingerprints(smiles: Sequence[str]) -> list:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    mols = [_mol(s) for s in smiles]
    return [generator.GetFingerprint(m) for m in mols if m is not None]


def mean_pairwise_tanimoto_distance(smiles: Sequence[str]) -> float | None:
    """Mean of ``1 - Tanimoto`` over all pairs of the molecules (Morgan, radius 2, 2048 bits; RDKit's
    ``BulkTanimotoSimilarity``), 0 for identical molecules, up to 1; None for fewer than two."""
    fps = _fingerprints(smiles)
    if len(fps) < 2:
        return None
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1:])) for i in range(len(fps) - 1))
    pairs = len(fps) * (len(fps) - 1) / 2
    return 1.0 - total / pairs


def diversity_summary(smiles: Iterable[str], cap: int = DIVERSITY_CAP, seed: int = DIVERSITY_SEED) -> dict:
    """The diversity of a run's unique valid molecules (empty SMILES are invalid ones, skipped).

    Above ``cap`` unique molecules, ``cap`` of them are drawn without replacement with
    ``numpy.random.default_rng(seed)`` and the mean is computed on those.
    """
    unique = sorted({s for s in smiles if s})
    chosen = unique
    if len(unique) > cap:
        picks = np.random.default_rng(seed).choice(len(unique), size=cap, replace=False)
        chosen = [unique[i] for i in sorted(picks)]
    mean = mean_pairwise_tanimoto_distance(chosen)
    return {"mean_pairwise_tanimoto_distance": None if mean is None else round(mean, 4),
            "molecules": len(chosen), "unique_valid": len(unique),
            "subsampled": len(unique) > cap, "cap": cap, "seed": seed, "fingerprint": FINGERPRINT}

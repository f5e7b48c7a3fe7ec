"""The published QM9 rows a molecules report shows beside the run's (docs/protocols.md §1, the papers' tables).

Unconditional: the EDM metric (EDM 2022 Table 2, GeoLDM 2023 Table 1), 10,000 molecules, 1,000 sampler steps.
Conditional: EDM's protocol, MAE of EDM's property classifier against the targets (EDM Table 3, GeoLDM).
"""
from __future__ import annotations

# (name, atom stability %, molecule stability %, validity %, validity x uniqueness %, novelty %); None: not published
UNCONDITIONAL = [
    ("Data (QM9 itself)", 99.0, 95.2, 97.7, 97.7, None),
    ("EDM (2022), 1000 steps", 98.7, 82.0, 91.9, 90.7, 58.0),
    ("GeoLDM (2023), 1000 steps", 98.9, 89.4, 93.8, 92.7, 57.0),
]
UNCONDITIONAL_COLUMNS = ("atom_stability", "molecule_stability", "validity", "validity_x_uniqueness", "novelty")

# MAE against the target, per property in the units of the candidates table (eV for gap, homo, lumo)
CONDITIONAL = {
    "alpha": [("#Atoms", 3.86), ("EDM", 2.76), ("GeoLDM", 2.37), ("Classifier on real Db (lower bound)", 0.10)],
    "gap": [("#Atoms", 0.866), ("EDM", 0.655), ("GeoLDM", 0.587), ("EEGSDE", 0.487),
            ("Classifier on real Db (lower bound)", 0.064)],
    "homo": [("#Atoms", 0.426), ("EDM", 0.356), ("GeoLDM", 0.340), ("Classifier on real Db (lower bound)", 0.039)],
    "lumo": [("#Atoms", 0.813), ("EDM", 0.584), ("GeoLDM", 0.522), ("Classifier on real Db (lower bound)", 0.036)],
    "mu": [("#Atoms", 1.053), ("EDM", 1.111), ("GeoLDM", 1.108), ("Classifier on real Db (lower bound)", 0.043)],
    "Cv": [("#Atoms", 1.971), ("EDM", 1.101), ("GeoLDM", 1.025), ("Classifier on real Db (lower bound)", 0.040)],
}

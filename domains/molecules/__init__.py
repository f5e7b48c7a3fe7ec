"""The 3D molecules domain of sci-diffusion, in layers (each imports only the ones above it in this list):

- ``chem``: elements, bonds, molecule files, SMILES, per-molecule checks (RDKit);
- ``data``: QM9, custom SDF/XYZ sets, PyG graphs, the data module, property conditioning, the atom state;
- ``generation``: drawing molecules from a trained model (batches, guidance), conformers, trajectories;
- ``models``: the networks (EGNN, e3nn) and the LightningModules that train them (EDM, GeoLDM, property models);
- ``evaluation``: the EDM metrics, the conditional protocol, candidate tables and triage;
- ``cli``: the ``sample molecules`` and ``evaluate molecules`` verbs.

See ``docs/architecture.md``.
"""

# The trained models that ship in checkpoints/ (its README.md gives each one's training budget), by the name
# ``sci_diffusion.checkpoints.bundled_checkpoint`` takes: the unconditional ones by ``sample molecules --model``
# (their ``model_kind``), "unconditional" being the default's file.
DEFAULT_MODEL = "bonds"  # what `sample molecules` draws from without --model: the best by EDM's metric (README)
BUNDLED_CHECKPOINTS = {
    "edm": "qm9_edm_small.ckpt",
    "latent": "qm9_geoldm_small.ckpt",
    "bonds": "qm9_bonds_x0.ckpt",
    "bonds_expert": "qm9_bonds_x0_expert.ckpt",  # the low-noise expert of "bonds" (sample molecules --expert bundled)
    "gap": "qm9_edm_small_cond_gap.ckpt",
    "classifier": "qm9_gap_classifier.ckpt",
    "regressor": "qm9_gap_regressor.ckpt",
    "custom_egfr": "custom_egfr_small.ckpt",
}
BUNDLED_CHECKPOINTS["unconditional"] = BUNDLED_CHECKPOINTS[DEFAULT_MODEL]

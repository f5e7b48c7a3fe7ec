"""The medical report pages (``sci-diffusion report``, ``--report`` on ``translate``, ``evaluate mri2ct`` and
``synthesize medical``): linked volume views (NiiVue, vendored) of MR, synthetic CT, CT, error and uncertainty,
the metrics, the reliability diagram, and for a synthetic data set its contact sheet and per-tissue fidelity,
every view marked SYNTHETIC. The layer above ``evaluation/``, under ``cli/``."""

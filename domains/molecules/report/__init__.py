"""The molecules report page (``sci-diffusion report``, ``--report`` on ``sample molecules`` and ``evaluate
molecules``): the candidates table with 2-D depictions, a 3-D viewer (3Dmol.js, vendored), the run's metrics
beside the published rows, and the conditional plot. The layer above ``evaluation/``, under ``cli/``."""

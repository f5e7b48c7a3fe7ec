"""The molecules domain's plug-in object (entry point ``sci_diffusion.domains: molecules``)."""
from sci_diffusion.domains import Command, Domain

from .cli.commands import add_evaluate_arguments, add_sample_arguments, run_evaluate, run_sample

DOMAIN = Domain(
    "molecules",
    "3D molecules: QM9, E(n)-equivariant diffusion, stability and validity metrics.",
    [
        Command("sample", "molecules", "Draw 3D molecules from a trained model into an SDF or XYZ file.",
                add_sample_arguments, run_sample),
        Command("evaluate", "molecules", "Score an SDF/XYZ file with the EDM metrics (stability, validity, "
                "uniqueness, novelty).", add_evaluate_arguments, run_evaluate),
    ],
)

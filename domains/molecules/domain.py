"""The molecules domain's plug-in object (entry point ``sci_diffusion.domains: molecules``)."""
from sci_diffusion.domains import Command, Domain, Reporter

# Only the argparse tables here: ``sci-diffusion --help`` imports this module, and the verbs (which import
# torch, RDKit and the models at their top) are named by string, imported when the command runs.
from .cli.arguments import add_evaluate_arguments, add_sample_arguments

DOMAIN = Domain(
    "molecules",
    "3D molecules: QM9, E(n)-equivariant diffusion, stability and validity metrics.",
    [
        Command("sample", "molecules", "Draw 3D molecules from a trained model into an SDF or XYZ file.",
                add_sample_arguments, "sci_diffusion_molecules.cli.sample:run_sample"),
        Command("evaluate", "molecules", "Score an SDF/XYZ file with the EDM metrics (stability, validity, "
                "uniqueness, novelty) and, with --xtb, the GFN2-xTB relaxation energy.", add_evaluate_arguments,
                "sci_diffusion_molecules.cli.evaluate:run_evaluate"),
    ],
    Reporter("molecules (an .sdf or .xyz file, or the .json that sample or evaluate molecules wrote)",
             "sci_diffusion_molecules.report.run_output:recognises", "sci_diffusion_molecules.report.page:write_report"),
)

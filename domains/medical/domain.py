"""The medical domain's plug-in object (entry point ``sci_diffusion.domains: medical``)."""
from sci_diffusion.domains import Command, Domain, Reporter

# Only the argparse tables here: ``sci-diffusion --help`` imports this module, and the verbs (which import
# torch, MONAI and nibabel at their top) are named by string, imported when the command runs.
from .cli.arguments import (
    add_audit_arguments,
    add_evaluate_arguments,
    add_phantom_arguments,
    add_synthesize_arguments,
    add_translate_arguments,
)

CLI = "sci_diffusion_medical.cli"
DOMAIN = Domain(
    "medical",
    "Medical images: MRI-to-CT translation with a MONAI diffusion U-Net, NIfTI in and out.",
    [
        Command("phantom", None, "Write paired SYNTHETIC head phantoms (MR, CT, mask, labels) in the SynthRAD2023 layout.",
                add_phantom_arguments, f"{CLI}.phantom:run_phantom"),
        Command("translate", None, "Translate an MR volume into a SYNTHETIC CT (HU), with optional uncertainty and panel.",
                add_translate_arguments, f"{CLI}.translate:run_translate"),
        Command("evaluate", "mri2ct", "Score synthetic CTs against reference CTs with the SynthRAD2023 metrics.",
                add_evaluate_arguments, f"{CLI}.evaluate:run_evaluate"),
        Command("synthesize", "medical", "Write a SYNTHETIC paired MR / CT / tissue-label data set (SynthRAD or nnU-Net layout).",
                add_synthesize_arguments, f"{CLI}.synthesize:run_synthesize"),
        Command("audit", "medical", "Memorisation audit: synthetic subjects registered to their nearest training subjects, "
                "per volume and per slice, flagged against held-out real subjects.",
                add_audit_arguments, f"{CLI}.audit:run_audit"),
    ],
    Reporter("a synthetic CT that translate wrote (beside its .json sidecar), the .json of evaluate mri2ct, or a data "
             "set folder with the dataset.json of synthesize medical or phantom",
             "sci_diffusion_medical.report.run_output:recognises", "sci_diffusion_medical.report.page:write_report"),
)

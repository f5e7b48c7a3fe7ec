"""The medical-imaging domain of sci-diffusion, in layers (each imports only the ones above it in this list):

- ``io``: NIfTI and other image files, grids and resampling, figures;
- ``data``: SynthRAD pairs, MONAI transforms, 2.5-D slices, the paired synthesis slices and their label bits,
  the data modules, the head phantom;
- ``models``: the MONAI U-Net models (diffusion, regression, residual, paired synthesis), their shared
  ``DiffusionModelUNet`` (``unet.py``) and the slice-correlated state space;
- ``translation``: whole-volume MRI-to-CT with a trained model (``translate``): the model, the options and their
  check, the inputs on the model's grid, the volume's samples;
- ``synthetic``: SYNTHETIC paired data sets (``synthesize medical``) and the nnU-Net export;
- ``evaluation``: the SynthRAD metrics and a folder's scores (``evaluate mri2ct``), and the memorisation audit;
- ``cli``: the verbs' flags (``arguments.py``) and one module per verb.

See ``docs/architecture.md``.
"""

# The trained models that ship in checkpoints/ (its README.md gives each one's training budget), by the name
# ``sci_diffusion.checkpoints.bundled_checkpoint`` takes.
BUNDLED_CHECKPOINTS = {
    "translation": "mri2ct_residual.ckpt",
    "regression": "mri2ct_regression.ckpt",
    "diffusion": "mri2ct_phantom.ckpt",
    "synthesis": "paired_synthesis.ckpt",
    "latent_synthesis": "latent_synthesis.ckpt",
    "translation_v2": "mri2ct_v2_residual.ckpt",
    "regression_v2": "mri2ct_v2_regression.ckpt",
    "translation_v2_2steps": "mri2ct_v2_residual_2steps.ckpt",
}

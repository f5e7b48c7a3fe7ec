"""``LatentVolumeSynthesis``: synthetic subjects from a 3-D latent generator, labels first (issue 31; MAISI's design
at CPU scale).

Two stages, each a diffusion model of the core (its schedules, samplers and classifier-free guidance) over the
latent of a frozen 3-D autoencoder (``volume_autoencoder.VolumeAutoencoder``):

1. **Labels**: a 3-D MONAI ``DiffusionModelUNet`` diffuses the latent of the tissue label map, ``z_L (C_L, x, y,
   z)``; the labels autoencoder decodes it to class logits, whose argmax is the subject's anatomy, whole: no slices
   are stacked anywhere.
2. **Images from labels**: a second 3-D U-Net diffuses the latent of MR and CT, ``z_I (C_I, x, y, z)``,
   conditioned on the label map's latent concatenated to its input (the label map is re-encoded after stage 1, so
   the condition is exactly the labels that are written; a user's own label map goes in the same way). The
   condition is dropped for ``cond_dropout`` of the training samples, so that sampling can use classifier-free
   guidance on the labels (``guidance``). The images autoencoder decodes ``z_I`` to MR and CT in [-1, 1].

Each latent is scaled to unit standard deviation over the training copies (``latent_scale``, Rombach et al.'s
scale factor), measured once when training starts and kept in the checkpoint. The training data are
``copies`` augmented copies of every training subject (``data.volumes.augmented_copy``: mirrored, rotated up to
6 degrees, shifted, scaled), encoded once when training starts (``setup``); the latent U-Nets never see a voxel.

Why the core's process rather than MONAI's ``RFlowScheduler``: the core's samplers, guidance, distillation and
step-count checks then serve this model as they serve every other; ``schedule: rectified_flow`` in the config gives
MAISI-v2's rectified flow through the same interface (``paths.py``).

The model holds both autoencoders (frozen) and both U-Nets, so one checkpoint samples subjects on its own. The
autoencoders come from their own trained checkpoints (``label_autoencoder``, ``image_autoencoder``) on the first
construction; their configurations are then recorded (``autoencoder_configs``) and their weights travel in this
model's state dict.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from torch import Tensor
from torch.utils.data import TensorDataset

from sci_diffusion.checkpoints import read_checkpoint
from sci_diffusion.distillation import distilled_times
from sci_diffusion.guidance import ClassifierFreeGuidance
from sci_diffusion.module import DiffusionBatch, DiffusionModule
from sci_diffusion.samplers import get_sampler
from sci_diffusion.state_spaces import EuclideanSpace

from ..data.phantom import CT_BACKGROUND_HU
from ..data.transforms import unit_to_ct
from ..data.volumes import PairedVolumes, augmented_copy, unpad, unpadded_region
from ..io.nifti import MedicalInputError
from .unet import check_unet_size, monai_timesteps
from .volume_autoencoder import VolumeAutoencoder

STAGES = ("labels", "images")


def autoencoder_config(path: str, kind: str) -> dict[str, Any]:
    """The configuration of the trained ``VolumeAutoencoder`` of ``kind`` in the checkpoint ``path``.

    Raises:
        MedicalInputError: the checkpoint holds another model, or an autoencoder of the other kind.
    """
    meta = read_checkpoint(path)["sci_diffusion"]
    config = meta["config"]
    if not meta["module_class"].endswith(":VolumeAutoencoder") or config.get("kind") != kind:
        raise MedicalInputError(f"{path} does not hold a {kind} VolumeAutoencoder "
                                f"(configs/medical/volume_autoencoder_{kind}.yaml trains one).")
    return {k: v for k, v in config.items() if not k.startswith("_")}


class LatentVolumeSynthesis(DiffusionModule):
    """Labels-first 3-D latent generator of paired MR, CT and tissue labels (module docstring).

    Args:
        label_autoencoder, image_autoencoder: trained ``VolumeAutoencoder`` checkpoints (labels, images) whose
            weights the model starts from and freezes; needed on the first construction only.
        autoencoder_configs: ``{"labels": config, "images": config}``, filled in from the two checkpoints.
        channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups: the size of each stage's
            3-D MONAI ``DiffusionModelUNet``.
        copies: augmented copies of each training subject that the latents are encoded from.
        guidance: the default classifier-free guidance weight of the images stage (1: the plain conditional model).
        grid: the training volumes' grid (``PairedVolumes.grid``), filled in when training starts.
        latent_scale: ``[labels, images]`` scale factors, filled in when training starts.
        **kwargs: the core DiffusionModule's arguments; defaults here v-prediction, cosine schedule, T = 1000,
            condition dropout 0.1.
    """

    domain = "medical"

    def __init__(self, label_autoencoder: str | None = None, image_autoencoder: str | None = None,
                 autoencoder_configs: dict[str, dict[str, Any]] | None = None, channels: Sequence[int] = (24, 48, 48),
                 attention_levels: Sequence[bool] = (False, False, True), num_res_blocks: int = 1,
                 num_head_channels: int = 16, norm_num_groups: int = 8, copies: int = 16, guidance: float = 1.0,
                 grid: dict[str, Any] | None = None, latent_scale: list[float] | None = None, **kwargs: Any) -> None:
        fresh = autoencoder_configs is None
        if fresh:
            if not (label_autoencoder and image_autoencoder):
                raise MedicalInputError("A latent synthesis model needs trained autoencoders: give label_autoencoder "
                                        "and image_autoencoder checkpoints.")
            autoencoder_configs = {"labels": autoencoder_config(label_autoencoder, "labels"),
                                   "images": autoencoder_config(image_autoencoder, "images")}
        kwargs.setdefault("schedule", "cosine")
        kwargs.setdefault("prediction", "v")
        kwargs.setdefault("cond_dropout", 0.1)
        kwargs.setdefault("sample_every_n_epochs", 0)
        self._autoencoder_configs = autoencoder_configs
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.hparams["autoencoder_configs"] = autoencoder_configs  # recorded, so the checkpoint rebuilds without them
        for name in STAGES:
            self.autoencoders[name].requires_grad_(False)
        if fresh:
            for name, path in zip(STAGES, (label_autoencoder, image_autoencoder)):
                self.autoencoders[name].load_state_dict(read_checkpoint(path)["state_dict"])

    # ----- the networks ----------------------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        h = self.hparams
        check_unet_size(h.channels, h.attention_levels)
        self.autoencoders = torch.nn.ModuleDict({k: VolumeAutoencoder(**c) for k, c in self._autoencoder_configs.items()})
        width = {k: c["latent_channels"] for k, c in self._autoencoder_configs.items()}
        size = dict(spatial_dims=3, channels=tuple(h.channels), attention_levels=tuple(h.attention_levels),
                    num_res_blocks=h.num_res_blocks, num_head_channels=h.num_head_channels,
                    norm_num_groups=h.norm_num_groups)
        return torch.nn.ModuleDict({
            "labels": DiffusionModelUNet(in_channels=width["labels"], out_channels=width["labels"], **size),
            "images": DiffusionModelUNet(in_channels=width["images"] + width["labels"], out_channels=width["images"],
                                         **size),
        })

    @property
    def latent_widths(self) -> dict[str, int]:
        """Latent channels of each stage."""
        return {k: int(c["latent_channels"]) for k, c in self.hparams.autoencoder_configs.items()}

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, context: Any = None) -> Tensor:
        """Network output for the stage ``context`` (``labels`` or ``images``): ``x_t (B, C, x, y, z)``, ``t`` in
        [0, 1]; the images stage's ``cond`` is the scaled label latent ``(B, C_L, x, y, z)`` (None: zeros, the
        dropped condition)."""
        timesteps = monai_timesteps(t, x_t, self.schedule.T)
        if context == "images":
            if cond is None:
                cond = x_t.new_zeros(x_t.shape[0], self.latent_widths["labels"], *x_t.shape[2:])
            x_t = torch.cat([x_t, cond.to(x_t)], dim=1)
        return self.net[context](x_t, timesteps=timesteps)

    # ----- latents ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_labels(self, labels: Tensor) -> Tensor:
        """Unscaled label latents ``(B, C_L, x, y, z)`` of padded label maps ``(B, X, Y, Z)``."""
        autoencoder = self.autoencoders["labels"]
        return autoencoder.encode(autoencoder.one_hot(labels))

    @torch.no_grad()
    def encode_copies(self, volumes: PairedVolumes, copies: int, seed: int = 0, chunk: int = 4) -> TensorDataset:
        """Label and image latents ``(N * copies, C, x, y, z)`` (unscaled) of ``copies`` copies of each subject: the
        first as it is, the others ``augmented_copy`` draws from the seed sequence ``(seed, subject, copy)``."""
        label_latents, image_latents = [], []
        todo = [(v, k) for v in range(len(volumes.ids)) for k in range(copies)]
        for start in range(0, len(todo), chunk):
            images, labels = [], []
            for v, k in todo[start:start + chunk]:
                image, label = volumes.images[v], volumes.labels[v]
                if k:
                    image, label = augmented_copy(image, label, np.random.default_rng([seed, v, k]))
                images.append(image)
                labels.append(label)
            label_latents.append(self.encode_labels(torch.stack(labels)))
            image_latents.append(self.autoencoders["images"].encode(torch.stack(images)))
        return TensorDataset(torch.cat(label_latents), torch.cat(image_latents))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage != "fit" or getattr(datamodule, "train_volumes", None) is None or datamodule.latents is not None:
            return
        self.hparams["grid"] = datamodule.grid  # saved with the checkpoint
        latents = self.encode_copies(datamodule.train_volumes, self.hparams.copies)
        if not self.hparams.latent_scale:
            self.hparams["latent_scale"] = [float(1.0 / z.std()) for z in latents.tensors]
        datamodule.use_latents(latents)

    # ----- training --------------------------------------------------------------------------
    def stage_batches(self, batch: Sequence[Tensor]) -> list[DiffusionBatch]:
        """The two stages' diffusion batches of a batch of unscaled ``(label latents, image latents)``."""
        scale = self.hparams.latent_scale
        z_labels, z_images = batch[0].float() * scale[0], batch[1].float() * scale[1]
        return [DiffusionBatch(x0=z_labels, space=EuclideanSpace(), context="labels"),
                DiffusionBatch(x0=z_images, space=EuclideanSpace(), cond=z_labels, context="images")]

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        losses = [self.loss_fn(self, b) for b in self.stage_batches(batch)]
        for name, loss in zip(STAGES, losses):
            self.log(f"train/{name}_loss", loss, batch_size=batch[0].shape[0])
        loss = losses[0] + losses[1]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[0].shape[0])
        return loss

    # ----- sampling --------------------------------------------------------------------------
    def _require_grid(self) -> dict[str, Any]:
        if not self.hparams.get("grid") or not self.hparams.get("latent_scale"):
            raise MedicalInputError("This latent synthesis model has no training grid recorded; it was never trained.")
        return self.hparams.grid

    def padded_shape(self) -> list[int]:
        """The padded volume shape ``[X', Y', Z']`` the model works on."""
        grid = self._require_grid()
        return [n + before + after for n, (before, after) in zip(grid["shape"], grid["pad"])]

    def latent_noise(self, stage: str, generator: torch.Generator) -> Tensor:
        """Standard normal noise ``(1, C, x, y, z)`` of a stage's latent."""
        f = self.autoencoders[stage].downsampling
        shape = [n // f for n in self.padded_shape()]
        return torch.randn(1, self.latent_widths[stage], *shape, generator=generator).to(self.device)

    def sample_labels(self, generator: torch.Generator, steps: int, sampler: str) -> Tensor:
        """Stage 1: one padded label map ``(X', Y', Z')`` int64, 0 in the padding."""
        times = distilled_times(self, sampler, steps)
        z = get_sampler(sampler)(self.denoiser(context="labels"), self.latent_noise("labels", generator),
                                 self.schedule, times, EuclideanSpace(), generator=generator)
        labels = self.autoencoders["labels"].decode(z / self.hparams.latent_scale[0]).argmax(1)[0]
        inside = torch.zeros_like(labels, dtype=torch.bool)
        inside[unpadded_region(self._require_grid()["pad"], labels.shape)] = True
        return torch.where(inside, labels, 0)

    def sample_images(self, labels: Tensor, generator: torch.Generator, steps: int, sampler: str,
                      guidance: float | None = None) -> Tensor:
        """Stage 2: MR and CT ``(2, X', Y', Z')`` in [-1, 1] for a padded label map ``(X', Y', Z')``."""
        scale = self.hparams.latent_scale
        cond = self.encode_labels(labels[None].to(self.device)) * scale[0]
        weight = self.hparams.guidance if guidance is None else guidance
        denoiser = ClassifierFreeGuidance(self.denoiser(context="images"), weight)
        times = distilled_times(self, sampler, steps)
        z = get_sampler(sampler)(denoiser, self.latent_noise("images", generator), self.schedule, times,
                                 EuclideanSpace(), cond=cond, generator=generator)
        return self.autoencoders["images"].decode(z / scale[1], labels[None].to(self.device))[0]

    @torch.no_grad()
    def sample_volume(self, generator: torch.Generator, steps: int = 50, sampler: str = "ddpm",
                      labels: Tensor | None = None, guidance: float | None = None) -> dict[str, np.ndarray]:
        """One synthetic subject on the training grid (stage 1 unless ``labels``, a padded ``(X', Y', Z')`` map of
        the user's, is given; then stage 2).

        Returns:
            ``{"mr": (X, Y, Z) float32 in [-1, 1] (background -1), "ct": (X, Y, Z) float32 HU,
            "labels": (X, Y, Z) uint8, "mask": (X, Y, Z) uint8}``; the CT is -1000 HU outside the body
            (labels > 0), as SynthRAD's are.
        """
        pad = self._require_grid()["pad"]
        if labels is None:
            labels = self.sample_labels(generator, steps, sampler)
        images = self.sample_images(labels, generator, steps, sampler, guidance).cpu()
        labels = unpad(labels.cpu(), pad).numpy().astype(np.uint8)
        mr, ct = (unpad(images[i], pad).numpy() for i in range(2))
        mask = labels > 0
        return {"mr": np.where(mask, mr, -1.0).astype(np.float32),
                "ct": np.where(mask, np.round(unit_to_ct(ct)), CT_BACKGROUND_HU).astype(np.float32),
                "labels": labels, "mask": mask.astype(np.uint8)}

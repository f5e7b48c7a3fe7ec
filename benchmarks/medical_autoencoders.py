"""How well do the 3-D latent generator's autoencoders reconstruct heads they did not train on?

The bundled ``latent_synthesis.ckpt`` (or ``--ckpt``) carries its two frozen autoencoders. Each held-out head (the
``--val-subjects`` of the training phantoms that ``split_patients`` holds out with ``--split-seed``, as the
autoencoders' data module did) is encoded and decoded whole, without diffusion:

- labels: voxel agreement and per-tissue Dice of the decoded label map (argmax of the logits);
- images: CT MAE (HU) inside each true tissue, decoded with the true label map (a label-guided decoder sees it).

    python benchmarks/medical_autoencoders.py --root data/phantom_v2_4mm
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
NAME = "medical_autoencoders"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="a LatentVolumeSynthesis checkpoint (default: the bundled one)")
    p.add_argument("--root", type=Path, default=Path("data/phantom_v2_4mm"),
                   help="the training phantoms (written when missing: 40 phantom v2 heads, seed 0, 4 mm)")
    p.add_argument("--val-subjects", type=int, default=2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--no-readme", action="store_true", help="do not touch docs/results (the JSON is still written)")
    return p.parse_args(argv)


def reconstruct(model, volumes) -> dict:
    """Per-tissue Dice of the labels autoencoder and CT MAE of the images autoencoder on ``volumes``."""
    from sci_diffusion_medical.data.transforms import unit_to_ct

    labels_ae, images_ae = model.autoencoders["labels"], model.autoencoders["images"]
    with torch.no_grad():
        decoded = labels_ae.decode(model.encode_labels(volumes.labels)).argmax(1)
        images = images_ae.decode(images_ae.encode(volumes.images), volumes.labels)
    ct_error = np.abs(unit_to_ct(images[:, 1].numpy()) - unit_to_ct(volumes.images[:, 1].numpy()))
    tissues = {}
    for index, name in tissue_names(model).items():
        truth, guess = volumes.labels == index, decoded == index
        tissues[name] = {"voxels": int(truth.sum()),
                         "dice": 2 * float((truth & guess).sum()) / max(1.0, float(truth.sum() + guess.sum())),
                         "ct_mae_hu": float(ct_error[truth.numpy()].mean()) if truth.any() else None}
    return {"voxel_agreement": float((decoded == volumes.labels).float().mean()), "tissues": tissues}


def tissue_names(model) -> dict[int, str]:
    from sci_diffusion_medical.synthetic.dataset import tissue_table

    return tissue_table(model)


def markdown(result: dict) -> str:
    lines = [f"Held-out heads {', '.join(result['subjects'])}; labels voxel agreement "
             f"{result['voxel_agreement']:.3f}.", "", "| tissue | voxels | Dice (labels autoencoder) | CT MAE inside, HU "
             "(images autoencoder) |", "|---|---:|---:|---:|"]
    for name, row in result["tissues"].items():
        mae = "-" if row["ct_mae_hu"] is None else f"{row['ct_mae_hu']:.0f}"
        lines.append(f"| {name} | {row['voxels']:,} | {row['dice']:.3f} | {mae} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from nibabel.affines import voxel_sizes
    from reporting import write_result

    from sci_diffusion.checkpoints import bundled_checkpoint, load_module
    from sci_diffusion_medical.data.datamodule import split_patients, write_phantoms_if_missing
    from sci_diffusion_medical.data.pairs import find_synthrad_pairs
    from sci_diffusion_medical.data.volumes import load_paired_volumes

    torch.set_num_threads(1)
    path = args.ckpt or bundled_checkpoint("sci_diffusion_medical", "latent_synthesis")
    model = load_module(path, domain="medical")
    write_phantoms_if_missing(str(args.root), 40, 4.0, 0, version=2)
    pairs = find_synthrad_pairs(args.root)
    _, held_out = split_patients([p["id"] for p in pairs], args.val_subjects, args.split_seed)
    grid = model.hparams.grid
    voxel_mm = float(voxel_sizes(np.asarray(grid["affine"]))[0])
    volumes = load_paired_volumes(pairs, grid["classes"], spacing_mm=voxel_mm, shape=model.padded_shape()).subset(held_out)
    result = {"checkpoint": str(path), "subjects": held_out, **reconstruct(model, volumes)}
    text = markdown(result)
    write_result(NAME, result, text, update_page=not args.no_readme)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

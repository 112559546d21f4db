"""Img2Noise reconstruction on training images it was not trained on: how to choose between
Img2Noise runs without looking at the test split (the benchmark's 400 test queries are for
reporting only).

    python scripts/heldout_inversion.py --weights runs/n2 runs/n4 [--images 200] [--methods img2noise ddim]

Takes `--images` training images outside the seeded subset that got DDIM-inverted targets
(`img2noise_real_images` of them, drawn as the img2noise stage draws them), so a run whose
loss read only that subset has never seen them. A run trained with `img2noise_recon_all_real`
has seen every training image: its figure here is not held out, and the script says so.
Prints one JSON line per weights folder and method: PSNR and SSIM, as the benchmark computes them.

    python scripts/heldout_inversion.py --weights weights /tmp/w6 --source prior [--images 400]

`--source prior`: people no run has seen, whatever its settings: `--images` NEW identities drawn
from the identity prior (seed 4242) on fresh noises (seeds 90000..), generated and then inverted
like photos (Img2ID reads them resized to its input). Unlike the test queries they are the
generator's own pictures, so a run that trades generated people for real ones reads lower here.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from reid_core.data import DEMO_DATA, load_split, to_array
from reid_core.engine import ReIDEngine, psnr
from reid_core.training.img2noise import inverted_subset


def heldout_indices(num_images: int, preset, count: int, seed: int = 123) -> np.ndarray:
    """`count` training-image indices outside the img2noise stage's inverted subset."""
    rest = np.setdiff1d(np.arange(num_images), inverted_subset(num_images, preset))
    return np.sort(np.random.default_rng(seed).choice(rest, count, replace=False))


def prior_people(engine: ReIDEngine, count: int, seed: int = 4242) -> tuple[np.ndarray, np.ndarray]:
    """`count` generated people of new identities: uint8 images at the model's size and the
    same pictures at Img2ID's input size."""
    ids = engine.sample_identities(count, seed=seed)
    pics = engine.generate(ids, seed=list(range(90000, 90000 + count)))
    return (np.stack([np.asarray(p) for p in pics]),
            np.stack([to_array(p, engine.embed_size) for p in pics]))


def main() -> None:
    from skimage.metrics import structural_similarity
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", nargs="+", default=["weights"])
    ap.add_argument("--data", default=str(DEMO_DATA))
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--methods", nargs="+", default=["img2noise"], choices=["img2noise", "ddim"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--source", choices=["heldout", "prior"], default="heldout",
                    help="training images outside the inverted subset, or generated people of new identities")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for w in a.weights:
        engine = ReIDEngine.from_pretrained(w, device="cpu", load_baseline=False)
        p = engine.preset
        if a.source == "prior":
            imgs, crops = prior_people(engine, a.images)
            held_out = True
        else:
            train = load_split(a.data, "train", engine.image_size, progress=False)
            if len(inverted_subset(len(train.images), p)) == len(train.images):
                raise SystemExit(f"{w}: every training image had an inverted target; none is held out")
            crops = load_split(a.data, "train", engine.embed_size, progress=False).images
            pick = heldout_indices(len(train.images), p, a.images)
            imgs, crops = train.images[pick], crops[pick]
            held_out = not (p.img2noise_recon_weight and p.img2noise_recon_all_real)
        for method in a.methods:
            rec, _, _ = engine.reconstruct_arrays(imgs, method, crops_u8=crops)
            ps = [psnr(x, y) for x, y in zip(imgs, rec)]
            ss = [structural_similarity(x, y, channel_axis=2, data_range=255, win_size=7) for x, y in zip(imgs, rec)]
            print(json.dumps({"weights": w, "source": a.source, "method": method, "images": len(imgs),
                              "psnr": float(np.mean(ps)),
                              "ssim": float(np.mean(ss)),
                              "held_out": held_out}), flush=True)


if __name__ == "__main__":
    main()

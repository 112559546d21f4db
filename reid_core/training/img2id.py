"""Img2ID of the paper's recipe (Sec. 4): trained AFTER the generator, to regress the
identity rows, on real images and on generated ones (prior identities, random noise).

    L = |f - row|^2 / mean(row^2) + proto_weight * CE(-|f - P_k|^2 / (tau * mean row distance^2))

The prototype CE keeps the output in the generator's space but pushes it to the
right row, not just near it. (The joint recipe trains Img2ID in `joint.py` instead.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import Preset
from ..diffusion import ddim_sample, sample_prior
from ..io import atomic_savez
from .augment import Augment, augment, step_rngs
from .common import TrainData, crops_tensor, finish, loss_record, new_img2id, start_weights, write_log
from .loop import TrainLoop, warmup_steps

BANK_FILE = "synth_bank.npz"
PROTO_TEMPERATURE = 0.1  # relative to the rows' mean squared distance: as sharp at any table scale


@torch.no_grad()
def synth_bank(generator, prior, preset: Preset, device: str, batch: int = 256, progress: bool = True):
    """Generated training pairs: half prior-sampled NEW identities, half trained rows; random noise.

    Returns images (N, 3, H, W), their identities (N, id_dim) and noises (N, 3, H, W), on CPU.
    """
    _, g = step_rngs(preset.seed, "synth_bank", 0)
    rows_all = generator.identity_rows().detach().float().cpu()
    n = preset.synth_images
    n_new = n // 2
    ids_new = sample_prior(prior, n_new, g, preset.prior_sample_steps, device).cpu()
    rows = torch.randint(0, len(rows_all), (n - n_new,), generator=g)
    ids = torch.cat([ids_new, rows_all[rows]])
    noise = torch.randn((n, 3, *preset.image_size), generator=g)
    imgs = []
    for i in tqdm(range(0, n, batch), desc="synth bank", disable=not progress, leave=False):
        imgs.append(ddim_sample(generator, ids[i:i + batch].to(device), noise[i:i + batch].to(device),
                                preset.sample_steps).float().cpu())
    return torch.cat(imgs), ids, noise


def load_or_make_bank(generator, prior, preset: Preset, out: Path, device: str, progress: bool):
    """The bank, cached in the run's checkpoints (dropped when the generator is retrained)."""
    path = Path(out) / "checkpoints" / BANK_FILE
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return tuple(torch.from_numpy(z[k]) for k in ("images", "ids", "noise"))
    bank = synth_bank(generator, prior, preset, device, progress=progress)
    atomic_savez(path, images=bank[0].numpy(), ids=bank[1].numpy(), noise=bank[2].numpy())
    return bank


def train_img2id(data: TrainData, generator, prior, preset: Preset, out: Path, *, init: Path | None = None,
                 device: str = "cpu", resume: bool = False, progress: bool = True):
    torch.manual_seed(preset.seed)
    table = generator.identity_rows().detach().float().to(device)
    bank_x, bank_id, _ = load_or_make_bank(generator, prior, preset, out, device, progress)
    enc = start_weights(new_img2id(preset), init, "img2id", imagenet=True).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=preset.img2id_lr, weight_decay=preset.img2id_weight_decay)
    steps = preset.img2id_steps
    loop = TrainLoop("img2id", out, seed=preset.seed, steps=steps, modules={"img2id": enc}, optimizer=opt,
                     schedules=[warmup_steps(steps, max(1, int(steps * preset.img2id_warmup_fraction)), milestones=(0.5,))],
                     checkpoint_every=preset.checkpoint_every, resume=resume, progress=progress)
    table_sq_dist = torch.pdist(table).pow(2).mean().clamp_min(1e-8)
    n_syn = int(round(preset.img2id_batch * preset.synth_fraction))
    n_real = preset.img2id_batch - n_syn
    real_aug, syn_aug = Augment(pad=preset.img2id_size[1] // 8, random_erasing=preset.img2id_erase), Augment()
    labels = data.labels_t

    def step_fn(step, rng, g):
        idx = rng.integers(0, len(data.labels), n_real)
        x = augment(crops_tensor(data.crops, idx), real_aug, g).to(device)
        y = labels[idx].to(device)
        f_parts, t_parts = [enc(x)], [table[y]]
        if n_syn:
            j = torch.from_numpy(rng.integers(0, len(bank_x), n_syn))
            f_parts.append(enc(augment(bank_x[j], syn_aug, g).to(device)))
            t_parts.append(bank_id[j].to(device))
        f, target = torch.cat(f_parts).float(), torch.cat(t_parts)
        loss = F.mse_loss(f, target) / target.pow(2).mean()
        if preset.proto_weight:
            logits = -torch.cdist(f[:n_real], table).pow(2) / (PROTO_TEMPERATURE * table_sq_dist)
            loss = loss + preset.proto_weight * F.cross_entropy(logits, y, label_smoothing=0.1)
        return {"loss": loss}

    history = loop.run(step_fn)
    finish(enc, out, "img2id")
    write_log(out, "img2id", loss_record(history, loop.minutes, batch=preset.img2id_batch))
    return enc

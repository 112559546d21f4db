"""Img2Noise (paper Sec. 4): image -> the noise z with GEN(z, Img2ID(x)) ~ x.

Targets: the exact noise of generated images (the synthetic bank), and the DDIM-inverted
noise of real ones under Img2ID's identity (what the engine pairs it with); plus, with
`img2noise_recon_weight` > 0, an L1 loss on the image rebuilt through the whole sampling
chain (what the paper optimises; `sample_steps` generator passes per step). That loss needs
no target, so with `img2noise_recon_all_real` it reads every real image, not only the inverted
subset; `img2noise_recon_loss` "mse" optimises the squared error PSNR reads, "psnr" the benchmark's
figure itself, each image's PSNR averaged (`psnr_loss`); `img2noise_flip` shows that share
of the real photos mirrored, to that loss only (`draw_batch`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import Preset
from ..diffusion import ddim_invert, ddim_sample
from ..io import atomic_savez
from ..models import NoiseEncoder
from .augment import step_rngs
from .common import TrainData, crops_tensor, finish, loss_record, start_weights, write_log
from .img2id import load_or_make_bank
from .loop import TrainLoop, warmup_cosine


@torch.no_grad()
def embed_crops(img2id, crops: np.ndarray, device: str, batch: int = 256) -> torch.Tensor:
    was = img2id.training
    img2id.eval()
    out = torch.cat([img2id.embed(crops_tensor(crops, np.arange(i, min(i + batch, len(crops)))).to(device)).float().cpu()
                     for i in range(0, len(crops), batch)])
    img2id.train(was)
    return out


@torch.no_grad()
def inverted_noise(generator, images: torch.Tensor, identities: torch.Tensor, subset: np.ndarray, preset: Preset,
                   out: Path, device: str, progress: bool, batch: int = 256) -> torch.Tensor:
    """DDIM-inverted noise of `images` (the real images `subset` picked), cached in the run's
    checkpoints with the subset it belongs to: a cache of another subset (another seed) is
    made anew, never read as this one's."""
    path = Path(out) / "checkpoints" / f"inverted_noise_{len(images)}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if "subset" in z.files and np.array_equal(z["subset"], subset):
                return torch.from_numpy(z["noise"])
    zs = [ddim_invert(generator, images[i:i + batch].to(device), identities[i:i + batch].to(device),
                      preset.sample_steps).float().cpu()
          for i in tqdm(range(0, len(images), batch), desc="ddim inversion", disable=not progress, leave=False)]
    z = torch.cat(zs)
    atomic_savez(path, noise=z.numpy(), subset=np.asarray(subset))
    return z


def inverted_subset(num_images: int, preset: Preset) -> np.ndarray:
    """Sorted indices of the real images that get DDIM-inverted targets: all of them, or a
    seeded subset of `img2noise_real_images` (inversion costs `sample_steps` generator passes
    per image: on a CPU the bank supplies the rest)."""
    if not preset.img2noise_real_images or preset.img2noise_real_images >= num_images:
        return np.arange(num_images)
    rng, _ = step_rngs(preset.seed, "img2noise_subset", 0)
    return np.sort(rng.choice(num_images, preset.img2noise_real_images, replace=False))


def psnr_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Minus the mean of each image's PSNR, over 10 (images (B, C, H, W) in [-1, 1]), up to a
    constant: mean_i log10(MSE_i). The benchmark averages PSNR over images, and the gradient of
    that weighs each image by 1 / MSE_i, where a loss on the batch's pooled error (L1, MSE)
    weighs the worst rebuilt images most."""
    return torch.log10((rec - x).pow(2).flatten(1).mean(1) + 1e-8).mean()


def draw_batch(rng: np.random.Generator, images: torch.Tensor, target_of: torch.Tensor, bank_x: torch.Tensor,
               preset: Preset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's batch: real images i and bank images j, half each.

    Returns (i, j, x, has): x the images, real ones first; `has` marks the images whose target
    noise is known (a bank image, or a real one with an inverted target). With
    `img2noise_flip`, that share of the real images is seen mirrored: a new photo of the same
    person (Img2ID's identity is mirror-invariant, `IdentityEncoder.embed`) whose noise is
    unknown, so it gets the chain loss only."""
    half = preset.img2noise_batch // 2
    i = torch.from_numpy(rng.integers(0, len(images), preset.img2noise_batch - half))
    j = torch.from_numpy(rng.integers(0, len(bank_x), half))
    real, has_real = images[i], target_of[i] >= 0
    if preset.img2noise_flip:
        flip = torch.from_numpy(rng.random(len(i)) < preset.img2noise_flip)
        real = torch.where(flip[:, None, None, None], real.flip(3), real)
        has_real = has_real & ~flip
    return i, j, torch.cat([real, bank_x[j]]), torch.cat([has_real, torch.ones(half, dtype=torch.bool)])


def train_img2noise(data: TrainData, generator, prior, img2id, preset: Preset, out: Path, *,
                    init: Path | None = None, device: str = "cpu", resume: bool = False, progress: bool = True):
    torch.manual_seed(preset.seed)
    bank_x, bank_id, bank_z = load_or_make_bank(generator, prior, preset, out, device, progress)
    pick = inverted_subset(len(data.labels), preset)
    if preset.img2noise_recon_weight and preset.img2noise_recon_all_real:
        # the chain loss needs no target: it reads every real image, the target loss only those
        # with an inverted one (`target_of` -1 for the rest)
        images, real_id = data.images, embed_crops(img2id, data.crops, device)
        target_of = torch.full((len(images),), -1, dtype=torch.long)
        target_of[torch.from_numpy(pick)] = torch.arange(len(pick))
        real_z = inverted_noise(generator, images[pick], real_id[pick], pick, preset, out, device, progress)
    else:
        images, real_id = data.images[pick], embed_crops(img2id, data.crops[pick], device)
        target_of = torch.arange(len(pick))
        real_z = inverted_noise(generator, images, real_id, pick, preset, out, device, progress)
    net = start_weights(NoiseEncoder(sample_size=preset.image_size, block_out_channels=preset.noise_channels,
                                     layers_per_block=preset.noise_layers_per_block,
                                     refine_channels=preset.noise_refine_channels,
                                     refine_layers=preset.noise_refine_layers,
                                     id_dim=preset.id_dim if preset.noise_id_hidden else 0,
                                     id_hidden=preset.noise_id_hidden or 32), init, "img2noise").to(device)
    opt = torch.optim.Adam(net.parameters(), lr=preset.img2noise_lr)
    steps = preset.img2noise_steps
    loop = TrainLoop("img2noise", out, seed=preset.seed, steps=steps, modules={"img2noise": net}, optimizer=opt,
                     schedules=[warmup_cosine(steps, min(preset.img2noise_warmup, steps // 5 + 1))],
                     checkpoint_every=preset.checkpoint_every, resume=resume, progress=progress)
    generator.requires_grad_(False)

    def step_fn(step, rng, g):
        i, j, x, has = draw_batch(rng, images, target_of, bank_x, preset)
        x, has = x.to(device), has.to(device)
        z = torch.cat([real_z[target_of[i].clamp(min=0)], bank_z[j]]).to(device)
        ids = torch.cat([real_id[i], bank_id[j]]).to(device)
        pred = net(x, ids).float()
        loss = F.mse_loss(pred[has], z[has])
        if preset.img2noise_recon_weight and step % preset.img2noise_recon_every == 0:
            rec = ddim_sample(generator, ids, pred, preset.sample_steps, grad=True).float()
            err = {"l1": F.l1_loss, "mse": F.mse_loss, "psnr": psnr_loss}[preset.img2noise_recon_loss]
            loss = loss + preset.img2noise_recon_weight * err(rec, x)
        return {"loss": loss}

    history = loop.run(step_fn)
    finish(net, out, "img2noise")
    write_log(out, "img2noise", loss_record(history, loop.minutes))
    return net

"""The joint recipe (default): DCAC's correlation-aware conditioning mapped onto the paper's
generator. One stage, two phases over one optimizer:

1. steps [0, img2id_steps): Img2ID learns discriminatively on the 128x64 crops with the
   identity table as its class prototypes: label-smoothed CE over cosine logits
   s * <f, P_k> plus batch-hard triplets on the pooled feature and on f (BoT's recipe,
   P x K batches, flip / pad-crop / random erasing). The rows become *semantic*: people
   who look alike get nearby rows, so the generator later learns a smooth map from
   identity to appearance instead of memorising random codes.
2. steps [img2id_steps, img2id_steps + gen_steps): the FiLM generator learns to denoise
   under DCAC's condition c = softmax(logits / tau) . P (Img2ID's class probabilities
   mixing the rows; for a share `cond_from_image` of samples Img2ID's own vector f, so
   the generator also takes the vector of a person it never saw). The diffusion loss
   flows back through c into the table and Img2ID's head, which keep their CE +
   triplet losses. Img2ID's trunk is frozen here and its pooled features of every crop
   (and its mirror) are computed once: on a CPU that is what makes the phase affordable.

At sampling, training identity k is the row P_k / |P_k|; a photo's identity is Img2ID's f.

`gen_bank` > 0 (rejection-sampling fine-tuning, as RAFT, Dong et al. 2023, does for other
generators): the --init weights' engine draws that many pictures of the training rows as Generate
shows them (guidance, Img2ID's steer, best of K by the photos; `distill.engine_pictures`), and a
share `gen_bank_share` of each phase-2 batch is made of them under their rows. The generator
learns what the deployed sampler keeps, so that fewer draws, or cheaper ones, find it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..config import Preset
from ..diffusion import gaussian_blur
from ..losses import batch_hard_triplet_loss, label_smoothed_ce, prototype_logits
from ..schedule import make_scheduler
from .augment import Augment, PKSampler, augment
from .common import (TrainData, channels_last, crops_tensor, diffusion_loss, finish, flip_where, loss_record, new_generator,
                     new_img2id, start_weights, to_tensor, write_log)
from .generator import make_sampler
from .loop import TrainLoop, warmup_cosine, warmup_steps
from .snapshots import snapshot_writer


def discriminative_loss(enc, pooled: torch.Tensor, table: torch.Tensor, y: torch.Tensor, preset: Preset,
                        triplet_on_pooled: bool = True):
    """CE over the table's rows as prototypes + batch-hard triplets; returns (loss, f, logits)."""
    f = enc.identity(pooled)
    logits = prototype_logits(f, table, preset.proto_scale)
    loss = label_smoothed_ce(logits, y) + batch_hard_triplet_loss(f, y, preset.triplet_margin)
    if triplet_on_pooled:
        loss = loss + batch_hard_triplet_loss(pooled, y, preset.triplet_margin)
    return loss, f, logits


def dcac_condition(logits: torch.Tensor, table: torch.Tensor, tau: float) -> torch.Tensor:
    """DCAC: c = sum_k softmax(logits / tau)_k * P_k / |P_k|, (B, id_dim)."""
    return torch.softmax(logits / tau, dim=1) @ F.normalize(table, dim=1)


def joint_generator_loss(gen, enc, sched, x0: torch.Tensor, pooled: torch.Tensor, y: torch.Tensor,
                         preset: Preset, g: torch.Generator, bank: tuple | None = None) -> dict:
    """Phase 2's losses for one batch: images x0 (B, 3, H, W), Img2ID's pooled features of
    the same images (B, feature_dim), labels y. The diffusion loss reaches Img2ID's head and
    the table through the condition c; the discriminative loss keeps them discriminative.
    `bank` (pictures (B', 3, H, W), rows (B',)): generated pictures the diffusion loss also
    reads, each under its row as Generate draws it (`gen_bank`)."""
    table = gen.identity_embedding.weight
    disc, f, logits = discriminative_loss(enc, pooled, table, y, preset, triplet_on_pooled=False)
    c = dcac_condition(logits, table, preset.dcac_tau)
    own = (torch.rand(len(y), generator=g) < preset.cond_from_image).to(x0.device)
    c = torch.where(own[:, None], f, c)
    if bank is not None:
        x0, c = torch.cat([x0, bank[0]]), torch.cat([c, gen.identity_rows(bank[1])])
    drop = (torch.rand(len(x0), generator=g) < preset.identity_dropout).to(x0.device) \
        if preset.identity_dropout else None
    diff, x0_hat, t = diffusion_loss(gen, sched, x0, c, g, preset.gen_loss, drop, snr_gamma=preset.snr_gamma,
                                     with_x0=True)
    out = {"loss": diff + disc, "diffusion": diff, "acc": (logits.argmax(1) == y).float().mean()}
    if preset.id_loss_weight:  # on the real images only
        x0_hat, t, drop = x0_hat[:len(y)], t[:len(y)], None if drop is None else drop[:len(y)]
        keep = (t.to(x0.device) < preset.id_loss_max_t) & (True if drop is None else ~drop)
        seen = gaussian_blur(x0_hat[keep].clamp(-1, 1), preset.id_loss_blur)
        out["identity"] = recognition_loss(enc, seen, table, y[keep], preset) if keep.any() else x0_hat.new_zeros(())
        out["loss"] = out["loss"] + preset.id_loss_weight * out["identity"]
    return out


def recognition_loss(enc, images: torch.Tensor, table: torch.Tensor, y: torch.Tensor, preset: Preset):
    """CE of Img2ID, frozen and in eval mode, recognising identity y in generated images
    (B, 3, H, W). The gradient goes only to the images (so to the generator, and through
    its condition c to what c is made of, as the diffusion loss's does): Img2ID as a
    recogniser is never trained on generated images, what makes an identity recognisable
    stays what real images taught it."""
    frozen = {n: t.detach() for n, t in [*enc.named_parameters(), *enc.named_buffers()]}
    was = enc.training
    enc.eval()
    try:
        f = torch.func.functional_call(enc, frozen, (images,))
    finally:
        enc.train(was)
    return F.cross_entropy(prototype_logits(f, table.detach(), preset.proto_scale), y)


@torch.no_grad()
def pooled_features(enc, crops: np.ndarray, device: str, batch: int = 256, progress: bool = True) -> torch.Tensor:
    """(2, N, feature_dim): Img2ID's pooled features of every crop and of its mirror image."""
    was = enc.training
    enc.eval()
    out = torch.zeros(2, len(crops), enc.feature_dim)
    for i in tqdm(range(0, len(crops), batch), desc="img2id features", disable=not progress, leave=False):
        x = crops_tensor(crops, np.arange(i, min(i + batch, len(crops)))).to(device)
        out[0, i:i + len(x)] = enc.pooled(x).float().cpu()
        out[1, i:i + len(x)] = enc.pooled(x.flip(3)).float().cpu()
    enc.train(was)
    return out


def train_joint(data: TrainData, preset: Preset, out: Path, *, init: Path | None = None, device: str = "cpu",
                resume: bool = False, progress: bool = True):
    torch.manual_seed(preset.seed)
    gen = channels_last(start_weights(new_generator(preset, data.num_ids), init, "generator").to(device))
    enc = start_weights(new_img2id(preset), init, "img2id", imagenet=True).to(device)
    table = gen.identity_embedding.weight
    n_a, n_b = preset.img2id_steps, preset.gen_steps
    total = n_a + n_b
    trunk = [p for n, p in enc.named_parameters() if n.startswith("trunk") and p.requires_grad]
    head = [p for n, p in enc.named_parameters() if not n.startswith("trunk") and p.requires_grad]
    unet = [p for n, p in gen.named_parameters() if not n.startswith("identity_embedding")]
    wd = preset.img2id_weight_decay
    opt = torch.optim.Adam([
        {"params": trunk, "lr": preset.img2id_lr, "weight_decay": wd},
        {"params": head, "lr": preset.img2id_lr, "weight_decay": wd},
        {"params": [table], "lr": preset.img2id_lr, "weight_decay": 0.0},
        {"params": unet, "lr": preset.gen_lr, "weight_decay": 0.0}])
    # phase 1 follows BoT (warm-up, x0.1 at half-way); in phase 2 the head and table go on at joint_head_lr
    bot = dict(total=n_a, warmup=max(1, int(n_a * preset.img2id_warmup_fraction)), milestones=(0.5,), end=n_a)
    later = preset.joint_head_lr / preset.img2id_lr
    schedules = [warmup_steps(**bot, after=0.0), warmup_steps(**bot, after=later),
                 warmup_steps(**bot, after=later), warmup_cosine(total, preset.gen_warmup, start=n_a)]
    ema = EMAModel(unet, decay=preset.ema_decay)
    sched = make_scheduler()
    aug = Augment(flip=True, pad=preset.img2id_size[1] // 8, random_erasing=preset.img2id_erase)
    id_sampler = PKSampler(data.labels, min(preset.img2id_batch // preset.img2id_K, data.num_ids), preset.img2id_K)
    n_bank = int(round(preset.gen_batch * preset.gen_bank_share)) if preset.gen_bank else 0
    if n_bank:
        if init is None:
            raise ValueError("gen_bank is drawn by the --init weights' engine: give --init")
        from .distill import engine_pictures
        bank = engine_pictures(init, preset.gen_bank, out, device, progress)
        bank_images, bank_rows = to_tensor(bank["images"].numpy()), bank["rows"].long()
    gen_sampler = make_sampler(data, preset.gen_batch - n_bank, preset.gen_K or 4)
    labels = data.labels_t
    cache: dict[str, torch.Tensor] = {}
    loop = TrainLoop("joint", out, seed=preset.seed, steps=total, modules={"generator": gen, "img2id": enc},
                     optimizer=opt, schedules=schedules, ema=ema, ema_params=unet, ema_start=n_a,
                     checkpoint_every=preset.checkpoint_every, snapshot_every=preset.snapshot_every,
                     on_snapshot=snapshot_writer(out, "joint", {"generator": gen, "img2id": enc}),
                     resume=resume, progress=progress)

    def img2id_step(rng, g):
        idx = id_sampler.sample(rng)
        x = augment(crops_tensor(data.crops, idx), aug, g).to(device)
        y = labels[idx].to(device)
        loss, _, logits = discriminative_loss(enc, enc.pooled(x), table, y, preset)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    def generator_step(rng, g):
        if "pooled" not in cache:  # the trunk is frozen from here on: its features never change
            cache["pooled"] = pooled_features(enc, data.crops, device, progress=progress)
        idx = torch.from_numpy(gen_sampler.sample(rng))
        flip = torch.rand(len(idx), generator=g) < 0.5
        x0 = flip_where(data.images[idx], flip).to(device)
        pooled = cache["pooled"][flip.long(), idx].to(device)
        extra = None
        if n_bank:
            j = torch.from_numpy(rng.integers(0, len(bank_rows), n_bank))
            extra = (flip_where(bank_images[j], torch.rand(n_bank, generator=g) < 0.5).to(device), bank_rows[j].to(device))
        return joint_generator_loss(gen, enc, sched, x0, pooled, labels[idx].to(device), preset, g, bank=extra)

    def step_fn(step, rng, g):
        # the trunk gets no gradient in phase 2 (its features come from the cache): Adam skips it
        return img2id_step(rng, g) if step < n_a else generator_step(rng, g)

    history = loop.run(step_fn)
    ema.copy_to(unet)
    finish(gen, out, "generator")
    finish(enc, out, "img2id")
    write_log(out, "joint", loss_record(history, loop.minutes, img2id_steps=n_a, gen_steps=n_b,
                                        batch=preset.gen_batch))
    return gen, enc

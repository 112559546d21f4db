"""The generator stage of the paper's recipe (Asperti et al. Sec. 3): the U-Net and the
identity table learned together from random rows, on noise prediction alone.

    L = |eps - GEN(x_t, t, table[y])|_1 + emb_pull * mean(table[y]^2)

Options measured against it (docs/BENCHMARKS.md, ablation): FiLM conditioning, the
table in its own Adam group (`table_lr`, `table_init_std`), identity-balanced P x K
batches (`gen_K`), identity dropout for classifier-free guidance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from ..config import Preset
from ..schedule import make_scheduler
from .augment import PKSampler
from .common import (TrainData, channels_last, diffusion_loss, finish, flip_where, loss_record, new_generator,
                     start_weights, write_log)
from .loop import TrainLoop, warmup_cosine
from .snapshots import snapshot_writer


def generator_batch(data: TrainData, preset: Preset, rng: np.random.Generator, sampler: PKSampler | None):
    """Indices of one generator batch: P x K identities (gen_K > 0) or uniform draws (the paper)."""
    if sampler is not None:
        return torch.from_numpy(sampler.sample(rng))
    return torch.from_numpy(rng.integers(0, len(data.labels), preset.gen_batch))


def make_sampler(data: TrainData, batch: int, K: int) -> PKSampler | None:
    return PKSampler(data.labels, min(batch // K, data.num_ids), K) if K else None


def train_generator(data: TrainData, preset: Preset, out: Path, *, init: Path | None = None,
                    device: str = "cpu", resume: bool = False, progress: bool = True):
    torch.manual_seed(preset.seed)
    gen = channels_last(start_weights(new_generator(preset, data.num_ids), init, "generator").to(device))
    table = gen.identity_embedding.weight
    rest = [p for n, p in gen.named_parameters() if not n.startswith("identity_embedding")]
    groups = [{"params": rest, "lr": preset.gen_lr},
              {"params": [table], "lr": preset.table_lr or preset.gen_lr}]
    opt = torch.optim.Adam(groups)
    ema = EMAModel(rest, decay=preset.ema_decay)
    sched = make_scheduler()
    sampler = make_sampler(data, preset.gen_batch, preset.gen_K)
    labels = data.labels_t
    schedule = warmup_cosine(preset.gen_steps, preset.gen_warmup)
    loop = TrainLoop("generator", out, seed=preset.seed, steps=preset.gen_steps, modules={"generator": gen},
                     optimizer=opt, schedules=[schedule, schedule], ema=ema, ema_params=rest,
                     checkpoint_every=preset.checkpoint_every, snapshot_every=preset.snapshot_every,
                     on_snapshot=snapshot_writer(out, "generator", {"generator": gen}),
                     resume=resume, progress=progress)

    def step_fn(step, rng, g):
        idx = generator_batch(data, preset, rng, sampler)
        x0 = flip_where(data.images[idx], torch.rand(len(idx), generator=g) < 0.5).to(device)
        emb = gen.identity_rows(labels[idx].to(device))
        drop = (torch.rand(len(idx), generator=g) < preset.identity_dropout).to(device) \
            if preset.identity_dropout else None
        diff = diffusion_loss(gen, sched, x0, emb, g, preset.gen_loss, drop, snr_gamma=preset.snr_gamma)
        return {"loss": diff + preset.emb_pull * emb.pow(2).mean(), "diffusion": diff}

    history = loop.run(step_fn)
    ema.copy_to(rest)  # the EMA weights are the ones we ship (the table is not averaged)
    finish(gen, out, "generator")
    write_log(out, "generator", loss_record(history, loop.minutes, batch=preset.gen_batch,
                                            images_per_s=preset.gen_batch * len(history) / max(1e-9, loop.seconds)))
    return gen

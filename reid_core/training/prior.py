"""The identity prior (paper Sec. 3): a small diffusion model over the trained identities'
vectors, as the generator reads them, standardised by their mean and std."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import Preset
from ..models import IdentityPrior
from ..schedule import NUM_TRAIN_TIMESTEPS, make_scheduler, noise_variance
from .common import finish, loss_record, write_log
from .loop import TrainLoop, warmup_cosine


def train_prior(generator, preset: Preset, out: Path, *, device: str = "cpu", resume: bool = False,
                progress: bool = True) -> IdentityPrior:
    torch.manual_seed(preset.seed)
    rows = generator.identity_rows().detach().float().to(device)
    prior = IdentityPrior(id_dim=preset.id_dim, hidden_dim=preset.prior_hidden,
                          num_layers=preset.prior_layers).to(device)
    prior.mean.copy_(rows.mean(0))
    prior.std.copy_(rows.std(0).clamp_min(1e-6))
    z0_all = prior.standardise(rows)
    opt = torch.optim.Adam(prior.parameters(), lr=preset.prior_lr)
    sched = make_scheduler()
    loop = TrainLoop("prior", out, seed=preset.seed, steps=preset.prior_steps, modules={"prior": prior},
                     optimizer=opt, schedules=[warmup_cosine(preset.prior_steps, min(preset.prior_warmup, preset.prior_steps // 10 + 1))],
                     checkpoint_every=preset.checkpoint_every * 10, resume=resume, progress=progress)

    def step_fn(step, rng, g):
        idx = torch.randint(0, len(z0_all), (preset.prior_batch,), generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=g)
        eps = torch.randn((len(idx), preset.id_dim), generator=g).to(device)
        z_t = sched.add_noise(z0_all[idx], eps, t.to(device))
        return {"loss": F.mse_loss(prior(z_t, noise_variance(sched, t).to(device)), eps)}

    history = loop.run(step_fn)
    finish(prior, out, "prior")
    write_log(out, "prior", loss_record(history, loop.minutes))
    return prior

"""Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
stage 1): the generator learns to take the guidance scale w as an input and to predict,
in one pass, what a frozen copy of itself predicts with classifier-free guidance in two:

    L = | GEN_s(x_t, t, c, w) - [GEN(x_t, t, null) + w (GEN(x_t, t, c) - GEN(x_t, t, null))] |_1

x_t are training images noised at a uniform level; c is the identity the apps sample with:
the image's table row (Generate) or Img2ID's vector of the image (Invert, swaps), in the
joint recipe's proportions; w is 1 (the plain conditional prediction, which inversion and
Img2Noise's chain read), the preset's scale, or uniform on [1, distill_max_scale], a third
each. The student starts as the teacher (its guidance embedding starts at zero) and the
table stays frozen, so Img2ID, the prior and Img2Noise keep their identity space.
Why: sampling with guidance costs two passes per guided step, and the picture must come
in 100 ms on two cores (docs/BENCHMARKS.md).
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from ..config import Preset
from ..diffusion import guided_eps
from ..models import IdentityUNet
from ..schedule import NUM_TRAIN_TIMESTEPS, make_scheduler, noise_variance
from .common import TrainData, channels_last, finish, flip_where, loss_record, write_log
from .generator import make_sampler
from .img2noise import embed_crops
from .loop import TrainLoop, warmup_cosine
from .snapshots import snapshot_writer


def student_of(teacher: IdentityUNet) -> IdentityUNet:
    """A copy of `teacher` that takes the guidance scale as an input (a teacher that already
    does is copied whole: distillation goes on from it)."""
    student = IdentityUNet.from_config(teacher.config, guidance_embedding=True)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
        raise ValueError(f"the student does not fit the teacher: {(unexpected or missing)[:3]}")
    return student


def draw_scales(n: int, preset: Preset, g: torch.Generator) -> torch.Tensor:
    """(n,) guidance scales: 1, the preset's scale, or uniform on [1, distill_max_scale], a third each."""
    kind = torch.randint(0, 3, (n,), generator=g)
    uniform = 1.0 + torch.rand(n, generator=g) * (preset.distill_max_scale - 1.0)
    return torch.where(kind == 0, torch.ones(n), torch.where(kind == 1, torch.full((n,), preset.guidance_scale),
                                                                uniform))


def train_distill(data: TrainData, teacher: IdentityUNet, img2id, preset: Preset, out: Path, *,
                  init: Path | None = None, device: str = "cpu", resume: bool = False, progress: bool = True):
    if not teacher.supports_guidance:
        raise ValueError("guidance distillation needs a generator with a null identity (conditioning 'film')")
    torch.manual_seed(preset.seed)
    teacher = channels_last(teacher.to(device).eval().requires_grad_(False))
    student = channels_last(student_of(teacher).to(device))
    student.identity_embedding.requires_grad_(False)  # Img2ID, the prior and Img2Noise live in its space
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=preset.distill_lr)
    ema = EMAModel(params, decay=preset.ema_decay)
    sched = make_scheduler()
    sampler = make_sampler(data, preset.distill_batch, preset.gen_K or 4)
    labels = data.labels_t
    image_ids = embed_crops(img2id.to(device), data.crops, device)  # what Invert reads from a photo
    loop = TrainLoop("distill", out, seed=preset.seed, steps=preset.distill_steps, modules={"generator": student},
                     optimizer=opt, schedules=[warmup_cosine(preset.distill_steps, preset.distill_warmup)],
                     ema=ema, ema_params=params, checkpoint_every=preset.checkpoint_every,
                     snapshot_every=preset.snapshot_every,
                     on_snapshot=snapshot_writer(out, "distill", {"generator": student}),
                     resume=resume, progress=progress)

    def step_fn(step, rng, g):
        idx = torch.from_numpy(sampler.sample(rng))
        b = len(idx)
        x0 = flip_where(data.images[idx], torch.rand(b, generator=g) < 0.5).to(device)
        own = (torch.rand(b, generator=g) < preset.cond_from_image).to(device)
        c = torch.where(own[:, None], image_ids[idx].to(device), student.identity_rows(labels[idx].to(device)))
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (b,), generator=g)
        x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g).to(device), t.to(device))
        var = noise_variance(sched, t).to(device)
        w = draw_scales(b, preset, g).to(device)
        with torch.no_grad():
            target = guided_eps(teacher, x_t, var, c, w)
        loss = (student(x_t, var, c, guidance=w).float() - target.float()).abs().mean()
        return {"loss": loss}

    history = loop.run(step_fn)
    ema.copy_to(params)
    finish(student, out, "generator")
    write_log(out, "distill", loss_record(history, loop.minutes, batch=preset.distill_batch))
    return student

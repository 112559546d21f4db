"""Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
stage 1): the generator learns to take the guidance scale w as an input and to predict,
in one pass, what a frozen copy of itself predicts with classifier-free guidance in two:

    L = | GEN_s(x_t, t, c, w) - [GEN(x_t, t, null) + w (GEN(x_t, t, c) - GEN(x_t, t, null))] |_1

x_t are training images noised at a uniform level, and (with `distill_bank` > 0, half of each
batch) the states of the teacher's own guided sampling chains, as deployed (the scale on steps
guidance_start.., 1 before), whose predictions are stored with them: the states the student
meets when it samples, which noised real images are not. c is the identity the apps sample with:
the image's table row (Generate) or Img2ID's vector of the image (Invert, swaps), in the
joint recipe's proportions; w is 1 (the plain conditional prediction, which inversion and
Img2Noise's chain read), the preset's scale, or uniform on [1, distill_max_scale], a third
each. With `distill_bank_sampler` "engine", the bank holds instead the chains the --init weights'
engine keeps when Generate draws a training row by seed (`deployed_bank`: guidance, Img2ID's
steer, best of K by the photos), and the noised real images teach w = 1 only: the student is
asked to draw in one pass a step what the deployed sampler draws in K x 2 passes and 5 steers.
The student starts as the teacher (its guidance embedding starts at zero) and the
table stays frozen, so Img2ID, the prior and Img2Noise keep their identity space.
Why: sampling with guidance costs two passes per guided step, and the picture must come
in 100 ms on two cores (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from ..config import Preset
from ..diffusion import ddim_sample, guided_eps
from ..io import atomic_savez
from ..models import IdentityUNet
from ..schedule import NUM_TRAIN_TIMESTEPS, make_scheduler, noise_variance
from .common import TrainData, channels_last, finish, flip_where, loss_record, write_log
from .generator import make_sampler
from .img2noise import embed_crops
from .loop import TrainLoop, warmup_cosine
from .snapshots import snapshot_writer

BANK_FILE = "distill_bank.npz"
PICTURES_FILE = "deployed_pictures.npz"


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


def teacher_key(teacher: IdentityUNet, preset: Preset, n: int) -> str:
    """What a trajectory bank was made from: the teacher's weights and the sampling it followed."""
    h = hashlib.sha1()
    for v in teacher.state_dict().values():
        h.update(v.detach().float().cpu().numpy().tobytes())
    h.update(repr(("guided 3/4", n, preset.seed, preset.sample_steps, preset.guidance_scale, preset.guidance_steps,
                   preset.guidance_start, tuple(preset.image_size))).encode())
    return h.hexdigest()


@torch.no_grad()
def trajectory_bank(teacher: IdentityUNet, identities: torch.Tensor, guided: torch.Tensor, preset: Preset,
                    device: str, progress: bool = True, batch: int = 128) -> dict:
    """The teacher's DDIM chains from seeded noise under `identities` (n, id_dim), guided as the
    engine samples where `guided` (n,) is set, plain (scale 1: how Invert rebuilds a photo and
    Img2Noise trains) elsewhere. Per chain and step: the state x (n, steps, 3, H, W), the
    teacher's prediction there (the student's target), the timestep and the scale (fp16 states)."""
    from tqdm.auto import tqdm
    n, steps = len(identities), preset.sample_steps
    noise = torch.randn(n, 3, *preset.image_size, generator=torch.Generator().manual_seed(preset.seed + 1))
    bank = empty_bank(identities.float().cpu(), steps, preset.image_size)
    for on in (True, False):
        which = torch.nonzero(guided == on).flatten()
        for i in tqdm(range(0, len(which), batch), desc="teacher chains", disable=not progress, leave=False):
            sel, trace = which[i:i + batch], []
            ddim_sample(teacher, identities[sel].to(device), noise[sel].to(device), steps,
                        guidance_scale=preset.guidance_scale if on else 1.0,
                        guidance_steps=preset.guidance_steps or None, guidance_start=preset.guidance_start,
                        trace=trace)
            store_trace(bank, sel, trace)
    return bank


def empty_bank(ids: torch.Tensor, steps: int, size) -> dict:
    """A bank for len(ids) chains of `steps` steps at image `size`: per chain and step the state
    and the prediction stepped with (fp16), the scale; the timesteps; the identities."""
    n = len(ids)
    states = torch.zeros(n, steps, 3, *size, dtype=torch.float16)
    return {"states": states, "targets": torch.zeros_like(states), "ids": ids,
            "timesteps": torch.zeros(steps, dtype=torch.long), "scales": torch.ones(n, steps)}


def store_trace(bank: dict, sel, trace: list) -> None:
    """Write a `ddim_sample` trace [(x, timestep, scale, prediction) per step] into chains `sel`."""
    for k, (x, t, w, pred) in enumerate(trace):
        bank["states"][sel, k], bank["targets"][sel, k] = x.half().cpu(), pred.half().cpu()
        bank["timesteps"][k], bank["scales"][sel, k] = int(t), float(w)


def cached_bank(out: Path, key: str, make, name: str = BANK_FILE) -> dict:
    """A bank (a dict of tensors: chains, or pictures), cached in the run's checkpoints as `name`
    under `key` (what it was made from)."""
    path = Path(out) / "checkpoints" / name
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: torch.from_numpy(z[k]) for k in z.files if k != "key"}
    bank = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(path, key=np.array(key), **{k: v.numpy() for k, v in bank.items()})
    return bank


def chain_ends(bank: dict, teacher: IdentityUNet) -> torch.Tensor:
    """(n, 3, H, W) the pictures a bank's chains end in: each last state stepped with its prediction."""
    sched = make_scheduler(prediction_type=teacher.config.prediction_type)
    sched.set_timesteps(bank["states"].shape[1])
    t = bank["timesteps"][-1]
    return torch.cat([sched.step(bank["targets"][i:i + 256, -1].float(), t, bank["states"][i:i + 256, -1].float()
                                 ).prev_sample.clamp(-1.0, 1.0) for i in range(0, len(bank["ids"]), 256)])


def engine_bank_plan(engine, n: int, what: str = "deployed") -> tuple[np.ndarray, np.ndarray, str]:
    """The rows and seeds of an engine-drawn bank of `n` chains or pictures (`what`; every training
    row in turn, seeds from 10,000: the benchmark draws 0-7) and its cache key (the engine's
    fingerprint, which holds its generator, Img2ID, table and the preset's sampling settings)."""
    rows = np.arange(n) % engine.num_identities
    seeds = 10_000 + np.arange(n)
    return rows, seeds, hashlib.sha1(repr((what, n, engine.fingerprint_of("img2id"))).encode()).hexdigest()


def engine_pictures(init: Path, n: int, out: Path, device: str = "cpu", progress: bool = True) -> dict:
    """The pictures Generate shows of `n` training rows (`engine_bank_plan`'s) with the weights in
    `init`: {"images": uint8 (n, H, W, 3), "rows": (n,)}, cached in the run's checkpoints."""
    from ..engine import ReIDEngine
    engine = ReIDEngine.from_pretrained(init, device=device, load_baseline=False)
    rows, seeds, key = engine_bank_plan(engine, n, "deployed pictures")

    @torch.no_grad()
    def draw(batch: int = 32) -> dict:
        from tqdm.auto import tqdm
        images = np.zeros((n, *engine.image_size, 3), np.uint8)
        for i in tqdm(range(0, n, batch), desc="deployed pictures", disable=not progress, leave=False):
            shown = engine.generate(engine.identity_table[rows[i:i + batch]], seed=[int(s) for s in seeds[i:i + batch]])
            images[i:i + len(shown)] = np.stack([np.asarray(im) for im in shown])
        return {"images": torch.from_numpy(images), "rows": torch.from_numpy(rows)}
    return cached_bank(out, key, draw, name=PICTURES_FILE)


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
    labels = data.labels_t
    image_ids = embed_crops(img2id.to(device), data.crops, device)  # what Invert reads from a photo
    n_bank = preset.distill_batch // 2 if preset.distill_bank else 0
    deployed = preset.distill_bank_sampler == "engine"
    if n_bank and deployed:
        if init is None:
            raise ValueError("distill_bank_sampler 'engine' draws its chains with the --init weights: give --init")
        from ..engine import ReIDEngine
        engine = ReIDEngine.from_pretrained(init, device=device, load_baseline=False)
        drawn = (engine.preset.sample_steps, engine.guidance_scale, engine.guidance_start, engine.guidance_steps)
        if drawn != (preset.sample_steps, preset.guidance_scale, preset.guidance_start, preset.guidance_steps or None):
            raise ValueError(f"the --init weights sample with (steps, scale, first guided step, guided steps) {drawn}, "
                             "this preset otherwise: the student would learn scales it is not asked for")
        rows, seeds, key = engine_bank_plan(engine, preset.distill_bank)
        bank = cached_bank(out, key, lambda: deployed_bank(engine, rows, seeds, progress))
        del engine
    elif n_bank:  # guided chains under training rows (Generate) and Img2ID's vectors of photos (swaps),
        # plain chains under Img2ID's vectors (Invert, Img2Noise): a half, a quarter, a quarter
        pick = np.random.default_rng(preset.seed).integers(0, len(labels), preset.distill_bank)
        half = len(pick) // 2
        rows = student.identity_rows(labels[pick[:half]].to(device)).detach().cpu()
        guided = torch.arange(len(pick)) < half + (len(pick) - half) // 2
        ids = torch.cat([rows, image_ids[pick[half:]]])
        bank = cached_bank(out, teacher_key(teacher, preset, len(ids)),
                           lambda: trajectory_bank(teacher, ids, guided, preset, device, progress))
    sampler = make_sampler(data, preset.distill_batch - n_bank, preset.gen_K or 4)
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
        w = torch.ones(b, device=device) if deployed else draw_scales(b, preset, g).to(device)
        with torch.no_grad():
            target = guided_eps(teacher, x_t, var, c, w)
        if n_bank:
            j = torch.from_numpy(rng.integers(0, len(bank["ids"]), n_bank))
            k = torch.from_numpy(rng.integers(0, preset.sample_steps, n_bank))
            x_t = torch.cat([x_t, bank["states"][j, k].float().to(device)])
            var = torch.cat([var, noise_variance(sched, bank["timesteps"][k]).to(device)])
            c = torch.cat([c, bank["ids"][j].to(device)])
            w = torch.cat([w, bank["scales"][j, k].to(device)])
            target = torch.cat([target.float(), bank["targets"][j, k].float().to(device)])
        loss = (student(x_t, var, c, guidance=w).float() - target.float()).abs().mean()
        return {"loss": loss}

    history = loop.run(step_fn)
    ema.copy_to(params)
    finish(student, out, "generator")
    write_log(out, "distill", loss_record(history, loop.minutes, batch=preset.distill_batch))
    return student


@torch.no_grad()
def deployed_bank(engine, rows: np.ndarray, seeds: np.ndarray, progress: bool = True, batch: int = 32) -> dict:
    """The chains the engine keeps when it draws training identity `rows` (n,) by `seeds` (n,) as
    Generate does (guidance, Img2ID's steer, best of its `identity_candidates` by the photos):
    per chain and step the kept candidate's state, the prediction the sampler stepped with
    (guided and steered), the timestep and the scale; `trajectory_bank`'s format. What a
    one-pass student learns to follow: the whole deployed sampler, not only its guidance."""
    from tqdm.auto import tqdm
    ids = np.ascontiguousarray(engine.identity_table[np.asarray(rows)], np.float32)
    bank = empty_bank(torch.from_numpy(ids), engine.preset.sample_steps, engine.image_size)
    for i in tqdm(range(0, len(ids), batch), desc="deployed chains", disable=not progress, leave=False):
        sl, trace = slice(i, i + batch), []
        with torch.inference_mode():
            engine._draw(ids[sl], engine.candidate_noises([int(s) for s in seeds[sl]], engine.identity_candidates),
                         trace=trace)
        store_trace(bank, sl, trace)
    return bank

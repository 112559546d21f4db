"""Training: generator -> identity prior -> Img2ID -> Img2Noise (-> BoT baseline).

    python -m reid_core.train --data DIR --preset cpu --out runs/cpu [--stages generator prior] [--resume]

Every stage writes `OUT/<stage>/` (config.json + safetensors, via save_pretrained)
when it finishes, and `OUT/checkpoints/<stage>.pt` atomically while it runs.
Randomness is drawn from a torch.Generator seeded by (seed, stage, step), so a
run killed at any point and restarted with --resume replays the exact batches
it would have drawn: no RNG state needs saving.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .config import PRESETS, Preset, get_preset
from .data import load_split, relabel, to_tensor
from .diffusion import ddim_invert, ddim_sample, sample_prior
from .io import atomic_torch_save
from .models import IdentityEncoder, IdentityPrior, IdentityUNet
from .schedule import NUM_TRAIN_TIMESTEPS, make_scheduler, noise_variance

STAGES = ("generator", "prior", "img2id", "img2noise", "pose", "baseline")
_STAGE_SALT = {name: i + 1 for i, name in enumerate(STAGES)}


# ---------------------------------------------------------------- helpers

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + _STAGE_SALT[stage] * 100_003 + step)


def load_checkpoint(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()


def augment(x: torch.Tensor, g: torch.Generator, flip: bool = True, shift: int = 0,
            erase: float = 0.0) -> torch.Tensor:
    """Random horizontal flip (the paper's only augmentation); optional shift and erasing for Img2ID."""
    b, _, h, w = x.shape
    if flip:
        mask = torch.rand(b, generator=g) < 0.5
        x = torch.where(mask[:, None, None, None].to(x.device), x.flip(3), x)
    if shift:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        dx, dy = torch.randint(0, 2 * shift + 1, (2, b), generator=g)
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if erase:
        x = x.clone()
        for i in torch.nonzero(torch.rand(b, generator=g) < erase).flatten().tolist():
            eh = int(torch.randint(h // 8, h // 2 + 1, (1,), generator=g))
            ew = int(torch.randint(w // 8, w // 2 + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h - eh + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - ew + 1, (1,), generator=g))
            x[i, :, y0:y0 + eh, x0:x0 + ew] = torch.rand(3, 1, 1, generator=g).to(x) * 2 - 1
    return x


class Stage:
    """The loop every stage shares: resume, lr schedule, tqdm, periodic atomic checkpoints."""

    def __init__(self, name: str, out: Path, preset: Preset, total: int, lr: float, warmup: int,
                 modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer,
                 ema: EMAModel | None = None, resume: bool = False, progress: bool = True,
                 ema_params: list | None = None):
        self.name, self.out, self.preset, self.total = name, out, preset, total
        # the parameters the EMA tracks: by default those of the first module
        self.ema_params = ema_params if ema_params is not None else \
            list(next(iter(modules.values())).parameters())
        self.lr, self.warmup, self.modules, self.opt, self.ema = lr, warmup, modules, opt, ema
        self.progress = progress
        self.ckpt = out / "checkpoints" / f"{name}.pt"
        self.start = 0
        state = load_checkpoint(self.ckpt) if resume else None
        if state is not None:
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            opt.load_state_dict(state["opt"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            self.start = int(state["step"])
        self.history: list[float] = list(state["history"]) if state is not None else []

    def save(self, step: int) -> None:
        atomic_torch_save({"step": step, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                           "opt": self.opt.state_dict(),
                           "ema": self.ema.state_dict() if self.ema is not None else {},
                           "history": self.history}, self.ckpt)

    def run(self, step_fn) -> list[float]:
        """step_fn(step, torch.Generator) -> scalar loss tensor (already backpropagated-free)."""
        bar = tqdm(range(self.start, self.total), initial=self.start, total=self.total,
                   desc=self.name, disable=not self.progress, dynamic_ncols=True)
        t0, n0 = time.perf_counter(), self.start
        for step in bar:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(step, self.total, self.lr, self.warmup)
            loss = step_fn(step, step_generator(self.preset.seed, self.name, step))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()
                                            if p.requires_grad], 1.0)
            self.opt.step()
            if self.ema is not None:
                self.ema.step(self.ema_params)
            self.history.append(loss.item())
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(self.history[-50:]):.4f}")
            if (step + 1) % self.preset.checkpoint_every == 0 and step + 1 < self.total:
                self.save(step + 1)
        self.save(self.total)
        self.throughput = (self.total - n0) / max(1e-9, time.perf_counter() - t0)
        return self.history


def _write_log(out: Path, stage: str, info: dict) -> None:
    path = out / "training_log.json"
    log = json.loads(path.read_text()) if path.exists() else {}
    log[stage] = info
    tmp = path.with_name(".training_log.json.tmp")
    tmp.write_text(json.dumps(log, indent=2))
    os.replace(tmp, path)


def _done(out: Path, stage: str) -> bool:
    return (out / stage / "config.json").exists()


# ---------------------------------------------------------------- stages

def train_generator(images: torch.Tensor, labels: torch.Tensor, num_ids: int, preset: Preset,
                    out: Path, device: str, resume: bool, progress: bool) -> IdentityUNet:
    """Paper Sec. 3: L1 between true and predicted noise + emb_pull * mean(emb^2), EMA kept."""
    torch.manual_seed(preset.seed)
    model = IdentityUNet(sample_size=preset.image_size, block_out_channels=preset.channels,
                         layers_per_block=preset.layers_per_block, id_dim=preset.id_dim,
                         num_identities=num_ids).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=preset.gen_lr, weight_decay=0.0)
    ema = EMAModel(model.parameters(), decay=preset.ema_decay)
    ema.to(device)
    sched = make_scheduler()
    stage = Stage("generator", out, preset, preset.gen_steps, preset.gen_lr, preset.gen_warmup,
                  {"generator": model}, opt, ema, resume, progress)

    def step_fn(step, g):
        idx = torch.randint(0, len(images), (preset.gen_batch,), generator=g)
        x0 = augment(images[idx], g).to(device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(device)
        x_t = sched.add_noise(x0, eps, t.to(device))
        emb = model.identity_embedding(labels[idx].to(device))
        with autocast(device):
            pred = model(x_t, noise_variance(sched, t).to(device), emb)
        return F.l1_loss(pred.float(), eps) + preset.emb_pull * emb.pow(2).mean()

    model.train()
    t0 = time.perf_counter()
    hist = stage.run(step_fn)
    ema.copy_to(model.parameters())  # the EMA weights are the ones we ship
    model.eval().save_pretrained(out / "generator")
    _write_log(out, "generator", {"steps": preset.gen_steps, "batch": preset.gen_batch,
                                  "images_per_s": stage.throughput * preset.gen_batch,
                                  "wall_s": time.perf_counter() - t0, "device": device,
                                  "loss_first": hist[:20], "loss_last": float(np.mean(hist[-100:]))})
    return model


def train_prior(generator: IdentityUNet, preset: Preset, out: Path, device: str, resume: bool,
                progress: bool) -> IdentityPrior:
    """A diffusion model over the TRAINED rows of the embedding table, standardised."""
    torch.manual_seed(preset.seed)
    table = generator.identity_embedding.weight.detach().float().to(device)
    prior = IdentityPrior(id_dim=preset.id_dim, hidden_dim=preset.prior_hidden,
                          num_layers=preset.prior_layers).to(device)
    prior.mean.copy_(table.mean(0))
    prior.std.copy_(table.std(0).clamp_min(1e-6))
    z0_all = prior.standardise(table)
    opt = torch.optim.AdamW(prior.parameters(), lr=preset.prior_lr, weight_decay=0.0)
    sched = make_scheduler()
    stage = Stage("prior", out, preset, preset.prior_steps, preset.prior_lr, 100,
                  {"prior": prior}, opt, None, resume, progress)

    def step_fn(step, g):
        idx = torch.randint(0, len(z0_all), (preset.prior_batch,), generator=g)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=g)
        eps = torch.randn((len(idx), preset.id_dim), generator=g).to(device)
        z_t = sched.add_noise(z0_all[idx], eps, t.to(device))
        return F.mse_loss(prior(z_t, noise_variance(sched, t).to(device)), eps)

    hist = stage.run(step_fn)
    prior.eval().save_pretrained(out / "prior")
    _write_log(out, "prior", {"steps": preset.prior_steps, "loss_last": float(np.mean(hist[-100:]))})
    return prior


@torch.no_grad()
def synth_bank(generator, prior, table: torch.Tensor, preset: Preset, device: str,
               batch: int = 256, progress: bool = True):
    """Generated training pairs: half prior-sampled NEW identities, half trained ones; random noise.

    Returns images (N, 3, H, W), their identities (N, id_dim) and noises (N, 3, H, W), on CPU.
    """
    g = step_generator(preset.seed, "img2id", 10**9)
    n = preset.synth_images
    n_new = n // 2
    ids_new = sample_prior(prior, n_new, g, preset.prior_sample_steps, device).cpu()
    rows = torch.randint(0, len(table), (n - n_new,), generator=g)
    ids = torch.cat([ids_new, table[rows].cpu()])
    noise = torch.randn((n, 3, *preset.image_size), generator=g)
    imgs = []
    for i in tqdm(range(0, n, batch), desc="synth bank", disable=not progress, leave=False):
        with autocast(device):
            imgs.append(ddim_sample(generator, ids[i:i + batch].to(device), noise[i:i + batch].to(device),
                                    preset.sample_steps).float().cpu())
    return torch.cat(imgs), ids, noise


def _load_or_make_bank(generator, prior, table, preset, out, device, progress):
    path = out / "checkpoints" / "synth_bank.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return tuple(torch.from_numpy(z[k]) for k in ("images", "ids", "noise"))
    bank = synth_bank(generator, prior, table, preset, device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".synth_bank.tmp{os.getpid()}.npz")
    np.savez(tmp, images=bank[0].numpy(), ids=bank[1].numpy(), noise=bank[2].numpy())
    os.replace(tmp, path)
    return bank


def train_img2id(images, labels, generator, prior, preset: Preset, out: Path, device: str,
                 resume: bool, progress: bool) -> IdentityEncoder:
    """Paper Sec. 4: regress emb(id) (MSE) on real and generated images.

    On real images we add a prototype cross-entropy over the identity table
    (logits = -||f - emb_j||^2 / (tau * mean squared row distance)): it keeps Img2ID's output in the generator's
    identity space but pushes it towards the right row, not just near it.
    """
    torch.manual_seed(preset.seed)
    table = generator.identity_embedding.weight.detach().float().to(device)
    bank_x, bank_id, _ = _load_or_make_bank(generator, prior, table, preset, out, device, progress)
    enc = IdentityEncoder(sample_size=preset.image_size, block_out_channels=preset.enc_channels,
                          layers_per_block=preset.enc_layers_per_block, id_dim=preset.id_dim).to(device)
    opt = torch.optim.AdamW(enc.parameters(), lr=preset.img2id_lr, weight_decay=1e-4)
    stage = Stage("img2id", out, preset, preset.img2id_steps, preset.img2id_lr, 200,
                  {"img2id": enc}, opt, None, resume, progress)
    # The temperature is relative to the rows' mean squared distance, so the prototype loss
    # is equally sharp whatever scale the jointly learned table settled at.
    table_sq_dist = torch.pdist(table).pow(2).mean().clamp_min(1e-8)
    n_syn = int(round(preset.img2id_batch * preset.synth_fraction))
    n_real = preset.img2id_batch - n_syn

    def step_fn(step, g):
        idx = torch.randint(0, len(images), (n_real,), generator=g)
        x = augment(images[idx], g, shift=max(1, preset.image_size[1] // 16), erase=0.5).to(device)
        y = labels[idx].to(device)
        parts_x, parts_t = [x], [table[y]]
        if n_syn:
            j = torch.randint(0, len(bank_x), (n_syn,), generator=g)
            parts_x.append(augment(bank_x[j], g).to(device))
            parts_t.append(bank_id[j].to(device))
        with autocast(device):
            f = enc(torch.cat(parts_x)).float()
        target = torch.cat(parts_t)
        loss = F.mse_loss(f, target) / target.pow(2).mean()
        if preset.proto_weight:
            logits = -torch.cdist(f[:n_real], table).pow(2) / (preset.proto_temperature * table_sq_dist)
            loss = loss + preset.proto_weight * F.cross_entropy(logits, y, label_smoothing=0.1)
        return loss

    enc.train()
    t0 = time.perf_counter()
    hist = stage.run(step_fn)
    enc.eval().save_pretrained(out / "img2id")
    _write_log(out, "img2id", {"steps": preset.img2id_steps, "batch": preset.img2id_batch,
                               "wall_s": time.perf_counter() - t0,
                               "loss_last": float(np.mean(hist[-100:]))})
    return enc


@torch.no_grad()
def _inverted_noise(generator, images, labels, table, preset, out, device, progress, batch=256):
    path = out / "checkpoints" / f"inverted_noise_{len(images)}.npy"  # per subset size: never a stale one
    if path.exists():
        return torch.from_numpy(np.load(path, allow_pickle=False))
    zs = []
    for i in tqdm(range(0, len(images), batch), desc="ddim inversion", disable=not progress, leave=False):
        x = images[i:i + batch].to(device)
        with autocast(device):
            zs.append(ddim_invert(generator, x, table[labels[i:i + batch].to(device)],
                                  preset.sample_steps).float().cpu())
    z = torch.cat(zs)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npy")
    np.save(tmp, z.numpy())
    os.replace(tmp, path)
    return z


def train_img2noise(images, labels, generator, prior, preset: Preset, out: Path, device: str,
                    resume: bool, progress: bool) -> IdentityUNet:
    """Img2Noise: image -> noise with GEN(Img2Noise(x), id) ~ x (paper Sec. 4).

    Targets: the exact noise of generated images, and the DDIM-inverted noise of
    real ones; plus, with img2noise_recon_weight > 0, an L1 loss on the image
    rebuilt through the whole sampling chain (what the paper optimises).
    """
    torch.manual_seed(preset.seed)
    table = generator.identity_embedding.weight.detach().float().to(device)
    bank_x, bank_id, bank_z = _load_or_make_bank(generator, prior, table, preset, out, device, progress)
    if preset.img2noise_real_images and preset.img2noise_real_images < len(images):
        # DDIM inversion costs `sample_steps` generator passes per image: on a CPU a seeded
        # subset of the real images gets inverted targets, the bank supplies the rest
        pick = torch.randperm(len(images), generator=step_generator(preset.seed, "img2noise", 10**9))
        pick = pick[:preset.img2noise_real_images].sort().values
        images, labels = images[pick], labels[pick]
    real_z = _inverted_noise(generator, images, labels, table, preset, out, device, progress)
    net = IdentityUNet(sample_size=preset.image_size, block_out_channels=preset.noise_channels,
                       layers_per_block=preset.noise_layers_per_block, id_dim=0,
                       noise_embedding_dim=0).to(device)
    # Start from the identity map x -> x would be wrong (noise is not the image); zero-init head is fine.
    opt = torch.optim.AdamW(net.parameters(), lr=preset.img2noise_lr, weight_decay=0.0)
    stage = Stage("img2noise", out, preset, preset.img2noise_steps, preset.img2noise_lr, 100,
                  {"img2noise": net}, opt, None, resume, progress)
    generator.requires_grad_(False)
    half = preset.img2noise_batch // 2

    def step_fn(step, g):
        i = torch.randint(0, len(images), (preset.img2noise_batch - half,), generator=g)
        j = torch.randint(0, len(bank_x), (half,), generator=g)
        x = torch.cat([images[i], bank_x[j]]).to(device)
        z = torch.cat([real_z[i], bank_z[j]]).to(device)
        ids = torch.cat([table[labels[i].to(device)], bank_id[j].to(device)])
        with autocast(device):
            pred = net(x).float()
        loss = F.mse_loss(pred, z)
        if preset.img2noise_recon_weight and step % preset.img2noise_recon_every == 0:
            with autocast(device):
                rec = ddim_sample(generator, ids, pred, preset.sample_steps, grad=True).float()
            loss = loss + preset.img2noise_recon_weight * F.l1_loss(rec, x)
        return loss

    net.train()
    t0 = time.perf_counter()
    hist = stage.run(step_fn)
    net.eval().save_pretrained(out / "img2noise")
    _write_log(out, "img2noise", {"steps": preset.img2noise_steps, "wall_s": time.perf_counter() - t0,
                                  "loss_last": float(np.mean(hist[-100:]))})
    return net


POSE_FILES = ("poses18.json.gz", "keypoints.json.gz")


def find_pose_file(data) -> Path | None:
    """The dataset's pose annotations: our 18-keypoint file, else the 33-landmark one."""
    for name in POSE_FILES:
        if (Path(data) / name).exists():
            return Path(data) / name
    return None


def pose_keypoints(pose_file: Path, paths: list[str]) -> list:
    """(18, 3) keypoints or None for each image path, from an annotation file keyed 'folder/name'."""
    from .pose import load_pose_annotations
    ann = load_pose_annotations(pose_file)
    return [ann.get(f"{Path(p).parent.name}/{Path(p).name}") for p in paths]


def render_pose_bank(keypoints: list, size: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Skeletons (and their mirror images) as uint8 (N, s*H, s*W, 3); an all-black canvas where no pose."""
    from .pose import flip_keypoints, render_skeleton
    h, w = size[0] * scale, size[1] * scale
    plain = np.zeros((len(keypoints), h, w, 3), np.uint8)
    flipped = np.zeros_like(plain)
    for i, k in enumerate(keypoints):
        if k is not None:
            plain[i] = np.asarray(render_skeleton(k, (h, w)))
            flipped[i] = np.asarray(render_skeleton(flip_keypoints(k), (h, w)))
    return plain, flipped


def pose_keep_mask(has_pose: torch.Tensor, dropout: float, g: torch.Generator) -> torch.Tensor:
    """Which samples of a batch see their pose: those that have one, less a `dropout` share,
    so the pose-conditioned generator also learns to run without a pose."""
    return has_pose & (torch.rand(len(has_pose), generator=g) >= dropout)


def train_pose(images, labels, paths, data, generator, preset: Preset, out: Path, device: str,
               resume: bool, progress: bool):
    """Pose2ID-style pose guidance: fine-tune the generator with a zero-initialised pose encoder.

    Each sample's skeleton (from the dataset's annotations) is encoded and added to
    the U-Net's stem features; with probability `pose_dropout`, and where no pose was
    found, the pose is dropped, so the model also runs without one. The identity
    table stays frozen: Img2ID and the prior live in its space.
    """
    from .models import PoseEncoder
    pose_file = find_pose_file(data)
    if pose_file is None:
        raise FileNotFoundError(f"no pose annotations in {data} (expected one of {POSE_FILES}; "
                                f"make one with scripts/extract_poses.py)")
    kps = pose_keypoints(pose_file, paths)
    has_pose = torch.tensor([k is not None for k in kps])
    plain, flipped = render_pose_bank(kps, preset.image_size, preset.pose_render_scale)
    plain_t, flipped_t = to_tensor(plain), to_tensor(flipped)

    torch.manual_seed(preset.seed)
    gen = IdentityUNet.from_config(generator.config).to(device)
    gen.load_state_dict(generator.state_dict())
    gen.identity_embedding.requires_grad_(False)
    enc = PoseEncoder(render_scale=preset.pose_render_scale, out_channels=preset.channels[0]).to(device)
    params = [p for p in gen.parameters() if p.requires_grad] + list(enc.parameters())
    opt = torch.optim.AdamW(params, lr=preset.pose_lr, weight_decay=0.0)
    ema = EMAModel(params, decay=preset.ema_decay)
    ema.to(device)
    sched = make_scheduler()
    stage = Stage("pose", out, preset, preset.pose_steps, preset.pose_lr, min(200, preset.pose_steps // 5),
                  {"pose_generator": gen, "pose_encoder": enc}, opt, ema, resume, progress, ema_params=params)

    def step_fn(step, g):
        idx = torch.randint(0, len(images), (preset.pose_batch,), generator=g)
        flip = torch.rand(len(idx), generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], images[idx].flip(3), images[idx]).to(device)
        skel = torch.where(flip[:, None, None, None], flipped_t[idx], plain_t[idx]).to(device)
        keep = pose_keep_mask(has_pose[idx], preset.pose_dropout, g).to(device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(device)
        x_t = sched.add_noise(x0, eps, t.to(device))
        with autocast(device):
            feats = enc(skel) * keep[:, None, None, None]
            pred = gen(x_t, noise_variance(sched, t).to(device), gen.identity_embedding(labels[idx].to(device)),
                       extra_features=feats)
        return F.l1_loss(pred.float(), eps)

    gen.train()
    enc.train()
    t0 = time.perf_counter()
    hist = stage.run(step_fn)
    ema.copy_to(params)
    gen.eval().save_pretrained(out / "pose_generator")
    enc.eval().save_pretrained(out / "pose_encoder")
    _write_log(out, "pose", {"steps": preset.pose_steps, "wall_s": time.perf_counter() - t0,
                             "pose_file": pose_file.name, "with_pose": int(has_pose.sum()),
                             "loss_first": hist[:20], "loss_last": float(np.mean(hist[-100:]))})
    return gen, enc


def build_pose_library(images_u8: np.ndarray, labels: np.ndarray, paths: list[str], kps: list,
                       img2id, preset: Preset, out: Path, device: str) -> dict:
    """Pose2ID's representative poses: per identity, the annotated image closest to the
    identity's mean Img2ID feature; then `pose_library_size` distinct poses among them
    (k-means on neck-centred, torso-scaled keypoints; each cluster's medoid), ordered by
    body direction (signed shoulder width: facing the camera ... facing away)."""
    from sklearn.cluster import KMeans
    from .pose import normalised_pose
    with torch.inference_mode():
        feats = torch.cat([img2id(to_tensor(images_u8[i:i + 256]).to(device)).float().cpu()
                           for i in range(0, len(images_u8), 256)]).numpy()
    reps, rep_idx = [], []
    for lab in np.unique(labels):
        members = [i for i in np.flatnonzero(labels == lab) if kps[i] is not None]
        vecs = [normalised_pose(kps[i]) for i in members]
        members = [m for m, v in zip(members, vecs) if v is not None]
        if not members:
            continue
        centre = feats[labels == lab].mean(0)
        best = min(members, key=lambda i: float(np.sum((feats[i] - centre) ** 2)))
        reps.append(normalised_pose(kps[best]))
        rep_idx.append(best)
    reps = np.stack(reps)
    # identical poses (common on synthetic data) would leave k-means clusters empty
    _, first = np.unique(reps.round(3), axis=0, return_index=True)
    first = np.sort(first)
    reps, rep_idx = reps[first], [rep_idx[i] for i in first]
    k = min(preset.pose_library_size, len(reps))
    km = KMeans(n_clusters=k, n_init=10, random_state=preset.seed).fit(reps)
    chosen = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        chosen.append(rep_idx[members[np.argmin(((reps[members] - km.cluster_centers_[c]) ** 2).sum(1))]])

    def direction(i):  # OpenPose: r_shoulder=2, l_shoulder=5; facing the camera puts the right one on the left
        return float(kps[i][5, 0] - kps[i][2, 0])

    chosen.sort(key=direction, reverse=True)
    lib = {"format": "openpose18", "coords": "fraction_xy",
           "poses": [np.round(kps[i], 4).tolist() for i in chosen],
           "sources": [f"{Path(paths[i]).parent.name}/{Path(paths[i]).name}" for i in chosen],
           "rule": "Pose2ID: per-identity image nearest the mean Img2ID feature; k-means medoids; "
                   "ordered by signed shoulder width"}
    (out / "pose_library.json").write_text(json.dumps(lib))
    return lib


def train_baseline_stage(images_u8: np.ndarray, labels: np.ndarray, preset: Preset, out: Path,
                         device: str, resume: bool, progress: bool):
    from .baseline import BaselineTrainConfig, train_baseline
    t0 = time.perf_counter()
    num_ids = int(labels.max()) + 1
    cfg = BaselineTrainConfig(steps=preset.baseline_steps, seed=preset.seed, P=min(16, num_ids),
                              warmup_steps=min(500, preset.baseline_steps // 10),
                              checkpoint_every=preset.checkpoint_every)
    model_cfg = {"sample_size": tuple(preset.image_size), "num_classes": num_ids,
                 "widths": tuple(preset.baseline_widths),
                 "blocks_per_stage": (1,) * len(preset.baseline_widths)}
    model = train_baseline(images_u8, labels, model_cfg, cfg, out / "baseline", resume=resume,
                           device=device, progress=progress)
    _write_log(out, "baseline", {"steps": preset.baseline_steps, "wall_s": time.perf_counter() - t0})
    return model


# ---------------------------------------------------------------- driver

_SCHEDULE_FIELDS = ("_steps", "checkpoint_every")
DERIVED_FROM_GENERATOR = ("synth_bank.npz", "inverted_noise_*.npy")


def check_resumable(saved: Preset, asked: Preset, where) -> None:
    """A resumed run may change how long stages train (step counts), nothing else:
    other fields shape the networks or the data the checkpoints were made with."""
    import dataclasses
    diff = [f.name for f in dataclasses.fields(Preset)
            if getattr(saved, f.name) != getattr(asked, f.name)]
    fixed = [d for d in diff if not d.endswith(_SCHEDULE_FIELDS)]
    if fixed:
        raise ValueError(f"{where} was trained with other {', '.join(fixed)}; "
                         f"use a new --out, or the same values to resume")
    for d in diff:
        print(f"resume: {d} {getattr(saved, d)} -> {getattr(asked, d)} (the lr schedule follows the new length)")


def train(data: str | os.PathLike, preset: Preset, out: str | os.PathLike,
          stages=STAGES, resume: bool = False, device: str | None = None, progress: bool = True) -> Path:
    """Run the chosen stages in order; later stages load what earlier ones saved."""
    out = Path(out)
    device = device or default_device()
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    out.mkdir(parents=True, exist_ok=True)
    preset_path = out / "preset.json"
    if resume and preset_path.exists():
        check_resumable(Preset.load(preset_path), preset, preset_path)
    preset.save(preset_path)
    split = load_split(data, "train", preset.image_size, progress=progress)
    labels_np, uniq = relabel(split.pids)
    (out / "identities.json").write_text(json.dumps({"pids": uniq.tolist()}))
    images, labels = to_tensor(split.images), torch.from_numpy(labels_np)

    gen = prior = None
    if "generator" in stages and not (resume and _done(out, "generator")):
        for pattern in DERIVED_FROM_GENERATOR:  # made by an older generator: stale now
            for f in (out / "checkpoints").glob(pattern):
                f.unlink()
        gen = train_generator(images, labels, len(uniq), preset, out, device, resume, progress)

    def need_gen():
        return gen if gen is not None else IdentityUNet.from_pretrained(out / "generator", low_cpu_mem_usage=False).to(device).eval()

    if "prior" in stages and not (resume and _done(out, "prior")):
        gen = need_gen()
        prior = train_prior(gen, preset, out, device, resume, progress)

    def need_prior():
        return prior if prior is not None else IdentityPrior.from_pretrained(out / "prior", low_cpu_mem_usage=False).to(device).eval()

    if "img2id" in stages and not (resume and _done(out, "img2id")):
        gen, prior = need_gen(), need_prior()
        train_img2id(images, labels, gen, prior, preset, out, device, resume, progress)
    if "img2noise" in stages and not (resume and _done(out, "img2noise")):
        gen, prior = need_gen(), need_prior()
        train_img2noise(images, labels, gen, prior, preset, out, device, resume, progress)
    if "pose" in stages:
        if find_pose_file(data) is None:
            print(f"pose stage skipped: no pose annotations in {data} ({' or '.join(POSE_FILES)})")
        else:
            if not (resume and _done(out, "pose_generator")):
                train_pose(images, labels, split.paths, data, need_gen(), preset, out, device, resume, progress)
            if not (out / "img2id" / "config.json").exists():
                print("pose library skipped: it ranks images by Img2ID, which is not trained yet "
                      "(run --stages pose --resume once img2id is)")
            elif not (resume and (out / "pose_library.json").exists()):
                img2id = IdentityEncoder.from_pretrained(out / "img2id", low_cpu_mem_usage=False).to(device).eval()
                kps = pose_keypoints(find_pose_file(data), split.paths)
                build_pose_library(split.images, labels_np, split.paths, kps, img2id, preset, out, device)
    if "baseline" in stages and not (resume and _done(out, "baseline")):
        train_baseline_stage(split.images, labels_np, preset, out, device, resume, progress)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m reid_core.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="Market-1501-layout folder")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", required=True)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override preset fields, e.g. --set gen_steps=100 seed=1")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        overrides[k] = json.loads(v)
    preset = get_preset(a.preset, **overrides)
    print(preset.to_json())
    train(a.data, preset, a.out, a.stages, a.resume, a.device)
    print(f"done: {a.out}")


if __name__ == "__main__":
    main()

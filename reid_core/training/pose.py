"""The pose-conditioned generator (Pose2ID's pose guider) and the pose library.

The guider is fine-tuned from the identity generator on the dataset's pose annotations;
the library holds `pose_library_size` representative poses chosen by Pose2ID's rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from ..config import Preset
from ..data import to_tensor
from ..io import atomic_write_json
from ..models import IdentityUNet, PoseEncoder
from ..models.unet import map_features
from ..schedule import make_scheduler
from ..weights import POSE_LIBRARY_FILE, has_component, load_component
from .common import (TrainData, channels_last, diffusion_loss, finish, flip_where, loss_record, start_weights,
                     write_log)
from .loop import TrainLoop, warmup_cosine


POSE_FILES = ("poses18.json.gz", "keypoints.json.gz")


def find_pose_file(data) -> Path | None:
    """The dataset's pose annotations: our 18-keypoint file, else the 33-landmark one."""
    for name in POSE_FILES:
        if (Path(data) / name).exists():
            return Path(data) / name
    return None


def pose_keypoints(pose_file: Path, paths: list[str]) -> list:
    """(18, 3) keypoints or None for each image path, from an annotation file keyed 'folder/name'."""
    from ..pose import load_pose_annotations
    ann = load_pose_annotations(pose_file)
    return [ann.get(f"{Path(p).parent.name}/{Path(p).name}") for p in paths]


def render_pose_bank(keypoints: list, size: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Skeletons (and their mirror images) as uint8 (N, s*H, s*W, 3); an all-black canvas where no pose."""
    from ..pose import flip_keypoints, render_skeleton
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


def _same_generator(init: Path | None, generator) -> bool:
    """Whether `init` holds a pose guider tuned from exactly this generator."""
    if init is None or not has_component(init, "pose_generator") or not has_component(init, "generator"):
        return False
    theirs = load_component(init, "generator").state_dict()
    ours = generator.state_dict()
    # compared at fp16: shipped weights are an fp16 export of the run's fp32 ones
    return set(theirs) == set(ours) and all(
        torch.equal(theirs[k].cpu().half(), ours[k].cpu().half()) if ours[k].is_floating_point()
        else torch.equal(theirs[k].cpu(), ours[k].cpu()) for k in ours)


def train_pose(data: TrainData, data_root, generator, preset: Preset, out: Path, *, init: Path | None = None,
               device: str = "cpu", resume: bool = False, progress: bool = True):
    """Pose2ID-style pose guidance: fine-tune the generator with a zero-initialised pose encoder.

    Each sample's skeleton (from the dataset's annotations) is encoded and added to
    the U-Net's stem features; with probability `pose_dropout`, and where no pose was
    found, the pose is dropped, so the model also runs without one. The identity
    table stays frozen: Img2ID and the prior live in its space.
    """
    pose_file = find_pose_file(data_root)
    if pose_file is None:
        raise FileNotFoundError(f"no pose annotations in {data_root} (expected one of {POSE_FILES}; "
                                f"make one with scripts/extract_poses.py)")
    kps = pose_keypoints(pose_file, data.paths)
    has_pose = torch.tensor([k is not None for k in kps])
    plain, flipped = render_pose_bank(kps, preset.image_size, preset.pose_render_scale)
    plain_t, flipped_t = to_tensor(plain), to_tensor(flipped)

    torch.manual_seed(preset.seed)
    tune = preset.pose_tune_generator
    # the pose guider samples with two-pass guidance: it drops a distilled generator's guidance embedding
    gen = IdentityUNet.from_config(generator.config, guidance_embedding=False).to(device)
    gen.load_state_dict({k: v for k, v in generator.state_dict().items() if not k.startswith("guidance_mlp.")})
    guider_from_init = init is not None and has_component(init, "pose_encoder")
    if not tune:
        # the generator itself, frozen: only the guider learns, and pose generation needs no
        # second copy of the generator. An init's guider is a start only if it too was
        # trained on a frozen generator (no tuned copy beside it).
        gen.requires_grad_(False)
        guider_from_init = guider_from_init and not has_component(init, "pose_generator")
    elif _same_generator(init, generator):
        # the generator is the one the init's pose guider was tuned from: go on from that tuning
        gen = start_weights(gen, init, "pose_generator")
    else:
        print("pose: the generator changed since --init's pose guider; fine-tuning from the new generator")
    gen = channels_last(gen)
    gen.identity_embedding.requires_grad_(False)
    if not 1 <= preset.pose_levels <= len(preset.channels):
        raise ValueError(f"pose_levels must lie in 1..{len(preset.channels)}")
    # the features entering level r have the width of level r - 1
    enc = PoseEncoder(render_scale=preset.pose_render_scale, out_channels=preset.channels[0],
                      level_channels=tuple(preset.channels[:preset.pose_levels - 1]))
    enc = (start_weights(enc, init, "pose_encoder") if guider_from_init else enc).to(device)
    params = [p for p in gen.parameters() if p.requires_grad] + list(enc.parameters())
    opt = torch.optim.Adam(params, lr=preset.pose_lr)
    ema = EMAModel(params, decay=preset.ema_decay)
    sched = make_scheduler()
    steps = preset.pose_steps
    modules = {"pose_generator": gen, "pose_encoder": enc} if tune else {"pose_encoder": enc}
    loop = TrainLoop("pose", out, seed=preset.seed, steps=steps, modules=modules, optimizer=opt,
                     schedules=[warmup_cosine(steps, min(preset.pose_warmup, steps // 5 + 1))], ema=ema, ema_params=params,
                     checkpoint_every=preset.checkpoint_every, resume=resume, progress=progress)
    # a frozen generator already runs without a pose: dropping it would only waste the sample
    dropout = preset.pose_dropout if tune else 0.0
    labels = data.labels_t

    def step_fn(step, rng, g):
        idx = torch.from_numpy(rng.integers(0, len(labels), preset.pose_batch))
        flip = torch.rand(len(idx), generator=g) < 0.5
        x0 = flip_where(data.images[idx], flip).to(device)
        skel = torch.where(flip[:, None, None, None], flipped_t[idx], plain_t[idx]).to(device)
        keep = pose_keep_mask(has_pose[idx], dropout, g).to(device)
        drop = (torch.rand(len(idx), generator=g) < preset.identity_dropout).to(device) \
            if preset.uses_guidance else None
        feats = map_features(lambda v: v * keep[:, None, None, None], enc(skel))
        loss = diffusion_loss(gen, sched, x0, gen.identity_rows(labels[idx].to(device)), g, preset.gen_loss,
                              drop, extra_features=feats, snr_gamma=preset.snr_gamma)
        return {"loss": loss}

    history = loop.run(step_fn)
    ema.copy_to(params)
    if tune:
        finish(gen, out, "pose_generator")
    finish(enc, out, "pose_encoder")
    write_log(out, "pose", loss_record(history, loop.minutes, pose_file=pose_file.name,
                                       with_pose=int(has_pose.sum())))
    return gen, enc


def build_pose_library(images_u8: np.ndarray, labels: np.ndarray, paths: list[str], kps: list,
                       img2id, preset: Preset, out: Path, device: str) -> dict:
    """Pose2ID's representative poses: per identity, the annotated image closest to the
    identity's mean Img2ID feature; then `pose_library_size` distinct poses among them
    (k-means on neck-centred, torso-scaled keypoints; each cluster's medoid), ordered by
    body direction (signed shoulder width: facing the camera ... facing away). Only whole
    bodies are candidates (`reid_core.pose.is_whole_body`): a crop where the extractor found
    part of a person never enters the library."""
    from sklearn.cluster import KMeans
    from ..pose import is_whole_body, normalised_pose
    with torch.inference_mode():
        feats = torch.cat([img2id.embed(to_tensor(images_u8[i:i + 256]).to(device)).float().cpu()
                           for i in range(0, len(images_u8), 256)]).numpy()
    reps, rep_idx = [], []
    for lab in np.unique(labels):
        members = [i for i in np.flatnonzero(labels == lab) if kps[i] is not None and is_whole_body(kps[i])]
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
    atomic_write_json(Path(out) / POSE_LIBRARY_FILE, lib)
    return lib

"""A conventional discriminative re-ID baseline: BoT (Luo et al. 2019, "Bag of Tricks and a
Strong Baseline for Deep Person Re-identification") shrunk to low resolution.

It serves twice: as the comparison row for the generative model, and as a judge of
generated images (a classifier over the *training* identities).

Network: a small ResNet of BasicBlocks (BatchNorm), stride 2 between stages but stride 1
in the last stage ("last stride 1"), global average pooling -> ``f_t`` (triplet feature)
-> BNNeck (BatchNorm1d with a frozen zero bias) -> ``f_i`` (retrieval feature) -> a
bias-free linear classifier. Training: label-smoothed cross-entropy on the logits plus a
batch-hard triplet loss on ``f_t``, PK batches, Adam with linear warm-up and step decay,
random flip / pad-crop / random erasing.

Images enter the public functions as uint8 ``(N, H, W, 3)`` arrays; inside, tensors are
``(B, 3, H, W)`` float in [-1, 1] (``x / 127.5 - 1``).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from tqdm.auto import tqdm

from .io import atomic_torch_save

CHECKPOINT_NAME = "checkpoint.pt"


# --------------------------------------------------------------------------- network


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus a (1x1 conv + BN) shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x), inplace=True)


class BaselineNet(ModelMixin, ConfigMixin):
    """BoT-style re-ID ResNet for small images.

    Input ``x``: ``(B, 3, H, W)`` float in [-1, 1], ``(H, W) == sample_size``.

    * train mode: ``forward(x) -> (logits (B, num_classes), f_t (B, feat_dim))``;
    * eval mode: ``forward(x) -> f_i (B, feat_dim)``, the BNNeck feature used for retrieval
      (compare with cosine distance, as BoT does).

    ``embed(x) -> f_i`` and ``classify(x) -> logits`` in either mode (BatchNorm uses batch
    statistics in train mode, so call ``.eval()`` first for inference).

    Args:
        sample_size: (height, width) of the images.
        num_classes: number of training identities (classifier rows).
        widths: channels per stage.
        blocks_per_stage: BasicBlocks per stage (same length as ``widths``).
        stem_stride: stride of the 3x3 stem conv (1 or 2); 2 quarters the compute.
        stem_pool: add ResNet's 3x3/2 max-pool after the stem (for 128x64 input, so the
            stages see the same 32x16 grid as 64x32 input without it).
        last_stride: stride of the last stage (BoT: 1, keeping spatial detail).
        feat_dim: feature size; must equal ``widths[-1]`` (None: take it from there).
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 num_classes: int = 751, widths: tuple[int, ...] = (32, 64, 128, 256),
                 blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1), stem_stride: int = 2,
                 stem_pool: bool = False, last_stride: int = 1, feat_dim: int | None = None):
        super().__init__()
        widths, blocks_per_stage = tuple(widths), tuple(blocks_per_stage)
        if len(widths) != len(blocks_per_stage) or not widths:
            raise ValueError(f"widths {widths} and blocks_per_stage {blocks_per_stage} "
                             "must be non-empty and of equal length")
        if feat_dim is None:
            # Recorded in the config so readers of config.json see the real size.
            feat_dim = widths[-1]
            self.register_to_config(feat_dim=feat_dim)
        if feat_dim != widths[-1]:
            raise ValueError(f"feat_dim {feat_dim} must equal the last width {widths[-1]}")
        strides = [1] + [2] * (len(widths) - 1)
        if len(widths) > 1:
            strides[-1] = last_stride
        h, w = sample_size
        down = stem_stride * (2 if stem_pool else 1) * math.prod(strides)
        if h % down or w % down:
            raise ValueError(f"sample_size {tuple(sample_size)} must divide by the total stride {down}")

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            *([nn.MaxPool2d(3, stride=2, padding=1)] if stem_pool else []))
        stages, in_ch = [], widths[0]
        for width, n_blocks, stride in zip(widths, blocks_per_stage, strides):
            blocks = [BasicBlock(in_ch, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.bottleneck = nn.BatchNorm1d(feat_dim)
        # BNNeck: a learned bias would shift f_i away from the origin and hurt the cosine
        # metric used at retrieval, so it is held at zero.
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        self.final_spatial = (h // down, w // down)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # BoT's classifier init: tiny weights keep the initial logits near uniform.
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor):
        """x (B, 3, H, W) in [-1, 1] -> train: (logits (B, C), f_t (B, D)); eval: f_i (B, D)."""
        f_t = self._pooled(x)
        f_i = self.bottleneck(f_t)
        if not self.training:
            return f_i
        return self.classifier(f_i), f_t

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> f_i (B, feat_dim), the retrieval feature."""
        return self.bottleneck(self._pooled(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> logits (B, num_classes) over the training identities."""
        return self.classifier(self.embed(x))


# ----------------------------------------------------------------------------- losses


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against ``(1 - eps) * one_hot + eps / C`` (Szegedy et al.), batch mean.

    ``forward(logits (B, C), targets (B,) int64 in [0, C)) -> scalar``.
    """

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        n_classes = logits.shape[1]
        smooth = torch.full_like(log_probs, self.epsilon / n_classes)
        smooth.scatter_add_(1, targets[:, None].long(),
                            torch.full_like(log_probs[:, :1], 1.0 - self.epsilon))
        return -(smooth * log_probs).sum(dim=1).mean()


def pairwise_euclidean(features: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances (clamped so sqrt has a finite gradient at 0)."""
    f = features.float()
    sq = f.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * f @ f.t()
    return d2.clamp_min(1e-12).sqrt()


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor,
                            margin: float | None = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) as in BoT.

    For each anchor: d_ap = distance to its farthest same-label sample, d_an = distance to
    its nearest other-label sample; loss = mean over anchors of max(0, d_ap - d_an + margin)
    (``margin=None``: soft margin, softplus(d_ap - d_an)). Anchors without any negative
    are left out; a batch without any valid anchor gives 0 (still attached to the graph).

    features (B, D) float, labels (B,) int -> scalar.
    """
    dist = pairwise_euclidean(features)
    same = labels[:, None] == labels[None, :]
    # The anchor itself (distance ~1e-6) counts as a positive; harmless since any real
    # positive is farther, and it keeps d_ap defined for singleton identities.
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = torch.isfinite(d_an)
    if not bool(valid.any()):
        return features.sum() * 0.0
    diff = d_ap[valid] - d_an[valid]
    if margin is None:
        return F.softplus(diff).mean()
    return F.relu(diff + margin).mean()


# ---------------------------------------------------------------------------- sampler


class PKSampler:
    """Batches of P distinct identities x K images each, identity-contiguous.

    ``sample() -> (P * K,) int64`` indices into ``labels``: rows ``[p*K, (p+1)*K)`` share one
    identity. Identities with fewer than K images are drawn with replacement. Iterating
    yields batches forever. All randomness comes from the numpy Generator ``rng`` (or one
    passed to ``sample``).
    """

    def __init__(self, labels: np.ndarray, P: int = 16, K: int = 4,
                 rng: np.random.Generator | int | None = None):
        labels = np.asarray(labels).reshape(-1)
        self.identities = np.unique(labels)
        if P > len(self.identities):
            raise ValueError(f"P={P} exceeds the {len(self.identities)} identities present")
        if K < 1 or P < 1:
            raise ValueError("P and K must be positive")
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.identities, side="left").tolist() + [len(labels)]
        self.index_by_identity = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        self.P, self.K = int(P), int(K)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def sample(self, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = self.rng if rng is None else rng
        picks = rng.choice(len(self.identities), size=self.P, replace=False)
        out = []
        for p in picks:
            pool = self.index_by_identity[p]
            out.append(rng.choice(pool, size=self.K, replace=len(pool) < self.K))
        return np.concatenate(out).astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.sample()


# --------------------------------------------------------------------------- training


@dataclass
class BaselineTrainConfig:
    """Training hyper-parameters (BoT defaults where they carry over).

    lr follows: linear warm-up from ``lr * warmup_factor`` to ``lr`` over ``warmup_steps``,
    then x``gamma`` at each fraction of ``steps`` in ``milestones``.
    """
    steps: int = 12000
    P: int = 16
    K: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_steps: int = 500
    warmup_factor: float = 0.1
    milestones: tuple[float, ...] = (0.5, 0.8)
    gamma: float = 0.1
    margin: float | None = 0.3
    label_smooth: float = 0.1
    triplet_weight: float = 1.0
    flip: bool = True
    random_erasing: float = 0.5
    pad_crop: bool = True
    seed: int = 0
    checkpoint_every: int = 500

    def lr_at(self, step: int) -> float:
        """Learning rate for optimisation step ``step`` (0-based)."""
        lr = self.lr
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            lr *= self.warmup_factor * (1 - alpha) + alpha
        for m in self.milestones:
            if step >= int(m * self.steps):
                lr *= self.gamma
        return lr


def _to_model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def augment_batch(x: torch.Tensor, cfg: BaselineTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """BoT augmentations on ``x`` (B, 3, H, W) in [-1, 1]; random draws from the CPU ``gen``.

    Horizontal flip (p=0.5), zero-pad by 10% of each side + random crop back, random erasing
    (p=``cfg.random_erasing``, area 2-40%, aspect 0.3-3.3). Padding and erased areas are
    filled with 0, the middle of [-1, 1] (BoT fills erasures with the normalised data mean).
    """
    B, _, H, W = x.shape
    dev = x.device
    if cfg.flip:
        flip = (torch.rand(B, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.pad_crop:
        ph, pw = max(1, round(0.1 * H)), max(1, round(0.1 * W))
        padded = F.pad(x, (pw, pw, ph, ph), value=0.0)
        oy = torch.randint(0, 2 * ph + 1, (B,), generator=gen).to(dev)
        ox = torch.randint(0, 2 * pw + 1, (B,), generator=gen).to(dev)
        rows = (oy[:, None] + torch.arange(H, device=dev))[:, :, None]   # (B, H, 1)
        cols = (ox[:, None] + torch.arange(W, device=dev))[:, None, :]   # (B, 1, W)
        bidx = torch.arange(B, device=dev)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2).contiguous()
    if cfg.random_erasing > 0:
        # Several candidate rectangles per image, keep the first that fits (BoT retries up
        # to 100 times; 10 almost always suffices and keeps this vectorised).
        tries = 10
        area = H * W * (0.02 + 0.38 * torch.rand(B, tries, generator=gen))
        log_r = math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand(B, tries, generator=gen)
        eh = torch.sqrt(area * torch.exp(log_r)).round().long()
        ew = torch.sqrt(area / torch.exp(log_r)).round().long()
        fits = (eh < H) & (ew < W) & (eh > 0) & (ew > 0)
        first = fits.float().argmax(dim=1)
        pick = torch.arange(B)
        eh, ew = eh[pick, first], ew[pick, first]
        apply = fits.any(dim=1) & (torch.rand(B, generator=gen) < cfg.random_erasing)
        y0 = (torch.rand(B, generator=gen) * (H - eh + 1).clamp_min(1)).long()
        x0 = (torch.rand(B, generator=gen) * (W - ew + 1).clamp_min(1)).long()
        ys = torch.arange(H)[None, :]
        xs = torch.arange(W)[None, :]
        in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])          # (B, H)
        in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])          # (B, W)
        mask = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None]).to(dev)
        x = x.masked_fill(mask[:, None], 0.0)
    return x


def _step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    # Each step's randomness is a pure function of (seed, step), so resuming needs no RNG
    # state in the checkpoint and a resumed run repeats the uninterrupted one exactly.
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    return rng, gen


def _check_data(images_u8: np.ndarray, labels: np.ndarray | None = None) -> None:
    if images_u8.ndim != 4 or images_u8.shape[-1] != 3 or images_u8.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_u8.dtype} {images_u8.shape}")
    if labels is not None and labels.shape != (len(images_u8),):
        raise ValueError(f"labels shape {labels.shape} does not match {len(images_u8)} images")


def _plain(value):
    """Config values as plain python (tuples -> lists) so checkpoints load with weights_only."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _config_record(model: BaselineNet) -> dict:
    # diffusers' private keys (e.g. the set `_use_default_values`) vary in order between
    # processes, so they would make a resumed run's config look different.
    return _plain({k: v for k, v in model.config.items() if not k.startswith("_")})


def train_baseline(images_u8: np.ndarray, labels: np.ndarray, model_cfg: dict,
                   train_cfg: BaselineTrainConfig, out_dir: str | os.PathLike,
                   resume: bool = False, device: str | torch.device = "cpu",
                   progress: bool = True,
                   on_step: Callable[[int, dict], None] | None = None) -> BaselineNet:
    """Train a :class:`BaselineNet` with CE(label smoothing) + batch-hard triplet loss.

    Args:
        images_u8: (N, H, W, 3) uint8 training images.
        labels: (N,) int identities in [0, num_classes).
        model_cfg: ``BaselineNet`` keyword arguments; ``sample_size`` defaults to (H, W) and
            ``num_classes`` to ``labels.max() + 1``.
        train_cfg: hyper-parameters; all randomness derives from ``train_cfg.seed``.
        out_dir: receives ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end,
            written atomically) and finally ``save_pretrained`` files.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        device: "cpu" or "cuda[:i]"; CUDA trains under bf16 autocast.
        progress: show a tqdm bar with loss / batch accuracy.
        on_step: optional ``on_step(step, logs)`` called after each step (``step`` = steps
            done, logs: loss, ce, triplet, acc, lr) and after any checkpoint of that step.

    Returns the trained model, in eval mode.
    """
    images_u8 = np.asarray(images_u8)
    labels = np.asarray(labels).astype(np.int64)
    _check_data(images_u8, labels)
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME
    # A run killed while writing leaves its temp file behind; the checkpoint itself is intact.
    for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):
        stale.unlink(missing_ok=True)

    model_cfg = dict(model_cfg)
    model_cfg.setdefault("sample_size", tuple(images_u8.shape[1:3]))
    model_cfg.setdefault("num_classes", int(labels.max()) + 1)
    if tuple(model_cfg["sample_size"]) != tuple(images_u8.shape[1:3]):
        raise ValueError(f"images are {images_u8.shape[1:3]}, model expects {model_cfg['sample_size']}")
    if labels.min() < 0 or labels.max() >= model_cfg["num_classes"]:
        raise ValueError("labels must lie in [0, num_classes)")

    # Weight init from its own seeded stream, leaving the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_cfg.seed)
        model = BaselineNet(**model_cfg)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    ce_loss = CrossEntropyLabelSmooth(train_cfg.label_smooth)

    start = 0
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = {k: v for k, v in ckpt["model_config"].items() if not k.startswith("_")}
        if saved != _config_record(model):
            raise ValueError(f"checkpoint model config {saved} differs from {_config_record(model)}")
        if ckpt["num_images"] != len(images_u8):
            raise ValueError(f"checkpoint was trained on {ckpt['num_images']} images, got {len(images_u8)}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])

    def save_checkpoint(step: int) -> None:
        atomic_torch_save({
            "step": step,
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "model_config": _config_record(model),
            "train_config": _plain(asdict(train_cfg)),
            "num_images": len(images_u8),
        }, ckpt_path)

    data = torch.from_numpy(images_u8)
    if device.type == "cuda":
        data = data.to(device)  # uint8, small enough to live on the GPU (Market: ~0.3 GB at 128x64)
    targets_all = torch.from_numpy(labels).to(device)
    sampler = PKSampler(labels, train_cfg.P, train_cfg.K)
    use_amp = device.type == "cuda"

    bar = tqdm(total=train_cfg.steps, initial=start, disable=not progress, desc="baseline",
               dynamic_ncols=True)
    ema_loss = ema_acc = None
    for step in range(start, train_cfg.steps):
        rng, gen = _step_generators(train_cfg.seed, step)
        idx = torch.from_numpy(sampler.sample(rng))
        x = _to_model_input(data[idx.to(data.device)].to(device, non_blocking=True))
        x = augment_batch(x, train_cfg, gen)
        y = targets_all[idx.to(device)]
        lr = train_cfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr

        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits, f_t = model(x)
        ce = ce_loss(logits.float(), y)
        tri = batch_hard_triplet_loss(f_t.float(), y, train_cfg.margin)
        loss = ce + train_cfg.triplet_weight * tri
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        done = step + 1
        logs = {"loss": loss.item(), "ce": ce.item(), "triplet": tri.item(),
                "acc": (logits.argmax(1) == y).float().mean().item(), "lr": lr}
        ema_loss = logs["loss"] if ema_loss is None else 0.95 * ema_loss + 0.05 * logs["loss"]
        ema_acc = logs["acc"] if ema_acc is None else 0.95 * ema_acc + 0.05 * logs["acc"]
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", lr=f"{lr:.2e}", refresh=False)
        if done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps:
            save_checkpoint(done)
        if on_step is not None:
            on_step(done, logs)
    bar.close()
    if start >= train_cfg.steps and not ckpt_path.exists():
        save_checkpoint(start)

    model.eval()
    model.save_pretrained(out_dir)
    return model


# -------------------------------------------------------------------------- inference


def _batched_outputs(model: BaselineNet, images_u8: np.ndarray, fn: Callable, batch_size: int,
                     device: str | torch.device) -> torch.Tensor:
    images_u8 = np.asarray(images_u8)
    _check_data(images_u8)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for a in range(0, len(images_u8), batch_size):
                x = _to_model_input(torch.from_numpy(images_u8[a:a + batch_size]).to(device))
                outs.append(fn(x).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def embed_images(model: BaselineNet, images_u8: np.ndarray, batch_size: int = 256,
                 device: str | torch.device = "cpu", flip_average: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, feat_dim) float32 BNNeck features (eval mode, fp32).

    ``flip_average`` averages the features of the image and its mirror (common re-ID
    test-time augmentation; off by default to match BoT's reported protocol).
    """
    def fn(x):
        f = model.embed(x)
        return 0.5 * (f + model.embed(x.flip(-1))) if flip_average else f
    out = _batched_outputs(model, images_u8, fn, batch_size, device)
    if out.numel() == 0:
        return np.zeros((0, model.config.feat_dim), np.float32)
    return out.numpy().astype(np.float32, copy=False)


def classify_images(model: BaselineNet, images_u8: np.ndarray, batch_size: int = 256,
                    device: str | torch.device = "cpu", return_probs: bool = False):
    """(N, H, W, 3) uint8 -> (N,) int64 predicted training identities.

    With ``return_probs=True`` returns ``(pred (N,), probs (N, num_classes) float32)``,
    the softmax over training identities (for identity-consistency scores).
    """
    logits = _batched_outputs(model, images_u8, model.classify, batch_size, device)
    if logits.numel() == 0:
        logits = torch.zeros(0, model.config.num_classes)
    pred = logits.argmax(dim=1).numpy().astype(np.int64)
    if return_probs:
        return pred, torch.softmax(logits, dim=1).numpy().astype(np.float32)
    return pred

"""What every stage draws per step: identity-balanced (P x K) batches, augmentations, and
the random generators themselves, all pure functions of (seed, stage, step).

Because a step's randomness depends on nothing but its number, a run killed at any
point and resumed draws exactly the batches the uninterrupted run would have drawn:
no RNG state lives in a checkpoint.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def step_rngs(seed: int, stage: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The (numpy, torch) random generators of one step of one stage."""
    rng = np.random.default_rng([seed, zlib.crc32(stage.encode()), step])
    return rng, torch.Generator().manual_seed(int(rng.integers(2 ** 62)))


@dataclass(frozen=True)
class Augment:
    """Image augmentations: the paper's flip for the generator; BoT's set for re-ID networks."""
    flip: bool = True
    pad: int = 0                 # pixels of zero padding on every side, then a random crop back
    random_erasing: float = 0.0  # probability (BoT: 0.5)


def augment(x: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """BoT augmentations on ``x`` (B, 3, H, W) in [-1, 1]; random draws from the CPU ``gen``.

    Horizontal flip (p=0.5), zero-pad by ``cfg.pad`` pixels on every side + random crop back,
    random erasing (p=``cfg.random_erasing``, area 2-40%, aspect 0.3-3.3). Padding and erased
    areas are filled with 0, the middle of [-1, 1] (BoT fills erasures with the normalised
    data mean).
    """
    B, _, H, W = x.shape
    dev = x.device
    if cfg.flip:
        flip = (torch.rand(B, generator=gen) < 0.5).to(dev)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if cfg.pad:
        ph = pw = cfg.pad
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

"""The losses every re-ID stage shares (BoT, Luo et al. 2019; DCAC's prototypes).

All take float tensors and return a scalar batch mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy against (1 - eps) * one_hot + eps / C (Szegedy et al.).

    logits (B, C), targets (B,) int64 in [0, C).
    """
    return F.cross_entropy(logits.float(), targets.long(), label_smoothing=epsilon)


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


def prototype_logits(identity: torch.Tensor, table: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine logits of identities (B, D) against the table's rows (C, D) as class prototypes:
    scale * <f / |f|, P_k / |P_k|> (NormFace); (B, C)."""
    return scale * F.normalize(identity.float(), dim=1) @ F.normalize(table.float(), dim=1).t()

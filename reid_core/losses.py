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
    return _batch_hard(pairwise_euclidean(features), labels, margin, features)


def _batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float | None, source: torch.Tensor) -> torch.Tensor:
    """The batch-hard triplet on any (B, B) distance: each anchor's farthest positive against its
    nearest negative; `source` keeps an empty result attached to the graph."""
    same = labels[:, None] == labels[None, :]
    # The anchor itself (distance ~0) counts as a positive; harmless since any real
    # positive is farther, and it keeps d_ap defined for singleton identities.
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = torch.isfinite(d_an)
    if not bool(valid.any()):
        return source.sum() * 0.0
    diff = d_ap[valid] - d_an[valid]
    if margin is None:
        return F.softplus(diff).mean()
    return F.relu(diff + margin).mean()


def prototype_logits(identity: torch.Tensor, table: torch.Tensor, scale: float) -> torch.Tensor:
    """Cosine logits of identities (B, D) against the table's rows (C, D) as class prototypes:
    scale * <f / |f|, P_k / |P_k|> (NormFace); (B, C)."""
    return scale * F.normalize(identity.float(), dim=1) @ F.normalize(table.float(), dim=1).t()


def gaussian_js_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(B, B) Jensen-Shannon divergence between diagonal Gaussians N(mu_i, sigma_i^2), summed over
    dimensions. The mixture m = (p + q) / 2 is not Gaussian, so m is taken as the Gaussian with
    its mean and variance (moment matching), which gives JS in closed form:
    JS = (KL(p || m) + KL(q || m)) / 2."""
    m1, v1 = mu[:, None, :].float(), sigma[:, None, :].float() ** 2
    m2, v2 = mu[None, :, :].float(), sigma[None, :, :].float() ** 2
    mm = (m1 + m2) / 2
    vm = (v1 + v2) / 2 + (m1 - m2) ** 2 / 4

    def kl(m, v):   # KL(N(m, v) || N(mm, vm)) per dimension
        return 0.5 * (torch.log(vm / v) + (v + (m - mm) ** 2) / vm - 1)
    return (0.5 * (kl(m1, v1) + kl(m2, v2))).sum(-1)


def batch_hard_js_triplet_loss(mu: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor,
                               margin: float = 0.5) -> torch.Tensor:
    """HAVANA's Jensen-Shannon triplet (eq. 9), batch-hard: max(0, JS(a, p) - JS(a, n) + margin)
    with the farthest positive and nearest negative of each anchor. The divergence is squashed
    to 1 - exp(-JS), in [0, 1) as the paper's bounded JS, so the margin keeps its scale."""
    return _batch_hard(1 - torch.exp(-gaussian_js_divergence(mu, sigma)), labels, margin, mu)


def gaussian_kl_to_standard(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over dimensions, batch mean."""
    v = sigma.float() ** 2
    return (0.5 * (v + mu.float() ** 2 - 1 - torch.log(v))).sum(-1).mean()

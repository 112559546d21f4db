"""Retrieval beyond the raw identity feature: training-free gains and a calibrated verdict.

- `pose_centralize`: Pose2ID's feature centralization (digest §2): each feature pulled towards
  the mean feature of the same photo regenerated in M library poses.
- `nfc`: Pose2ID's neighbour feature centralization (digest §2): each feature plus its
  mutual nearest neighbours, within one set (the gallery, or the queries).
- `k_reciprocal_rerank`: Zhong et al. (CVPR 2017) k-reciprocal re-ranking, k1 = 20, k2 = 6,
  lambda = 0.3, written from the paper's definition (its result is checked against a literal
  loop version of the same definition in tests/test_retrieval.py).
- `identity_density`: Pose2ID's ID^2, mean distance of normalised features to their identity
  centre (lower is tighter).
- `Verdict`: "same person or not", a logistic fit of distance on TRAINING pairs only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .metrics import l2_normalize, pairwise_distance


def normalize(x: np.ndarray) -> np.ndarray:
    """float32 rows of unit length."""
    return l2_normalize(np.asarray(x, np.float32))


# ---------------------------------------------------------------- Pose2ID centralization
def pose_centralize(features: np.ndarray, view_features: np.ndarray, eta: float) -> np.ndarray:
    """f~ = normalize(f + eta * mean_i f_i): features (N, D), the features of each photo's M
    pose views (N, M, D); all on the unit sphere first, so eta weighs directions alike."""
    views = normalize(np.asarray(view_features, np.float32).reshape(-1, view_features.shape[-1]))
    mean = views.reshape(view_features.shape).mean(axis=1)
    return normalize(normalize(features) + eta * mean)


# ---------------------------------------------------------------- NFC
def nfc(features: np.ndarray, k1: int = 2, k2: int = 2) -> np.ndarray:
    """Neighbour feature centralization within one set: z_i <- normalize(z_i + sum of z_j for
    the j among i's k1 nearest that also hold i among their k2 nearest)."""
    z = normalize(features)
    n = len(z)
    if n < 2:
        return z
    d = pairwise_distance(z, z)
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    near1, near2 = order[:, :min(k1, n - 1)], order[:, :min(k2, n - 1)]
    mutual = (near2[near1] == np.arange(n)[:, None, None]).any(axis=2)      # (n, k1): i in top-k2 of j
    add = np.zeros_like(z)
    for c in range(near1.shape[1]):
        add += z[near1[:, c]] * mutual[:, c:c + 1]
    return normalize(z + add)


# ---------------------------------------------------------------- k-reciprocal re-ranking
def _k_reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the k nearest of i (itself included, as the paper's k+1 slice) that hold i among theirs."""
    forward = rank[i, :k + 1]
    return forward[(rank[forward, :k + 1] == i).any(axis=1)]


def k_reciprocal_rerank(q_feats: np.ndarray, g_feats: np.ndarray, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """The re-ranked (num_query, num_gallery) distance: lambda * d + (1 - lambda) * Jaccard
    distance of k-reciprocal neighbour sets (expanded, Gaussian-weighted, query-expanded over k2)."""
    feats = np.concatenate([q_feats, g_feats]).astype(np.float32)
    nq, n = len(q_feats), len(feats)
    d = pairwise_distance(feats, feats) ** 2
    d = (d / np.maximum(d.max(axis=0), 1e-12)).T          # column-normalised, as the paper's code
    rank = np.argsort(d, axis=1, kind="stable")
    V = np.zeros((n, n), np.float32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = _k_reciprocal(rank, i, k1)
        expanded = [r]
        for c in r:
            rc = _k_reciprocal(rank, c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expanded.append(rc)
        idx = np.unique(np.concatenate(expanded))
        w = np.exp(-d[i, idx])
        V[i, idx] = w / w.sum()
    if k2 > 1:                                             # local query expansion
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    # Jaccard distance between the query rows and every row: 1 - sum min / sum max, with
    # sum max = 2 - sum min for rows that each sum to one
    jac = np.zeros((nq, n), np.float32)
    step = max(1, 2 ** 24 // (n * n))                       # ~64 MB of temporaries at a time
    for a in range(0, nq, step):
        b = min(a + step, nq)
        mins = np.minimum(V[a:b, None, :], V[None, :, :]).sum(axis=2)
        jac[a:b] = 1 - mins / (2 - mins)
    final = jac * (1 - lambda_value) + d[:nq] * lambda_value
    return final[:, nq:]


# ---------------------------------------------------------------- ID^2
def identity_density(features: np.ndarray, pids: np.ndarray) -> float:
    """ID^2: the mean over identities of the mean distance of normalised features to their
    (normalised-feature) centre. Lower: each identity's images lie closer together."""
    z = normalize(features)
    pids = np.asarray(pids)
    out = [np.linalg.norm(z[pids == p] - z[pids == p].mean(axis=0), axis=1).mean() for p in np.unique(pids)]
    return float(np.mean(out))


# ---------------------------------------------------------------- same person or not
@dataclass
class Verdict:
    """P(same person | distance) = sigmoid(coef * distance + intercept), fitted on training
    pairs; `threshold` is the distance where the probability crosses one half."""
    coef: float
    intercept: float
    metric: str = "euclidean"
    pairs: int = 0

    @property
    def threshold(self) -> float:
        return -self.intercept / self.coef

    def probability(self, distance) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.coef * np.asarray(distance, np.float64) + self.intercept)))

    def save(self, path) -> None:
        from .io import atomic_write_json
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path) -> "Verdict":
        return cls(**json.loads(Path(path).read_text()))


def pair_distances(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None,
                   max_pairs: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(distances, same) over image pairs: every same-person pair (across cameras when camids
    are given, as a re-ID query meets its match) and as many different-person pairs, sampled."""
    rng = np.random.default_rng(seed)
    pids = np.asarray(pids)
    d = pairwise_distance(features, features)
    iu = np.triu_indices(len(pids), k=1)
    same = pids[iu[0]] == pids[iu[1]]
    if camids is not None:
        camids = np.asarray(camids)
        same &= camids[iu[0]] != camids[iu[1]]
    pos = np.flatnonzero(same)
    neg = np.flatnonzero(pids[iu[0]] != pids[iu[1]])
    pos = pos if len(pos) <= max_pairs // 2 else rng.choice(pos, max_pairs // 2, replace=False)
    neg = rng.choice(neg, min(len(neg), max(len(pos), 1)), replace=False)
    keep = np.concatenate([pos, neg])
    return d[iu[0][keep], iu[1][keep]], np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])


def fit_verdict(features: np.ndarray, pids: np.ndarray, camids: np.ndarray | None = None) -> Verdict:
    """Logistic fit of same/different on distances between TRAINING images (balanced pairs)."""
    from sklearn.linear_model import LogisticRegression
    dist, same = pair_distances(features, pids, camids)
    lr = LogisticRegression(C=1e4).fit(dist[:, None], same)
    return Verdict(float(lr.coef_[0, 0]), float(lr.intercept_[0]), pairs=int(len(dist)))


def verification_scores(verdict: Verdict, features: np.ndarray, pids: np.ndarray,
                        camids: np.ndarray | None = None) -> dict:
    """ROC AUC and accuracy at the calibrated threshold on balanced pairs of another split."""
    from sklearn.metrics import roc_auc_score
    dist, same = pair_distances(features, pids, camids)
    p = verdict.probability(dist)
    return {"roc_auc": float(roc_auc_score(same, p)), "accuracy": float(((p >= 0.5) == same).mean()),
            "pairs": int(len(dist)), "threshold": verdict.threshold}

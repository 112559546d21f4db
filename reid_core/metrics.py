"""Retrieval metrics for person re-identification.

* :func:`evaluate_rank` -- CMC curve and mAP under the Market-1501 protocol,
  matching ``torchreid.metrics.rank.evaluate_rank`` (``eval_market1501``).
* :func:`pairwise_distance` -- query x gallery distance matrix (Euclidean or
  cosine) for NumPy or torch features.
* :func:`rank_summary` -- the usual mAP / Rank-1 / Rank-5 / Rank-10 numbers.

Everything here runs on NumPy; torch tensors are accepted and converted.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["evaluate_rank", "pairwise_distance", "rank_summary"]

# Elements per (query-chunk x gallery) block of temporaries. ~2M elements keeps
# each float64/int64 temporary near 16 MB, whatever the gallery size.
_BLOCK_ELEMS = 1 << 21


def _as_numpy(x, name):
    """Return ``x`` as a NumPy array; torch tensors (any device) are detached."""
    # Duck-typed so this module never needs to import torch.
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to a NumPy array: {exc}") from exc


def _rows_per_chunk(num_cols):
    return max(1, _BLOCK_ELEMS // max(1, num_cols))


def _stable_argsort_rows(values):
    """Row-wise argsort of a 2-D array, identical to
    ``np.argsort(values, axis=1, kind="stable")`` (ties keep index order,
    NaNs last), but faster for float inputs.

    NumPy's stable sort is a timsort about twice as slow as its default
    introsort, and sorting is most of :func:`evaluate_rank`'s cost, so:

    * float32 (what :func:`pairwise_distance` returns): pack each value's
      order-preserving 32-bit pattern with its column index into one uint64
      and sort those; equal values then fall back to index order by
      construction.
    * float64: introsort, then redo with a stable sort only the rows that
      contain ties or NaNs, the only rows where the two sorts can differ
      (so a tie-heavy float64 matrix costs both sorts).
    * anything else: NumPy's stable sort.
    """
    num_cols = values.shape[1]
    if values.dtype == np.float32 and num_cols < 2**32:
        # +0.0 so that -0.0 gets +0.0's bits: the two compare equal.
        with np.errstate(invalid="ignore"):  # signalling NaNs
            bits = (values + np.float32(0.0)).view(np.uint32)
        # One canonical NaN (above +inf), so all NaNs tie, as in NumPy's sort.
        bits = np.where(np.isnan(values), np.uint32(0x7FC00000), bits)
        # IEEE bits -> unsigned ints in float order: negatives reversed below
        # positives.
        ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
        keys = (ordered.astype(np.uint64) << np.uint64(32)) | np.arange(num_cols, dtype=np.uint64)
        keys.sort(axis=1)
        return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
    if values.dtype == np.float64 and num_cols > 1:
        order = np.argsort(values, axis=1)
        ranked = np.take_along_axis(values, order, axis=1)
        ambiguous = (ranked[:, 1:] == ranked[:, :-1]).any(axis=1) | np.isnan(ranked[:, -1])
        if ambiguous.any():
            order[ambiguous] = np.argsort(values[ambiguous], axis=1, kind="stable")
        return order
    return np.argsort(values, axis=1, kind="stable")


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """CMC and mAP under the Market-1501 protocol.

    Same signature and results as torchreid's ``evaluate_rank`` with the
    Market-1501 protocol (``eval_market1501``): for each query the gallery is
    sorted by ascending distance (stable sort, so ties keep gallery order);
    gallery entries sharing both the query's pid and camid are discarded as
    junk; queries left with no true match are skipped.

    Args:
        distmat: (num_q, num_g) distances; smaller means more similar.
        q_pids: (num_q,) query identity labels.
        g_pids: (num_g,) gallery identity labels.
        q_camids: (num_q,) query camera ids.
        g_camids: (num_g,) gallery camera ids.
        max_rank: length of the returned CMC curve (>= 1). Reduced to num_g,
            with a warning, when the gallery is smaller.

    Returns:
        cmc: (max_rank,) float32, non-decreasing, values in [0, 1];
            ``cmc[k]`` is the fraction of valid queries whose first true match
            is at rank <= k + 1 (ranks counted after junk removal).
        mAP: float in [0, 1], mean over valid queries of average precision
            (mean over a query's true matches of precision at that match).

    Raises:
        ValueError: on malformed shapes or max_rank, or if no query has a
            valid true match in the gallery.

    Unlike torchreid, which builds a ragged array (and fails) when junk
    removal leaves a query with fewer than max_rank gallery entries, such a
    query simply counts as matched at every rank from its first match on.
    """
    distmat = _as_numpy(distmat, "distmat")
    q_pids = _as_numpy(q_pids, "q_pids")
    g_pids = _as_numpy(g_pids, "g_pids")
    q_camids = _as_numpy(q_camids, "q_camids")
    g_camids = _as_numpy(g_camids, "g_camids")

    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_q, num_g), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    for name, arr, n, side in (
        ("q_pids", q_pids, num_q, "num_q"),
        ("q_camids", q_camids, num_q, "num_q"),
        ("g_pids", g_pids, num_g, "num_g"),
        ("g_camids", g_camids, num_g, "num_g"),
    ):
        if arr.shape != (n,):
            raise ValueError(
                f"{name} must have shape ({side},) = ({n},) to match distmat "
                f"{distmat.shape}, got {arr.shape}"
            )
    if isinstance(max_rank, (bool, np.bool_)) or not isinstance(max_rank, (int, np.integer)):
        raise ValueError(f"max_rank must be an int, got {max_rank!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    max_rank = int(max_rank)

    if num_g < max_rank:
        if num_g > 0:
            warnings.warn(
                f"number of gallery samples ({num_g}) is smaller than "
                f"max_rank ({max_rank}); using max_rank={num_g}",
                stacklevel=2,
            )
        max_rank = num_g

    first_ranks = []  # 1-based rank of the first true match, per valid query
    aps = []
    if num_q > 0 and num_g > 0:
        step = _rows_per_chunk(num_g)
        for start in range(0, num_q, step):
            sl = slice(start, min(start + step, num_q))
            order = _stable_argsort_rows(distmat[sl])
            same_pid = g_pids[order] == q_pids[sl, None]
            same_cam = g_camids[order] == q_camids[sl, None]
            keep = ~(same_pid & same_cam)
            positive = same_pid & ~same_cam
            # Ranks are counted over kept entries only, so junk neither helps
            # nor hurts; cumsum gives each kept entry its post-removal rank.
            rank = np.cumsum(keep, axis=1, dtype=np.int32)
            hits = np.cumsum(positive, axis=1, dtype=np.int32)
            num_rel = hits[:, -1]
            valid = num_rel > 0
            # AP only needs precision at the (few) true matches.
            rows, cols = np.nonzero(positive)
            precision = hits[rows, cols] / rank[rows, cols]
            ap_sum = np.bincount(rows, weights=precision, minlength=len(num_rel))
            aps.append(ap_sum[valid] / num_rel[valid])
            first_idx = positive.argmax(axis=1)
            first_ranks.append(rank[np.arange(len(rank)), first_idx][valid])

    first_ranks = np.concatenate(first_ranks) if first_ranks else np.zeros(0, np.int32)
    num_valid = len(first_ranks)
    if num_valid == 0:
        raise ValueError(
            "Error: all query identities do not appear in gallery "
            "(no query has a valid true match after removing same-pid "
            "same-camera gallery entries)"
        )
    aps = np.concatenate(aps)

    # A query whose first match lies beyond max_rank counts for no k; beyond
    # its first match it counts for every k (torchreid clamps its cmc to 1).
    counts = np.bincount(np.minimum(first_ranks, max_rank + 1), minlength=max_rank + 2)
    cmc = (np.cumsum(counts[1 : max_rank + 1]) / num_valid).astype(np.float32)
    mAP = float(np.mean(aps))
    return cmc, mAP


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, with torch.nn.functional.normalize's eps: zero rows stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pairwise_distance(q, g, metric="euclidean", chunk_size=None):
    """Distance matrix between query and gallery features.

    Args:
        q: (num_q, dim) query features, NumPy array or torch tensor.
        g: (num_g, dim) gallery features, NumPy array or torch tensor.
        metric: ``"euclidean"`` -- true (not squared) L2 distance, >= 0; or
            ``"cosine"`` -- 1 - cosine similarity of the L2-normalised
            features, in [0, 2] (zero vectors have similarity 0).
        chunk_size: query rows per block; default bounds each block's
            temporaries to a few MB regardless of gallery size.

    Returns:
        (num_q, num_g) float32 NumPy array.

    Computation is in float64 so that near-duplicates do not lose their small
    distances to cancellation in ``|q|^2 + |g|^2 - 2 q.g``.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    q = _as_numpy(q, "q")
    g = _as_numpy(g, "g")
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError(
            f"q and g must be 2-D (num, dim), got shapes {q.shape} and {g.shape}"
        )
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"feature dims differ: q has {q.shape[1]}, g has {g.shape[1]}"
        )
    if chunk_size is None:
        chunk_size = _rows_per_chunk(g.shape[0])
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)

    q = q.astype(np.float64, copy=False)
    g = g.astype(np.float64, copy=False)
    num_q, num_g = q.shape[0], g.shape[0]
    out = np.empty((num_q, num_g), dtype=np.float32)

    if metric == "cosine":
        g = l2_normalize(g)
    else:
        g_sq = np.einsum("ij,ij->i", g, g)

    for start in range(0, num_q, chunk_size):
        qc = q[start : start + chunk_size]
        if metric == "cosine":
            qc = l2_normalize(qc)
            d = 1.0 - qc @ g.T
            np.clip(d, 0.0, 2.0, out=d)
        else:
            d = np.einsum("ij,ij->i", qc, qc)[:, None] + g_sq[None, :] - 2.0 * (qc @ g.T)
            # Rounding can push exact duplicates slightly below zero.
            np.maximum(d, 0.0, out=d)
            np.sqrt(d, out=d)
        out[start : start + len(qc)] = d
    return out


def rank_summary(cmc, mAP):
    """Headline numbers from :func:`evaluate_rank`'s output.

    Args:
        cmc: (max_rank,) CMC curve with values in [0, 1], max_rank >= 1.
        mAP: mean average precision in [0, 1].

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10"}`` as Python floats in [0, 1].
        A curve shorter than k reports its last value for rank-k; this is
        exact when the curve was cut to the gallery size, since the CMC is
        flat once every gallery entry has been ranked.
    """
    cmc = _as_numpy(cmc, "cmc").reshape(-1)
    if cmc.size == 0:
        raise ValueError("cmc must not be empty")
    last = cmc.size - 1
    return {
        "mAP": float(mAP),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[min(4, last)]),
        "rank10": float(cmc[min(9, last)]),
    }

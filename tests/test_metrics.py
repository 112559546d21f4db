"""Tests for reid_core.metrics (CMC / mAP, distance matrices, summaries)."""

import warnings

import numpy as np
import pytest
import torch

from reid_core.metrics import _stable_argsort_rows, evaluate_rank, pairwise_distance, rank_summary


# ---------------------------------------------------------------------------
# Reference implementations, deliberately written unlike the library code.
# ---------------------------------------------------------------------------


def brute_force_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Plain-Python loops: sort (distance, index) pairs, walk the list."""
    num_q, num_g = len(distmat), len(distmat[0])
    max_rank = min(max_rank, num_g)
    first_hits, aps = [], []
    for i in range(num_q):
        # Sorting by (distance, gallery index) is what a stable argsort does.
        ranked = sorted(range(num_g), key=lambda j: (float(distmat[i][j]), j))
        position = 0
        n_hits = 0
        precisions = []
        first = None
        for j in ranked:
            same_pid = g_pids[j] == q_pids[i]
            if same_pid and g_camids[j] == q_camids[i]:
                continue  # junk: invisible to the ranking
            position += 1
            if same_pid:
                n_hits += 1
                precisions.append(n_hits / position)
                if first is None:
                    first = position
        if first is None:
            continue
        first_hits.append(first)
        aps.append(sum(precisions) / len(precisions))
    cmc = [sum(1 for f in first_hits if f <= k) / len(first_hits) for k in range(1, max_rank + 1)]
    return np.array(cmc), sum(aps) / len(aps)


def torchreid_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Transcription of torchreid.metrics.rank.eval_market1501 (MIT licence),
    with a stable argsort. Only valid when every query keeps >= max_rank
    gallery entries after junk removal (else torchreid builds a ragged array)."""
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, num_valid_q = [], [], 0.0
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        num_rel = raw_cmc.sum()
        tmp_cmc = raw_cmc.cumsum()
        tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
        tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
        all_AP.append(tmp_cmc.sum() / num_rel)
    assert num_valid_q > 0
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return all_cmc, np.mean(all_AP)


def random_problem(rng, num_q, num_g, num_pids, num_cams, integer_dists=False):
    q_pids = rng.integers(0, num_pids, size=num_q)
    g_pids = rng.integers(0, num_pids, size=num_g)
    q_camids = rng.integers(0, num_cams, size=num_q)
    g_camids = rng.integers(0, num_cams, size=num_g)
    if integer_dists:
        distmat = rng.integers(0, 4, size=(num_q, num_g)).astype(np.float64)
    else:
        distmat = rng.random((num_q, num_g))
    return distmat, q_pids, g_pids, q_camids, g_camids


# ---------------------------------------------------------------------------
# Hand-worked example
# ---------------------------------------------------------------------------

# Gallery (index: pid, cam)
#   g0: 1,0   g1: 1,1   g2: 2,1   g3: 1,2   g4: 3,1   g5: 2,0   g6: 4,1
HAND_G_PIDS = np.array([1, 1, 2, 1, 3, 2, 4])
HAND_G_CAMS = np.array([0, 1, 1, 2, 1, 0, 1])
# Queries: A = (1, cam 0), B = (2, cam 0), C = (4, cam 1), D = (3, cam 0)
HAND_Q_PIDS = np.array([1, 2, 4, 3])
HAND_Q_CAMS = np.array([0, 0, 1, 0])
HAND_DIST = np.array(
    [
        #  g0    g1    g2    g3    g4    g5    g6
        [0.05, 0.30, 0.10, 0.45, 0.20, 0.40, 0.50],  # A
        [0.90, 0.80, 0.20, 0.70, 0.60, 0.10, 0.50],  # B
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.00],  # C
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70],  # D
    ]
)
# A: order g0 g2 g4 g1 g5 g3 g6; g0 is junk (pid 1, cam 0) and dropped, so
#    kept = g2 g4 g1 g5 g3 g6 -> hits [0 0 1 0 1 0]; first match at rank 3;
#    AP = (1/3 + 2/5) / 2 = 11/30.
# B: order g5 g2 ...; g5 is junk (pid 2, cam 0), g2 is a true match -> rank 1,
#    AP = 1.
# C: the only pid-4 image, g6, shares cam 1 with the query -> junk, so C has
#    no valid match and is skipped (even though g6 is at distance 0).
# D: order g0..g6; the only pid-3 image is g4, no junk -> rank 5, AP = 1/5.
# Valid queries A, B, D with first ranks 3, 1, 5:
#   cmc@1..5 = [1/3, 1/3, 2/3, 2/3, 3/3]
#   mAP = (11/30 + 1 + 1/5) / 3 = 47/90
HAND_CMC5 = np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
HAND_MAP = 47 / 90


def hand_args():
    return HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS


def test_hand_worked_example():
    cmc, mAP = evaluate_rank(*hand_args(), max_rank=5)
    assert cmc.dtype == np.float32
    assert cmc.shape == (5,)
    np.testing.assert_allclose(cmc, HAND_CMC5, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(HAND_MAP, abs=1e-12)
    assert isinstance(mAP, float)


def test_hand_example_curve_runs_past_kept_entries():
    # max_rank = num_g = 7, but A and B only keep 6 entries after junk
    # removal; they stay counted as matched at every later rank.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cmc, mAP = evaluate_rank(*hand_args(), max_rank=7)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1], atol=1e-6)
    assert mAP == pytest.approx(HAND_MAP, abs=1e-12)


def test_hand_example_matches_brute_force():
    cmc, mAP = evaluate_rank(*hand_args(), max_rank=7)
    ref_cmc, ref_map = brute_force_rank(*hand_args(), max_rank=7)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert mAP == pytest.approx(ref_map, abs=1e-12)


def test_gallery_smaller_than_max_rank_warns_and_truncates():
    with pytest.warns(UserWarning, match="gallery"):
        cmc, mAP = evaluate_rank(*hand_args(), max_rank=50)
    assert cmc.shape == (7,)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1], atol=1e-6)
    assert mAP == pytest.approx(HAND_MAP, abs=1e-12)


def test_accepts_torch_and_lists():
    d, qp, gp, qc, gc = hand_args()
    cmc, mAP = evaluate_rank(
        torch.from_numpy(d), torch.from_numpy(qp), list(gp), torch.from_numpy(qc), list(gc), max_rank=5
    )
    np.testing.assert_allclose(cmc, HAND_CMC5, atol=1e-6)
    assert mAP == pytest.approx(HAND_MAP, abs=1e-12)


# ---------------------------------------------------------------------------
# Randomised comparisons
# ---------------------------------------------------------------------------

RANDOM_CASES = [
    # seed, num_q, num_g, num_pids, num_cams, integer_dists, max_rank
    (0, 5, 12, 3, 2, False, 10),
    (1, 20, 40, 6, 3, False, 20),
    (2, 30, 25, 10, 2, False, 50),  # gallery smaller than max_rank
    (3, 15, 60, 4, 6, False, 50),
    (4, 25, 30, 5, 2, True, 15),  # many ties: stable order must be respected
    (5, 40, 80, 20, 4, True, 30),
    (6, 10, 10, 2, 2, False, 5),  # two pids, two cams: half the matches are junk
]


@pytest.mark.parametrize("seed,num_q,num_g,num_pids,num_cams,integer_dists,max_rank", RANDOM_CASES)
def test_matches_brute_force(seed, num_q, num_g, num_pids, num_cams, integer_dists, max_rank):
    rng = np.random.default_rng(seed)
    args = random_problem(rng, num_q, num_g, num_pids, num_cams, integer_dists)
    ref_cmc, ref_map = brute_force_rank(*args, max_rank=max_rank)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmc, mAP = evaluate_rank(*args, max_rank=max_rank)
    assert cmc.shape == ref_cmc.shape
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(ref_map, rel=1e-12, abs=1e-12)
    assert np.all(np.diff(cmc) >= 0) and 0 <= cmc[0] and cmc[-1] <= 1
    assert 0 <= mAP <= 1


@pytest.mark.parametrize("seed", [10, 11, 12])
@pytest.mark.parametrize("integer_dists", [False, True])
def test_matches_torchreid_transcription(seed, integer_dists):
    rng = np.random.default_rng(seed)
    args = random_problem(rng, 30, 120, 12, 4, integer_dists)
    distmat, q_pids, g_pids, q_camids, g_camids = args
    # Keep max_rank within every query's post-junk gallery (see transcription).
    junk = (q_pids[:, None] == g_pids[None]) & (q_camids[:, None] == g_camids[None])
    max_rank = min(50, int(distmat.shape[1] - junk.sum(1).max()))
    ref_cmc, ref_map = torchreid_market1501(*args, max_rank=max_rank)
    cmc, mAP = evaluate_rank(*args, max_rank=max_rank)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(ref_map, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
def test_fast_argsort_equals_numpy_stable_argsort(dtype):
    # Rounded values give many ties; add signed zeros, infinities and NaNs
    # (including a negative and a signalling NaN payload for float32).
    rng = np.random.default_rng(9)
    values = np.round(rng.normal(size=(40, 200)), 1)
    if np.issubdtype(dtype, np.floating):
        values[0, :6] = [0.0, -0.0, 0.0, -0.0, np.inf, -np.inf]
        values[1, :4] = np.nan
        values[2, ::3] = np.nan
    values = values.astype(dtype)
    if dtype == np.float32:
        values[3, :3] = np.array([0xFFC00001, 0x7F800001, 0xFFFFFFFF], dtype=np.uint32).view(np.float32)
    values[4:] = rng.permutation(values[4:].ravel()).reshape(values[4:].shape)
    values[5] = values[5, 0]  # a row of identical values
    np.testing.assert_array_equal(_stable_argsort_rows(values), np.argsort(values, axis=1, kind="stable"))


def test_fast_argsort_tie_free_rows():
    values = np.random.default_rng(10).random((30, 500))
    np.testing.assert_array_equal(_stable_argsort_rows(values), np.argsort(values, axis=1, kind="stable"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_and_float64_distances_agree_with_brute_force(dtype):
    # Rounding to 3 decimals forces many ties, in both dtypes.
    rng = np.random.default_rng(11)
    args = list(random_problem(rng, 12, 1500, 30, 3))
    args[0] = np.round(args[0], 3).astype(dtype)
    cmc, mAP = evaluate_rank(*args, max_rank=50)
    ref_cmc, ref_map = brute_force_rank(*args, max_rank=50)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert mAP == pytest.approx(ref_map, rel=1e-12)


def test_chunked_path_matches_brute_force(monkeypatch):
    # Force tiny query chunks so the chunk loop is exercised on a small input.
    import reid_core.metrics as metrics

    monkeypatch.setattr(metrics, "_BLOCK_ELEMS", 50)
    rng = np.random.default_rng(7)
    args = random_problem(rng, 23, 20, 5, 3)
    # All gallery images on cam 0 and queries 0-4 on cam 0: the first chunks
    # (2 rows each) hold only skipped queries, which must not break the merge.
    args[3][:5] = 0
    args[4][:] = 0
    cmc, mAP = metrics.evaluate_rank(*args, max_rank=20)
    ref_cmc, ref_map = brute_force_rank(*args, max_rank=20)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert mAP == pytest.approx(ref_map, rel=1e-12)


# ---------------------------------------------------------------------------
# Validation and degenerate inputs
# ---------------------------------------------------------------------------


def test_all_queries_skipped_raises():
    # Every gallery image of each query's pid comes from the query's camera.
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    q_pids, q_cams = np.array([0, 1]), np.array([0, 1])
    g_pids, g_cams = np.array([0, 1, 2]), np.array([0, 1, 0])
    with pytest.raises(ValueError, match="appear in gallery"):
        evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)


def test_single_camera_random_problem_raises():
    # One camera makes every same-pid gallery entry junk.
    args = random_problem(np.random.default_rng(8), 10, 10, 2, 1)
    with pytest.raises(ValueError, match="appear in gallery"):
        evaluate_rank(*args, max_rank=5)


def test_empty_queries_raise():
    with pytest.raises(ValueError, match="appear in gallery"):
        evaluate_rank(np.zeros((0, 3)), [], [0, 1, 2], [], [0, 1, 2], max_rank=3)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: {**a, "distmat": a["distmat"][0]}, "2-D"),
        (lambda a: {**a, "distmat": a["distmat"][None]}, "2-D"),
        (lambda a: {**a, "q_pids": a["q_pids"][:-1]}, "q_pids"),
        (lambda a: {**a, "q_camids": np.append(a["q_camids"], 0)}, "q_camids"),
        (lambda a: {**a, "g_pids": a["g_pids"][:-1]}, "g_pids"),
        (lambda a: {**a, "g_camids": a["g_camids"][:, None]}, "g_camids"),
        (lambda a: {**a, "max_rank": 0}, "max_rank"),
        (lambda a: {**a, "max_rank": 2.5}, "max_rank"),
        (lambda a: {**a, "max_rank": True}, "max_rank"),
    ],
)
def test_input_validation(change, match):
    args = dict(
        distmat=HAND_DIST,
        q_pids=HAND_Q_PIDS,
        g_pids=HAND_G_PIDS,
        q_camids=HAND_Q_CAMS,
        g_camids=HAND_G_CAMS,
        max_rank=5,
    )
    with pytest.raises(ValueError, match=match):
        evaluate_rank(**change(args))


# ---------------------------------------------------------------------------
# pairwise_distance
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_euclidean_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(7, 16)).astype(np.float32)
    g = rng.normal(size=(11, 16)).astype(np.float32)
    expected = np.sqrt(((q[:, None, :].astype(np.float64) - g[None]) ** 2).sum(-1))
    d = pairwise_distance(q, g, metric="euclidean")
    assert d.dtype == np.float32 and d.shape == (7, 11)
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_cosine_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(7, 16)) * rng.uniform(0.1, 10, size=(7, 1))
    g = rng.normal(size=(11, 16)) * rng.uniform(0.1, 10, size=(11, 1))
    expected = np.empty((7, 11))
    for i in range(7):
        for j in range(11):
            expected[i, j] = 1 - q[i] @ g[j] / (np.linalg.norm(q[i]) * np.linalg.norm(g[j]))
    d = pairwise_distance(q, g, metric="cosine")
    assert d.dtype == np.float32 and d.shape == (7, 11)
    np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-6)
    assert d.min() >= 0 and d.max() <= 2


def test_pairwise_torch_input_and_chunking_agree():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(9, 8)).astype(np.float32)
    g = rng.normal(size=(5, 8)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        full = pairwise_distance(q, g, metric=metric)
        chunked = pairwise_distance(torch.from_numpy(q), torch.from_numpy(g), metric=metric, chunk_size=2)
        np.testing.assert_array_equal(full, chunked)


def test_pairwise_duplicates_are_zero_distance():
    rng = np.random.default_rng(4)
    feats = (rng.normal(size=(6, 32)) * 100).astype(np.float32)
    d = pairwise_distance(feats, feats)
    assert np.all(d >= 0)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-3)
    dc = pairwise_distance(feats, feats, metric="cosine")
    np.testing.assert_allclose(np.diag(dc), 0, atol=1e-6)


def test_pairwise_cosine_zero_vector():
    d = pairwise_distance(np.zeros((1, 3)), np.array([[1.0, 0, 0]]), metric="cosine")
    np.testing.assert_allclose(d, [[1.0]])


def test_pairwise_validation():
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 3)), metric="manhattan")
    with pytest.raises(ValueError, match="dims"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distance(np.ones(3), np.ones((2, 3)))
    with pytest.raises(ValueError, match="chunk_size"):
        pairwise_distance(np.ones((2, 3)), np.ones((2, 3)), chunk_size=0)


def test_pairwise_feeds_evaluate_rank():
    # Each query is a noisy copy of a gallery image from another camera, so
    # with small noise every query's nearest valid entry is its own identity.
    rng = np.random.default_rng(5)
    g = rng.normal(size=(20, 8))
    g_pids, g_cams = np.arange(20), np.ones(20, dtype=int)
    q = g[:10] + 1e-3 * rng.normal(size=(10, 8))
    cmc, mAP = evaluate_rank(pairwise_distance(q, g), g_pids[:10], g_pids, np.zeros(10, dtype=int), g_cams, max_rank=5)
    np.testing.assert_allclose(cmc, 1.0)
    assert mAP == pytest.approx(1.0)


# ---------------------------------------------------------------------------
# rank_summary
# ---------------------------------------------------------------------------


def test_rank_summary_full_curve():
    cmc = np.linspace(0.5, 1.0, 50).astype(np.float32)
    s = rank_summary(cmc, 0.42)
    assert set(s) == {"mAP", "rank1", "rank5", "rank10"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["mAP"] == pytest.approx(0.42)
    assert s["rank1"] == pytest.approx(cmc[0])
    assert s["rank5"] == pytest.approx(cmc[4])
    assert s["rank10"] == pytest.approx(cmc[9])


def test_rank_summary_short_curve_uses_last_value():
    cmc = np.array([0.25, 0.5, 0.75], dtype=np.float32)
    s = rank_summary(cmc, np.float64(0.6))
    assert s == pytest.approx({"mAP": 0.6, "rank1": 0.25, "rank5": 0.75, "rank10": 0.75})


def test_rank_summary_on_hand_example():
    s = rank_summary(*evaluate_rank(*hand_args(), max_rank=5))
    assert s == pytest.approx({"mAP": 47 / 90, "rank1": 1 / 3, "rank5": 1.0, "rank10": 1.0})


def test_rank_summary_empty_raises():
    with pytest.raises(ValueError):
        rank_summary(np.array([]), 0.5)

"""Retrieval post-processing: k-reciprocal re-ranking against a literal version of its
definition, NFC, ID^2 and the same-person verdict, on small data made here."""
from __future__ import annotations

import numpy as np
import pytest

from reid_core.metrics import evaluate_rank, pairwise_distance
from reid_core.retrieval import (Verdict, fit_verdict, identity_density, k_reciprocal_rerank, nfc, normalize,
                                 pose_centralize, verification_scores)


def literal_rerank(q, g, k1, k2, lam):
    """Zhong et al. 2017 step by step, with plain loops (the slow, obviously-right version)."""
    x = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(x), len(q)
    d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
    d = (d / d.max(axis=0)).T
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        return [j for j in rank[i, :k + 1] if i in rank[j, :k + 1]]

    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        exp = list(r)
        for c in r:
            rc = recip(c, int(np.around(k1 / 2)))
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                exp += rc
        idx = sorted(set(exp))
        w = np.exp(-d[i, idx])
        V[i, idx] = w / w.sum()
    V = np.array([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(nq, n):
            lo = np.minimum(V[i], V[j]).sum()
            hi = np.maximum(V[i], V[j]).sum()
            out[i, j - nq] = (1 - lo / hi) * (1 - lam) + d[i, j] * lam
    return out


def clusters(n_ids=12, per=5, dim=8, spread=0.35, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    pids = np.repeat(np.arange(n_ids), per)
    feats = centres[pids] + spread * rng.standard_normal((len(pids), dim))
    return feats.astype(np.float32), pids


def test_rerank_matches_the_definition():
    rng = np.random.default_rng(3)
    q, g = rng.standard_normal((7, 5)).astype(np.float32), rng.standard_normal((23, 5)).astype(np.float32)
    got = k_reciprocal_rerank(q, g, k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got, literal_rerank(q, g, 6, 3, 0.3), atol=2e-5)


def test_rerank_helps_on_clustered_identities():
    feats, pids = clusters(spread=0.9, seed=1)
    qi = np.arange(0, len(pids), 5)                       # one query per identity, the rest gallery
    gi = np.setdiff1d(np.arange(len(pids)), qi)
    cams_q, cams_g = np.zeros(len(qi), int), np.ones(len(gi), int)
    raw = evaluate_rank(pairwise_distance(feats[qi], feats[gi]), pids[qi], pids[gi], cams_q, cams_g)[1]
    rr = evaluate_rank(k_reciprocal_rerank(feats[qi], feats[gi], k1=4, k2=2), pids[qi], pids[gi], cams_q, cams_g)[1]
    assert rr > raw


def test_pose_centralization_pulls_each_feature_towards_its_views_mean():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 4)).astype(np.float32)
    views = rng.normal(size=(5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(pose_centralize(f, views, 0.0), normalize(f), atol=1e-6)
    unit_views = views / np.linalg.norm(views, axis=2, keepdims=True)
    want = normalize(normalize(f) + 0.5 * unit_views.mean(1))
    np.testing.assert_allclose(pose_centralize(f, views, 0.5), want, atol=1e-6)
    # views of the photo itself change nothing; views scaled up weigh no more than unit ones
    np.testing.assert_allclose(pose_centralize(f, np.repeat(f[:, None], 3, 1), 2.0), normalize(f), atol=1e-6)
    np.testing.assert_allclose(pose_centralize(f, 10 * views, 0.5), want, atol=1e-6)


def test_pose_centralization_merges_two_photos_of_one_person():
    """Two photos far apart whose views agree (the generator redraws the same person) end closer."""
    a, b, other = np.eye(3, dtype=np.float32)
    views = np.stack([np.stack([a + b] * 2), np.stack([a + b] * 2), np.stack([other] * 2)])
    before = pairwise_distance(normalize(np.stack([a, b])), normalize(np.stack([a, b])))[0, 1]
    after = pose_centralize(np.stack([a, b, other]), views, 1.0)
    assert np.linalg.norm(after[0] - after[1]) < before


def test_nfc_adds_mutual_neighbours_only():
    z = normalize(np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0.05]], np.float32))
    out = nfc(z, k1=1, k2=1)
    # 0 and 1 are each other's nearest: both move to their normalised sum; 2's nearest is 1, but 1's is 0
    np.testing.assert_allclose(out[0], normalize((z[0] + z[1])[None])[0], atol=1e-6)
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)
    np.testing.assert_allclose(out[2], z[2], atol=1e-6)
    assert np.allclose(np.linalg.norm(nfc(*clusters()[:1]), axis=1), 1)


def test_nfc_tightens_identities():
    feats, pids = clusters(spread=0.8, seed=2)
    assert identity_density(nfc(feats), pids) < identity_density(feats, pids)


def test_identity_density_orders_tight_and_loose():
    tight, pids = clusters(spread=0.1)
    loose, _ = clusters(spread=1.0)
    assert identity_density(tight, pids) < identity_density(loose, pids)
    assert identity_density(np.repeat(np.eye(3), 2, axis=0), np.repeat(np.arange(3), 2)) == pytest.approx(0)


def test_verdict_is_calibrated_on_one_split_and_scored_on_another(tmp_path):
    train, tp = clusters(n_ids=30, spread=0.3, seed=4)
    test, sp = clusters(n_ids=20, spread=0.3, seed=5)
    v = fit_verdict(train, tp)
    d_same = pairwise_distance(train[:1], train[1:5])[0]            # the same identity's other images
    d_diff = pairwise_distance(train[:1], train[5:])[0]
    assert (v.probability(d_same) > 0.5).all() and v.probability(d_diff).mean() < 0.2
    assert d_same.max() < v.threshold < np.median(d_diff)
    s = verification_scores(v, test, sp)
    assert s["roc_auc"] > 0.95 and s["accuracy"] > 0.85
    v.save(tmp_path / "verdict.json")
    assert Verdict.load(tmp_path / "verdict.json") == v

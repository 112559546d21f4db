"""Integration on real people: the tiny preset trained on 20 cuhk03-pair1 identities.

Skipped, saying why, when ../shared/datasets/cuhk03-pair1 is not beside the project.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from reid_core.config import get_preset
from reid_core.data import list_split, load_split
from reid_core.engine import ReIDEngine
from reid_core.evaluate import evaluate
from reid_core.metrics import evaluate_rank, pairwise_distance
from reid_core.training import train


@pytest.fixture(scope="module")
def real_subset(shared_data, tmp_path_factory):
    """20 training identities (all their images) + the full real query/gallery, by symlink."""
    root = tmp_path_factory.mktemp("cuhk20")
    train_dir = root / "bounding_box_train"
    train_dir.mkdir()
    samples = list_split(shared_data, "train")
    keep = sorted({s.pid for s in samples})[:20]
    for s in samples:
        if s.pid in keep:
            os.symlink(s.path, train_dir / os.path.basename(s.path))
    for folder in ("query", "bounding_box_test"):
        os.symlink(shared_data / folder, root / folder)
    os.symlink(shared_data / "keypoints.json.gz", root / "keypoints.json.gz")
    return root


def _chance_map(q_pids, g_pids, q_cams, g_cams) -> float:
    rng = np.random.default_rng(0)
    return evaluate_rank(rng.random((len(q_pids), len(g_pids))), q_pids, g_pids, q_cams, g_cams)[1]


def test_tiny_on_20_real_identities(real_subset, tmp_path):
    # Img2ID needs a few hundred steps to separate real people; still seconds at 16x8
    preset = get_preset("tiny", img2id_steps=400, baseline_steps=200)
    out = train(real_subset, preset, tmp_path / "w", progress=False, device="cpu")
    engine = ReIDEngine.from_pretrained(out, device="cpu")
    assert engine.num_identities == 20 and engine.has_pose_model and len(engine.pose_library()) == 8

    # It learned the 20 real people: across cameras (camera 1 as queries, camera 2 as gallery)
    split = load_split(real_subset, "train", preset.image_size, progress=False)
    feats = engine.embed_arrays(split.images)
    q, g = split.camids == 0, split.camids == 1
    dist = pairwise_distance(feats[q], feats[g])
    _, m = evaluate_rank(dist, split.pids[q], split.pids[g], split.camids[q], split.camids[g])
    chance = _chance_map(split.pids[q], split.pids[g], split.camids[q], split.camids[g])
    print(f"tiny, 20 real training ids across cameras: mAP {m:.3f} (chance {chance:.3f})")
    assert m > 2 * chance

    # The real test split evaluates under the Market protocol (unseen people: near chance for tiny)
    res = evaluate(engine, real_subset, progress=False)
    assert res["num_query"] == 400 and res["num_gallery"] == 1505
    assert 0 <= res["rank1"] <= res["rank5"] <= res["rank10"] <= 1 and 0 < res["mAP"] <= 1
    base = evaluate(engine, real_subset, model="baseline", progress=False)
    assert base["metric"] == "cosine" and 0 < base["mAP"] <= 1


def test_the_shipped_weights_recognise_their_training_people_and_no_one_else(shared_data):
    """A photo of a person the shipped generator trained on is drawn under their row, anyone
    else under Img2ID's vector (`photo_identities`): the threshold must tell the two apart."""
    from pathlib import Path

    from reid_core.data import relabel
    engine = ReIDEngine.from_pretrained(Path(__file__).resolve().parents[1] / "weights", device="cpu")
    assert engine.preset.known_identity_cos > 0
    train_split = load_split(shared_data, "train", engine.embed_size, progress=False)
    labels, _ = relabel(train_split.pids)
    pick = np.random.default_rng(0).choice(len(labels), 300, replace=False)
    vectors, known = engine.photo_identities(train_split.images[pick])
    assert np.mean(known == labels[pick]) >= 0.98
    np.testing.assert_array_equal(vectors[known >= 0], engine.identity_table[known[known >= 0]])
    strangers = load_split(shared_data, "query", engine.embed_size, progress=False).images
    assert np.mean(engine.known_identities(engine.embed_arrays(strangers)) >= 0) <= 0.02

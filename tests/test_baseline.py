"""Tests of the BoT-style discriminative baseline (reid_core/baseline.py).

All data is synthetic and tiny (6 identities of 16x8 images, widths (8, 16)) so the whole
file runs in seconds on a shared 2-core CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid_core.baseline import (CHECKPOINT_NAME, BaselineNet, BaselineTrainConfig,
                                CrossEntropyLabelSmooth, PKSampler, augment_batch,
                                batch_hard_triplet_loss, classify_images, embed_images,
                                train_baseline)

H, W = 16, 8
MODEL_CFG = {"widths": (8, 16), "blocks_per_stage": (1, 1), "stem_stride": 2}
PALETTE = np.array([[230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30],
                    [20, 20, 20], [235, 235, 235]], dtype=np.float64)


def make_identities(n_ids: int = 6, per_id: int = 8, seed: int = 0):
    """(N, 16, 8, 3) uint8 'people': identity i wears a top of colour i and trousers of
    colour (i + 2) % 6, with per-image brightness jitter and pixel noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n_ids):
        for _ in range(per_id):
            img = np.empty((H, W, 3))
            img[: H // 2] = PALETTE[i]
            img[H // 2:] = PALETTE[(i + 2) % n_ids]
            img *= rng.uniform(0.85, 1.15)
            img += rng.normal(0, 12, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(i)
    return np.stack(images), np.array(labels, dtype=np.int64)


def fast_cfg(**kw) -> BaselineTrainConfig:
    # A high lr and no step-down: the test only has a few dozen steps to converge.
    base = dict(steps=40, P=4, K=4, lr=1e-2, warmup_steps=5, milestones=(), checkpoint_every=1000,
                seed=0)
    base.update(kw)
    return BaselineTrainConfig(**base)


@pytest.fixture(autouse=True)
def _one_thread():
    # These ops are far too small to gain from threads, and on a CPU shared with a training
    # job a second OpenMP thread waiting on a descheduled sibling makes them several x slower.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------ model


def test_forward_modes_and_shapes():
    torch.manual_seed(0)
    model = BaselineNet(sample_size=(H, W), num_classes=6, **MODEL_CFG)
    assert model.config.feat_dim == 16 and model.final_spatial == (8, 4)
    assert not model.bottleneck.bias.requires_grad
    x = torch.rand(5, 3, H, W) * 2 - 1
    logits, f_t = model.train()(x)
    assert logits.shape == (5, 6) and f_t.shape == (5, 16)
    model.eval()
    f_i = model(x)
    assert f_i.shape == (5, 16)
    torch.testing.assert_close(model.embed(x), f_i)
    torch.testing.assert_close(model.classify(x), model.classifier(f_i))
    with pytest.raises(ValueError):
        BaselineNet(sample_size=(H, W), num_classes=6, widths=(8, 16), blocks_per_stage=(1, 1),
                    feat_dim=32)


def test_augment_batch_shapes_and_determinism():
    x = torch.rand(8, 3, H, W) * 2 - 1
    cfg = fast_cfg()
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    off = fast_cfg(flip=False, pad_crop=False, random_erasing=0.0)
    assert torch.equal(augment_batch(x, off, torch.Generator().manual_seed(1)), x)
    # Erasing with p=1 always blanks some pixels to 0 on every image.
    erase_only = fast_cfg(flip=False, pad_crop=False, random_erasing=1.0)
    e = augment_batch(x, erase_only, torch.Generator().manual_seed(2))
    assert ((e == 0).flatten(1).any(dim=1)).all()


# ----------------------------------------------------------------------------- losses


def test_triplet_loss_hand_computed_1d():
    # Points on a line: 0, 1 (identity 0) and 3, 6 (identity 1).
    # anchor 0: d_ap=1, d_an=3 -> 0;  anchor 1: d_ap=1, d_an=2 -> 0
    # anchor 3: d_ap=3, d_an=min(3,2)=2 -> 3-2+0.3=1.3;  anchor 6: d_ap=3, d_an=5 -> 0
    f = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet_loss(f, y, 0.3).item() == pytest.approx(1.3 / 4, abs=1e-5)
    # margin 1: anchor 1 -> 1-2+1=0, anchor 3 -> 2, others negative -> 0.5
    assert batch_hard_triplet_loss(f, y, 1.0).item() == pytest.approx(0.5, abs=1e-5)
    soft = np.mean([math.log1p(math.exp(v)) for v in (1 - 3, 1 - 2, 3 - 2, 3 - 5)])
    assert batch_hard_triplet_loss(f, y, None).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_loss_hand_computed_2d_euclidean_and_singleton():
    # (0,0),(3,4) identity 0 (distance 5, a 3-4-5 triangle); (0,1) identity 1 on its own.
    # anchor (0,0): d_ap=5, d_an=1 -> 4.3;  anchor (3,4): d_ap=5, d_an=sqrt(18) -> 5.3-sqrt(18)
    # anchor (0,1): only itself as positive (d_ap=0), d_an=1 -> 0
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    loss = batch_hard_triplet_loss(f, y, 0.3)
    expected = (4.3 + 5.3 - math.sqrt(18)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all()


def test_triplet_loss_degenerate_batches():
    # Duplicated points (zero distances) must still give finite gradients.
    f = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    batch_hard_triplet_loss(f, y).backward()
    assert torch.isfinite(f.grad).all()
    # No negatives at all: zero loss, still differentiable.
    g = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(g, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()


def test_label_smoothing_ce_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(5, 7) * 3
    y = torch.tensor([0, 3, 6, 2, 3])
    eps, C = 0.1, 7
    logp = torch.log_softmax(logits, dim=1)
    direct = torch.stack([-(1 - eps) * logp[i, y[i]] - eps / C * logp[i].sum()
                          for i in range(5)]).mean()
    torch.testing.assert_close(CrossEntropyLabelSmooth(eps)(logits, y), direct)
    torch.testing.assert_close(CrossEntropyLabelSmooth(0.0)(logits, y), F.cross_entropy(logits, y))


# ---------------------------------------------------------------------------- sampler


def test_pk_sampler_batch_composition():
    # identity 5 has a single image, identity 4 has three: both need replacement at K=4.
    labels = np.array([0] * 6 + [1] * 5 + [2] * 4 + [3] * 9 + [4] * 3 + [5] * 1)
    rng = np.random.default_rng(0)
    rng.shuffle(labels)
    P, K = 4, 4
    sampler = PKSampler(labels, P, K, rng=np.random.default_rng(123))
    seen = set()
    for _ in range(50):
        idx = sampler.sample()
        assert idx.shape == (P * K,) and idx.dtype == np.int64
        groups = labels[idx].reshape(P, K)
        assert (groups == groups[:, :1]).all()          # K contiguous images per identity
        assert len(set(groups[:, 0])) == P              # P distinct identities
        for p in range(P):
            block = idx[p * K:(p + 1) * K]
            if (labels == groups[p, 0]).sum() >= K:     # enough images: no repeats
                assert len(set(block)) == K
        seen.update(groups[:, 0].tolist())
    assert seen == set(range(6))
    a = [b for _, b in zip(range(3), PKSampler(labels, P, K, rng=7))]
    b = [b for _, b in zip(range(3), PKSampler(labels, P, K, rng=np.random.default_rng(7)))]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError):
        PKSampler(labels, P=7, K=2)


# ---------------------------------------------------------------------------- training


def test_training_separates_synthetic_identities(tmp_path):
    images, labels = make_identities()
    losses = []
    model = train_baseline(images, labels, MODEL_CFG, fast_cfg(), tmp_path, progress=False,
                           on_step=lambda step, logs: losses.append(logs["loss"]))
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert not model.training
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()

    pred = classify_images(model, images, batch_size=16)
    assert pred.shape == (len(images),) and pred.dtype == np.int64
    assert (pred == labels).mean() >= 0.95

    feats = embed_images(model, images, batch_size=16)
    assert feats.shape == (len(images), 16) and feats.dtype == np.float32
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    assert (labels[sim.argmax(axis=1)] == labels).mean() >= 0.95   # rank-1, cosine

    pred2, probs = classify_images(model, images, return_probs=True)
    assert np.array_equal(pred, pred2) and probs.shape == (len(images), 6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    images, labels = make_identities(per_id=3)
    model = train_baseline(images, labels, MODEL_CFG, fast_cfg(steps=3), tmp_path / "a",
                           progress=False)
    model.save_pretrained(tmp_path / "b")
    loaded = BaselineNet.from_pretrained(tmp_path / "b")
    assert not loaded.training
    assert not loaded.bottleneck.bias.requires_grad
    assert loaded.config.feat_dim == 16 and loaded.config.num_classes == 6
    assert np.array_equal(embed_images(model, images), embed_images(loaded, images))
    assert np.array_equal(classify_images(model, images), classify_images(loaded, images))
    for name, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name


class _Killed(Exception):
    pass


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path):
    images, labels = make_identities(per_id=4)
    steps = 8
    cfg = fast_cfg(steps=steps, checkpoint_every=steps // 2)
    full = train_baseline(images, labels, MODEL_CFG, cfg, tmp_path / "full", progress=False)

    def die(step, logs):
        if step == steps // 2:
            raise _Killed

    run_dir = tmp_path / "resumed"
    with pytest.raises(_Killed):
        train_baseline(images, labels, MODEL_CFG, cfg, run_dir, progress=False, on_step=die)
    ckpt = torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["step"] == steps // 2
    assert {"step", "model", "opt", "model_config", "train_config"} <= set(ckpt)
    # diffusers' private config keys hold a set whose order differs between processes.
    assert not any(k.startswith("_") for k in ckpt["model_config"])
    assert [p.name for p in run_dir.iterdir()] == [CHECKPOINT_NAME]   # no temp files left

    calls = []
    resumed = train_baseline(images, labels, MODEL_CFG, cfg, run_dir, resume=True, progress=False,
                             on_step=lambda step, logs: calls.append(step))
    assert calls == list(range(steps // 2 + 1, steps + 1))
    full_sd, res_sd = full.state_dict(), resumed.state_dict()
    assert full_sd.keys() == res_sd.keys()
    for name in full_sd:
        assert torch.equal(full_sd[name], res_sd[name]), name

    final = torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert final["step"] == steps
    # Resuming a finished run trains nothing and returns the same weights.
    n_calls = len(calls)
    again = train_baseline(images, labels, MODEL_CFG, cfg, run_dir, resume=True, progress=False,
                           on_step=lambda step, logs: calls.append(step))
    assert len(calls) == n_calls
    for name, t in again.state_dict().items():
        assert torch.equal(t, full_sd[name]), name


def test_resume_rejects_a_different_model(tmp_path):
    images, labels = make_identities(per_id=3)
    train_baseline(images, labels, MODEL_CFG, fast_cfg(steps=2), tmp_path, progress=False)
    other = dict(MODEL_CFG, widths=(8, 8))
    with pytest.raises(ValueError):
        train_baseline(images, labels, other, fast_cfg(steps=4), tmp_path, resume=True,
                       progress=False)


def test_lr_schedule():
    cfg = BaselineTrainConfig(steps=100, lr=1.0, warmup_steps=10, warmup_factor=0.1,
                              milestones=(0.5, 0.8), gamma=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(5) == pytest.approx(0.55)
    assert cfg.lr_at(10) == pytest.approx(1.0)
    assert cfg.lr_at(49) == pytest.approx(1.0)
    assert cfg.lr_at(50) == pytest.approx(0.1)
    assert cfg.lr_at(80) == pytest.approx(0.01)

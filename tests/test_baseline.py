"""The BoT-style baseline and the pieces every re-ID stage shares: network, losses, P x K
sampler, augmentations, and its training as a stage of the one loop.

All data is synthetic and tiny (6 identities of 16x8 images, widths (8, 16)) so the whole
file runs in seconds on a shared 2-core CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reid_core.config import get_preset
from reid_core.losses import batch_hard_triplet_loss, label_smoothed_ce, prototype_logits
from reid_core.models import BaselineNet
from reid_core.models.baseline_net import classify_images, embed_images
from reid_core.training.augment import Augment, PKSampler, augment
from reid_core.training.baseline import train_baseline
from reid_core.training.common import TrainData
from reid_core.training.loop import load_checkpoint, warmup_steps
from reid_core.weights import load_component

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


def fast_preset(**kw):
    # A high lr: the test only has a few dozen steps to converge.
    base = dict(image_size=(H, W), baseline_widths=(8, 16), baseline_steps=40, baseline_lr=1e-2,
                baseline_pad=1, checkpoint_every=1000)
    base.update(kw)
    return get_preset("tiny", **base)


def as_data(images, labels) -> TrainData:
    from reid_core.data import to_tensor
    return TrainData(to_tensor(images), images, labels, labels + 1, np.zeros_like(labels),
                     [f"{i}.jpg" for i in range(len(labels))])


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


def test_augment_shapes_and_determinism():
    x = torch.rand(8, 3, H, W) * 2 - 1
    cfg = Augment(flip=True, pad=2, random_erasing=0.5)
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, x)
    off = Augment(flip=False, pad=0, random_erasing=0.0)
    assert torch.equal(augment(x, off, torch.Generator().manual_seed(1)), x)
    # Erasing with p=1 always blanks some pixels to 0 on every image.
    e = augment(x, Augment(flip=False, random_erasing=1.0), torch.Generator().manual_seed(2))
    assert ((e == 0).flatten(1).any(dim=1)).all()
    # a pure flip mirrors exactly the images it picks
    f = augment(x, Augment(flip=True), torch.Generator().manual_seed(3))
    assert all(torch.equal(fi, xi) or torch.equal(fi, xi.flip(2)) for fi, xi in zip(f, x))
    # pad-and-crop shifts content by at most `pad` pixels, filling with 0
    p = augment(x, Augment(flip=False, pad=1), torch.Generator().manual_seed(4))
    shifted = [any(torch.equal(pi[:, max(0, dy):H + min(0, dy), max(0, dx):W + min(0, dx)],
                               xi[:, max(0, -dy):H + min(0, -dy), max(0, -dx):W + min(0, -dx)])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)) for pi, xi in zip(p, x)]
    assert all(shifted)


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
    torch.testing.assert_close(label_smoothed_ce(logits, y, eps), direct)
    torch.testing.assert_close(label_smoothed_ce(logits, y, 0.0), F.cross_entropy(logits, y))


def test_prototype_logits_are_scaled_cosines():
    f = torch.tensor([[2.0, 0.0], [0.0, -1.0]])
    table = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    expected = 10 * torch.tensor([[1.0, 0.0, 2 ** -0.5], [0.0, -1.0, -(2 ** -0.5)]])
    torch.testing.assert_close(prototype_logits(f, table, 10.0), expected)


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
    model = train_baseline(as_data(images, labels), fast_preset(), tmp_path, progress=False)
    history = load_checkpoint(tmp_path / "checkpoints" / "baseline.pt")["history"]
    assert len(history) == 40
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:5])
    assert not model.training
    assert (tmp_path / "baseline" / "config.json").exists()
    assert (tmp_path / "baseline" / "diffusion_pytorch_model.safetensors").exists()

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
    flipped = embed_images(model, images, flip_average=True)
    np.testing.assert_allclose(flipped, 0.5 * (feats + embed_images(model, images[:, :, ::-1].copy())),
                               rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    images, labels = make_identities(per_id=3)
    model = train_baseline(as_data(images, labels), fast_preset(baseline_steps=3), tmp_path, progress=False)
    loaded = load_component(tmp_path, "baseline")
    assert not loaded.training
    assert not loaded.bottleneck.bias.requires_grad
    assert loaded.config.feat_dim == 16 and loaded.config.num_classes == 6
    assert np.array_equal(embed_images(model, images), embed_images(loaded, images))
    assert np.array_equal(classify_images(model, images), classify_images(loaded, images))
    for name, t in model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name


class _Killed(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    images, labels = make_identities(per_id=4)
    data = as_data(images, labels)
    preset = fast_preset(baseline_steps=8, checkpoint_every=4)
    full = train_baseline(data, preset, tmp_path / "full", progress=False)

    real_sample, calls = PKSampler.sample, []

    def crash_at_step_6(self, rng=None):
        calls.append(1)
        if len(calls) == 7:
            raise _Killed
        return real_sample(self, rng)

    monkeypatch.setattr(PKSampler, "sample", crash_at_step_6)
    with pytest.raises(_Killed):
        train_baseline(data, preset, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(PKSampler, "sample", real_sample)
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "baseline.pt")
    assert ckpt["step"] == 4 and len(ckpt["history"]) == 4
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["baseline.pt"]  # no temp files
    resumed = train_baseline(data, preset, tmp_path / "resumed", resume=True, progress=False)
    for name, t in full.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    history = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "baseline.pt")["history"]
    assert history == load_checkpoint(tmp_path / "full" / "checkpoints" / "baseline.pt")["history"]
    again = train_baseline(data, preset, tmp_path / "resumed", resume=True, progress=False)
    for name, t in again.state_dict().items():  # resuming a finished run trains nothing
        assert torch.equal(t, full.state_dict()[name]), name


def test_init_must_match_the_architecture(tmp_path):
    images, labels = make_identities(per_id=3)
    data = as_data(images, labels)
    train_baseline(data, fast_preset(baseline_steps=2), tmp_path / "a", progress=False)
    started = train_baseline(data, fast_preset(baseline_steps=0), tmp_path / "b", init=tmp_path / "a",
                             progress=False)
    a = load_component(tmp_path / "a", "baseline")
    for name, t in a.state_dict().items():
        assert torch.equal(t, started.state_dict()[name]), name
    with pytest.raises(ValueError, match="widths"):
        train_baseline(data, fast_preset(baseline_widths=(8, 8)), tmp_path / "c", init=tmp_path / "a",
                       progress=False)


def test_lr_schedule():
    f = warmup_steps(100, 10, milestones=(0.5, 0.8), gamma=0.1, warmup_factor=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == pytest.approx(1.0)
    assert f(49) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.1)
    assert f(80) == pytest.approx(0.01)
    assert warmup_steps(100, 10, end=60, after=0.5)(60) == 0.5

"""Pose-conditioned generation on the tiny preset: every kind of pose, dropout, the library."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reid_core.engine import PoseNotFound, ReIDEngine
from reid_core.models import IdentityUNet, PoseEncoder
from reid_core.pose import flip_keypoints
from reid_core.training.pose import pose_keep_mask


@pytest.fixture(scope="module")
def engine(tiny_weights):
    return ReIDEngine.from_pretrained(tiny_weights, device="cpu")


def test_pose_stage_outputs(tiny_weights, engine):
    assert (tiny_weights / "pose_generator" / "config.json").exists()
    assert (tiny_weights / "pose_encoder" / "config.json").exists()
    lib = json.loads((tiny_weights / "pose_library.json").read_text())
    assert len(lib["poses"]) == len(lib["sources"]) >= 1
    assert engine.has_pose_model and len(engine.pose_library()) == len(lib["poses"])
    assert all(k.shape == (18, 3) for k in engine.pose_library())


def test_generate_with_every_kind_of_pose(engine, synthetic_market):
    by_index = engine.generate(1, seed=[0, 1], pose=0)
    by_keypoints = engine.generate(1, seed=[0, 1], pose=engine.pose_library()[0])
    for a, b in zip(by_index, by_keypoints):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    photo = Image.open(next((synthetic_market / "query").glob("*.jpg")))
    from_photo = engine.generate(1, seed=0, pose=photo)
    assert from_photo[0].size == by_index[0].size
    # the pose changes the picture: another pose, same identity and noise
    moved = engine.pose_library()[0].copy()
    moved[:, 0] = np.clip(moved[:, 0] + 0.25, 0, 1)
    other = engine.generate(1, seed=0, pose=moved)[0]
    assert not np.array_equal(np.asarray(other), np.asarray(by_index[0]))


def test_pose_errors_are_plain(engine):
    with pytest.raises(PoseNotFound, match="no person"):
        engine.generate(0, seed=0, pose=Image.new("RGB", (64, 128), (0, 0, 0)))
    with pytest.raises(ValueError, match="out of range"):
        engine.generate(0, seed=0, pose=99)
    with pytest.raises(ValueError, match="NaN"):
        engine.generate(0, seed=0, pose=np.full((18, 3), np.nan))


@pytest.mark.parametrize("levels", [(), (8, 16)])
def test_zero_initialised_guider_starts_from_the_identity_only_generator(levels):
    """Stem only (Pose2ID) or also the coarser levels (`level_channels`): at the start the
    guider changes nothing; its features reach the U-Net at every level they are given for."""
    torch.manual_seed(0)
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16, 32), layers_per_block=1, id_dim=4,
                        conditioning="film", cond_dim=16)
    torch.nn.init.normal_(unet.body.head.weight, std=0.1)
    enc = PoseEncoder(render_scale=2, out_channels=8, level_channels=levels)
    x, var, ident = torch.randn(2, 3, 16, 8), torch.rand(2), torch.randn(2, 4)
    feats = enc(torch.rand(2, 3, 32, 16) * 2 - 1)
    parts = feats if levels else {0: feats}
    assert {r: tuple(v.shape) for r, v in parts.items()} == \
        {0: (2, 8, 16, 8), **({1: (2, 8, 8, 4), 2: (2, 16, 4, 2)} if levels else {})}
    assert all(torch.count_nonzero(v) == 0 for v in parts.values())
    torch.testing.assert_close(unet(x, var, ident, extra_features=feats), unet(x, var, ident))
    for r in parts:  # each level's features move the output on their own
        one = {k: torch.randn_like(v) if k == r else v for k, v in parts.items()}
        assert (unet(x, var, ident, extra_features=one) - unet(x, var, ident)).abs().max() > 1e-4


def test_pose_dropout_rate_and_missing_poses():
    g = torch.Generator().manual_seed(0)
    has = torch.ones(20_000, dtype=torch.bool)
    keep = pose_keep_mask(has, 0.15, g)
    assert abs(1 - keep.float().mean().item() - 0.15) < 0.01
    has[::2] = False
    assert not pose_keep_mask(has, 0.0, g)[::2].any(), "images without a pose never get one"


def test_flip_swaps_left_and_right():
    k = np.zeros((18, 3), np.float32)
    k[2] = [0.2, 0.3, 1.0]   # right shoulder
    k[5] = [0.7, 0.3, 0.9]   # left shoulder
    f = flip_keypoints(k)
    np.testing.assert_allclose(f[5], [0.8, 0.3, 1.0])
    np.testing.assert_allclose(f[2], [0.3, 0.3, 0.9])
    np.testing.assert_allclose(flip_keypoints(f), k)


def test_pose_stage_goes_on_from_init_only_for_the_same_generator(tiny_weights):
    import torch

    from reid_core.training.pose import _same_generator
    from reid_core.weights import load_component
    gen = load_component(tiny_weights, "generator")
    assert _same_generator(tiny_weights, gen)          # pose-only run: keep the guider's tuning
    with torch.no_grad():
        next(gen.parameters()).add_(0.01)             # a retrained generator: start from it instead
    assert not _same_generator(tiny_weights, gen)
    assert not _same_generator(None, gen)


def test_a_guider_trained_on_the_frozen_generator_steers_it_without_a_second_copy(tiny_weights, synthetic_market,
                                                                                   tmp_path):
    """`pose_tune_generator` false: only the pose encoder learns (here at two levels); the run
    holds no generator copy, the export drops the old one, and the engine steers its own
    generator with the new guider."""
    import dataclasses
    import shutil

    from conftest import script_module
    from reid_core.config import Preset
    from reid_core.training import train
    from reid_core.weights import load_component
    preset = dataclasses.replace(Preset.load(tiny_weights / "preset.json"), pose_tune_generator=False, pose_steps=30,
                                 pose_levels=2)
    run = train(synthetic_market, preset, tmp_path / "run", stages=["pose"], init=tiny_weights, progress=False)
    assert (run / "pose_encoder" / "config.json").exists() and not (run / "pose_generator").exists()
    guider = load_component(run, "pose_encoder")
    assert len(guider.levels) == 1, "pose_levels 2: the stem and the next level"
    for out in (guider.out.weight, guider.levels[0][2].weight):
        assert torch.count_nonzero(out) > 0, "the guider started at zero and learned"
    with script_module("export_weights") as mod:
        w = tmp_path / "w"
        shutil.copytree(tiny_weights, w)
        mod.export(run, w, fp16=False, only=["pose_encoder"])
    assert not (w / "pose_generator").exists() and not Preset.load(w / "preset.json").pose_tune_generator
    before = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    after = ReIDEngine.from_pretrained(w, device="cpu")
    assert after.has_pose_model and after.pose_generator is after.generator
    plain = [np.asarray(im) for im in after.generate(1, seed=[0, 1])]
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(plain, before.generate(1, seed=[0, 1])))
    posed = [np.asarray(im) for im in after.generate(1, seed=[0, 1], pose=0)]
    assert any(not np.array_equal(a, b) for a, b in zip(plain, posed)), "the pose moves the picture"

"""The tiny preset end to end: training, determinism, save/load, resume after SIGKILL, the facade."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from reid_core.data import ImageError
from reid_core.engine import ReIDEngine, WeightsError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(tiny_weights):
    return ReIDEngine.from_pretrained(tiny_weights, device="cpu")


def test_every_stage_saved_and_losses_decrease(tiny_weights):
    for stage in ("generator", "prior", "img2id", "img2noise", "baseline", "pose_generator", "pose_encoder"):
        assert (tiny_weights / stage / "config.json").exists(), stage
        assert list((tiny_weights / stage).glob("*.safetensors")), stage
    log = json.loads((tiny_weights / "training_log.json").read_text())
    assert log["baseline"]["loss_last"] < 0.8 * np.mean(log["baseline"]["loss_first"][:10])
    # nothing is pickled: checkpoints load with weights_only=True
    state = torch.load(tiny_weights / "checkpoints" / "joint.pt", weights_only=True)
    # the joint stage's two phases: Img2ID's CE falls in the first, the diffusion loss in the second
    n_a = json.loads((tiny_weights / "preset.json").read_text())["img2id_steps"]
    hist = state["history"]
    assert np.mean(hist[n_a - 10:n_a]) < 0.6 * np.mean(hist[:10])
    assert np.mean(hist[-10:]) < np.mean(hist[n_a:n_a + 10])


def test_generation_is_bit_identical_across_runs_and_reloads(engine, tiny_weights):
    a = engine.generate(2, seed=[0, 1])
    b = engine.generate(2, seed=[0, 1])
    reloaded = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    c = reloaded.generate(2, seed=[0, 1])
    for x, y, z in zip(a, b, c):
        assert np.array_equal(np.asarray(x), np.asarray(y))
        assert np.array_equal(np.asarray(x), np.asarray(z))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(a[1])), "different seeds, same picture"
    assert a[0].size == (8, 16)  # PIL size is (W, H)


def test_generate_broadcasts_and_validates(engine):
    ids = engine.sample_identities(3, seed=0)
    assert ids.shape == (3, 32) and np.isfinite(ids).all()
    assert np.array_equal(ids, engine.sample_identities(3, seed=0))
    assert len(engine.generate(ids, seed=5)) == 3
    assert len(engine.generate(ids[0], seed=[1, 2, 3, 4])) == 4
    with pytest.raises(ValueError, match="broadcast"):
        engine.generate(ids, seed=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        engine.generate(10_000, seed=0)
    with pytest.raises(ValueError, match="size 32"):
        engine.generate(np.zeros(5), seed=0)
    with pytest.raises(ValueError, match="NaN"):
        engine.generate(np.full(32, np.nan), seed=0)


def test_sample_invert_roundtrip(engine):
    ident = engine.identity_table[1]
    img = engine.generate(ident, seed=3)[0]
    inv = engine.invert(img, method="ddim", identity=ident)
    assert inv.identity.shape == (32,) and inv.noise.shape == (3, 16, 8)
    # DDIM inversion of the generator's own sample (true identity) must rebuild it better than
    # another noise under the same identity does (10 steps of a model trained for seconds are a
    # rough inverse; exactness of the sampler math itself is tested in test_diffusion.py)
    from reid_core.engine import psnr
    unrelated = np.mean([psnr(np.asarray(img), np.asarray(engine.generate(ident, seed=s)[0])) for s in (4, 5, 6)])
    assert inv.psnr > unrelated + 1.5, (inv.psnr, unrelated)
    fast = engine.invert(img)
    assert np.isfinite(fast.psnr) and fast.reconstruction.size == img.size


def test_refined_inversion_rebuilds_closer_and_each_photo_on_its_own(engine, synthetic_market):
    """"refined": Img2Noise's noise after REFINE_STEPS gradient steps through the chain. It
    rebuilds each photo closer than Img2Noise alone, leaves the generator's weights untouched,
    and a photo's result does not depend on the batch it came in."""
    from reid_core.data import load_split
    from reid_core.engine import psnr
    imgs = load_split(synthetic_market, "query", engine.image_size, progress=False).images[:6]
    before = [p.detach().clone() for p in engine.generator.parameters()]
    plain, _, z0 = engine.reconstruct_arrays(imgs, "img2noise")
    refined, _, z1 = engine.reconstruct_arrays(imgs, "refined")
    gain = [psnr(a, r) - psnr(a, p) for a, p, r in zip(imgs, plain, refined)]
    assert min(gain) >= -0.05 and np.mean(gain) > 0.5, gain     # never worse (up to uint8 rounding), better on average
    assert not np.allclose(z0, z1)
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, engine.generator.parameters()))
    alone, _, z_alone = engine.reconstruct_arrays(imgs[2:3], "refined")
    np.testing.assert_allclose(z_alone[0], z1[2], atol=1e-4)
    inv = engine.invert(Image.fromarray(imgs[3]), method="refined")      # the apps' door, in inference mode
    assert inv.psnr == pytest.approx(psnr(imgs[3], refined[3]), abs=1e-6)
    with pytest.raises(ValueError, match="refined"):
        engine.invert(Image.fromarray(imgs[0]), method="magic")


def test_vary_moves_one_dimension(engine):
    assert engine.axes_are_dimensions and np.array_equal(engine.latent_axes, np.eye(32))
    imgs = engine.vary(0, 3, values=[-0.3, 0.0, 0.3], seed=1)
    assert len(imgs) == 3
    moved = engine.identity_table[0].copy()
    moved[3] = 0.3
    assert np.array_equal(np.asarray(imgs[2]), np.asarray(engine.generate(moved, seed=1)[0]))
    assert not np.array_equal(np.asarray(imgs[0]), np.asarray(imgs[2]))
    with pytest.raises(ValueError, match="dim"):
        engine.vary(0, 32, values=[0.0])


def _wide_identity_engine():
    """A 48-d identity (wider than the 32 sliders): the table's variance lies mostly in the first
    dimensions, while the generator reads mostly the last ones."""
    from reid_core.config import get_preset
    from reid_core.models import IdentityEncoder, IdentityPrior, IdentityUNet, NoiseEncoder
    p = get_preset("tiny", id_dim=48)
    torch.manual_seed(0)
    gen = IdentityUNet(sample_size=p.image_size, block_out_channels=p.channels, layers_per_block=1, id_dim=48,
                       num_identities=60, conditioning="film", cond_dim=8, table_init_std=0.3)
    with torch.no_grad():  # rows spread unevenly: a few directions carry most of the variance
        gen.identity_embedding.weight.mul_(torch.linspace(3, 0.1, 48))
        gen.identity_mlp[0].weight.mul_(torch.linspace(0.02, 3, 48))
        torch.nn.init.normal_(gen.body.head.weight, std=0.1)  # a picture that depends on its inputs
    return ReIDEngine(p, gen, IdentityPrior(id_dim=48, hidden_dim=8, num_layers=1),
                      IdentityEncoder(sample_size=p.image_size, block_out_channels=(8,), layers_per_block=1, id_dim=48),
                      NoiseEncoder(sample_size=p.image_size, block_out_channels=(8, 16), layers_per_block=1),
                      list(range(60)))


def test_a_wide_identity_is_shown_along_its_principal_axes():
    engine = _wide_identity_engine()
    axes = engine.latent_axes
    assert axes.shape == (32, 48) and not engine.axes_are_dimensions and engine.axes_kind == "principal axes"
    np.testing.assert_allclose(axes @ axes.T, np.eye(32), atol=1e-5)
    spread = engine.axis_spread
    assert np.all(np.diff(spread) <= 1e-5)  # largest variance first
    v = engine.identity_table[7]
    c = engine.to_axes(v)
    np.testing.assert_allclose(engine.from_axes(c, v), v, atol=1e-5)
    c2 = c.copy()
    c2[0] += 1.0
    moved = engine.from_axes(c2, v)
    np.testing.assert_allclose(moved - v, axes[0], atol=1e-5)  # exactly one axis moved, the rest kept
    assert len(engine.vary(v, 0, [c[0] - 1, c[0] + 1])) == 2


def test_sliders_follow_the_axes_the_generator_draws_and_ship_with_the_weights(tmp_path):
    from app import common
    from reid_core.evaluate import sensitive_axes
    from reid_core.weights import SLIDER_AXES_FILE, save_slider_axes
    engine = _wide_identity_engine()
    principal = engine.latent_axes
    base, z = engine.identity_table[[0, 20, 40]], engine.noise(7)  # not what the axes were found on

    def change(direction, read) -> float:
        still = read(engine.generate(base, noise=z))
        return float(np.abs(read(engine.generate(base + 0.3 * direction, noise=z)) - still).mean())

    def pixels(images):
        return np.stack([np.asarray(im, np.float32) for im in images])

    def img2id(images):
        return engine.embed_arrays(np.stack([np.asarray(im) for im in images]))

    for reader, read in (("pixels", pixels), ("img2id", img2id)):
        axes = sensitive_axes(engine, 32, bases=3, seed=1, reader=reader)
        assert axes.shape == (32, 48)
        np.testing.assert_allclose(axes @ axes.T, np.eye(32), atol=1e-5)
        # the table's widest direction is one the generator hardly reads; the first found axis moves
        # what the reader sees, and more than the last one
        assert change(axes[0], read) > 3 * change(principal[0], read) > 0, reader
        assert change(axes[0], read) > change(axes[31], read), reader
    with pytest.raises(ValueError, match="reader"):
        sensitive_axes(engine, 32, reader="judge")

    save_slider_axes(tmp_path, axes, engine.cache_key("slider_axes"), method="sensitive_axes")
    engine.weights_dir = tmp_path
    engine.reload_axes()
    np.testing.assert_array_equal(engine.latent_axes, axes)
    assert engine.axes_kind == "identity axes" and common.axes_title(engine) == "Identity axes"
    assert common.sensitivity_button(engine) == "Which identity axes matter?"
    save_slider_axes(tmp_path, axes, "other-weights")                       # made by other weights: not used
    engine.reload_axes()
    np.testing.assert_array_equal(engine.latent_axes, principal)
    (tmp_path / SLIDER_AXES_FILE).write_bytes(b"damaged")                    # unreadable: not used
    engine.reload_axes()
    assert engine.axes_kind == "principal axes"


def test_search_and_nearest_identities(engine, synthetic_market):
    gallery = engine.index_gallery(synthetic_market)
    assert len(gallery) == 4 * 2 * 2 + 1  # 4 test ids x 2 cams x 2 shots + the distractor; junk dropped
    assert 0 in gallery.pids and -1 not in gallery.pids
    query = Image.open(next((synthetic_market / "query").glob("*.jpg")))
    hits = engine.search(query, k=5)
    assert len(hits) == 5 and all(h.distance >= 0 for h in hits)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    near = engine.nearest_identities(engine.identity_table[4], k=3)
    assert near[0].index == 4 and near[0].distance == pytest.approx(0, abs=1e-5)
    again = engine.index_gallery(synthetic_market)  # served from the on-disk cache
    np.testing.assert_array_equal(again.features, gallery.features)


def test_search_merges_the_indexed_gallery_and_a_visitors_uploads(engine, synthetic_market):
    gallery = engine.index_gallery(synthetic_market)
    photos = sorted((synthetic_market / "query").glob("*.jpg"))[:3]
    uploads, problems = engine.gallery_from_photos([photos[0], b"not an image", photos[1]], ["a.jpg", "b.txt", "c.jpg"])
    assert len(uploads) == 2 and uploads.paths == ["a.jpg", "c.jpg"] and len(problems) == 1 and "b.txt" in problems[0]
    assert engine.gallery is gallery and len(gallery) == 17, "uploads never enter the indexed gallery"
    more, problems = engine.gallery_from_photos([photos[2]], ["d.jpg"], base=uploads, limit=2)
    assert more is uploads and "at most 2" in problems[0]
    # the query is the first upload itself: it must come first, at distance 0, from the uploads
    hits = engine.search(photos[0], k=len(gallery) + 2, uploads=uploads, with_images=True)
    assert len(hits) == len(gallery) + 2
    assert (hits[0].source, hits[0].path) == ("uploads", "a.jpg") and hits[0].distance == pytest.approx(0, abs=1e-4)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert {h.source for h in hits} == {"indexed", "uploads"}
    assert hits[0].image.size == (engine.image_size[1], engine.image_size[0])
    indexed = [h for h in hits if h.source == "indexed"]
    assert sorted(h.path for h in indexed) == sorted(gallery.paths)
    np.testing.assert_array_equal(np.asarray(indexed[0].image), engine.prepare(indexed[0].path))
    # a vector query gives the same ranking as the photo it came from
    v = engine.embed([photos[0]])[0]
    assert [h.path for h in engine.search(v, k=5, uploads=uploads)] == [h.path for h in hits[:5]]
    engine.gallery = None
    try:
        with pytest.raises(ValueError, match="no gallery"):
            engine.search(photos[0])
        assert engine.search(photos[0], k=1, uploads=uploads)[0].path == "a.jpg"
    finally:
        engine.gallery = gallery


def test_bad_inputs_to_the_facade(engine, tmp_path):
    with pytest.raises(ImageError):
        engine.invert(b"not a picture")
    with pytest.raises(ImageError, match="too small"):
        engine.embed([Image.new("RGB", (1, 1))])
    rgba = Image.new("RGBA", (64, 128), (10, 20, 30, 128))
    assert engine.embed([rgba, rgba.convert("L")]).shape == (2, 32)
    with pytest.raises(WeightsError, match="does not exist"):
        ReIDEngine.from_pretrained(tmp_path / "nothing-here")
    (tmp_path / "partial").mkdir()
    with pytest.raises(WeightsError, match="missing"):
        ReIDEngine.from_pretrained(tmp_path / "partial")


def _train_cmd(data, out, steps, extra=()):
    # the joint stage across both phases: Img2ID for 30 steps, then the generator
    return [sys.executable, "-m", "reid_core.training", "--data", str(data), "--preset", "tiny", "--out", str(out),
            "--stages", "joint", "--threads", "1", "--device", "cpu",
            "--set", "img2id_steps=30", f"gen_steps={steps - 30}", "checkpoint_every=20", *extra]


def test_resume_after_sigkill_matches_an_uninterrupted_run(synthetic_market, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(synthetic_market, straight, 80), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(synthetic_market, killed, 80), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "joint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run never wrote a checkpoint"
    step = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < step < 80, "killed too late to test a resume"
    subprocess.run(_train_cmd(synthetic_market, killed, 80, ["--resume"]), check=True, env=env, capture_output=True)
    for component in ("generator", "img2id"):
        a = load_file(straight / component / "diffusion_pytorch_model.safetensors")
        b = load_file(killed / component / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (component, k)


def test_bf16_sampling_stays_close_to_fp32(tiny_weights, engine):
    fast = ReIDEngine.from_pretrained(tiny_weights, device="cpu", precision="bf16")
    a = np.asarray(engine.generate(3, seed=2)[0]).astype(int)
    b = np.asarray(fast.generate(3, seed=2)[0]).astype(int)
    assert np.abs(a - b).mean() < 4  # grey levels out of 255
    np.testing.assert_array_equal(engine.embed([Image.fromarray(a.astype(np.uint8))]),
                                  fast.embed([Image.fromarray(a.astype(np.uint8))]))  # retrieval stays fp32
    with pytest.raises(ValueError, match="precision"):
        ReIDEngine.from_pretrained(tiny_weights, device="cpu", precision="fp8")


def test_the_package_exports_the_engine_and_stays_light():
    code = ("import sys, reid_core.config; light = 'torch' not in sys.modules; "
            "from reid_core import ReIDEngine; from reid_core.engine import ReIDEngine as E; "
            "print(light, ReIDEngine is E)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
    with pytest.raises(AttributeError, match="no attribute"):
        import reid_core
        reid_core.NotAThing


def test_swap_renders_an_identity_on_a_photos_noise(engine, synthetic_market):
    a, b = sorted((synthetic_market / "query").glob("*.jpg"))[:2]
    inv = engine.invert(b)
    noise = inv.noise
    by_row = np.asarray(engine.swap(3, b, keep=1.0))  # the paper's swap: the photo's whole noise
    np.testing.assert_array_equal(by_row, np.asarray(engine.generate(3, noise=noise)[0]))
    by_photo = np.asarray(engine.swap(a, inv, keep=1.0))
    np.testing.assert_array_equal(by_photo, np.asarray(engine.generate(engine.embed([a])[0], noise=noise)[0]))
    assert np.abs(by_row.astype(int) - by_photo.astype(int)).mean() > 0
    # by default half the noise's variance is the photo's, half a fresh seeded noise's
    blended = engine.swap_noise(noise, 0.5, seed=7)
    np.testing.assert_allclose(blended, np.sqrt(0.5) * (noise + engine.noise(7)[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(engine.swap(3, inv, seed=7)),
                                  np.asarray(engine.generate(3, noise=blended)[0]))
    np.testing.assert_array_equal(engine.swap_noise(noise[None], 0.0, seed=7)[0], engine.noise(7)[0])
    with pytest.raises(ValueError, match="keep"):
        engine.swap_noise(noise, 1.5)
    # generate's own guidance scale overrides the engine's for that call only
    assert engine.generator.supports_guidance
    stronger = np.asarray(engine.generate(3, noise=noise, guidance_scale=engine.guidance_scale + 3.0)[0])
    assert np.abs(stronger.astype(int) - by_row.astype(int)).mean() > 0
    np.testing.assert_array_equal(np.asarray(engine.generate(3, noise=noise)[0]), by_row)


def test_a_photo_of_a_trained_person_is_drawn_under_their_row(engine, synthetic_market):
    import dataclasses
    photos = sorted((synthetic_market / "bounding_box_train").glob("*.jpg"))[:12]
    crops = np.stack([engine.prepare(p, engine.embed_size) for p in photos])
    f = engine.embed_arrays(crops)
    cos = f @ (engine.identity_table / np.linalg.norm(engine.identity_table, axis=1, keepdims=True)).T
    shipped = engine.preset
    try:
        assert (engine.known_identities(f) == -1).all()       # the tiny preset recognises no one
        vectors, known = engine.photo_identities(crops)
        np.testing.assert_array_equal(vectors, f)
        cut = float(np.median(cos.max(1)))                      # half of the photos are "known"
        engine.preset = dataclasses.replace(shipped, known_identity_cos=cut)
        vectors, known = engine.photo_identities(crops)
        sure = cos.max(1) >= cut
        assert 0 < sure.sum() < len(photos)
        np.testing.assert_array_equal(known, np.where(sure, cos.argmax(1), -1))
        np.testing.assert_array_equal(vectors[sure], engine.identity_table[cos.argmax(1)[sure]])
        np.testing.assert_array_equal(vectors[~sure], f[~sure])
        one = int(np.flatnonzero(sure)[0])
        v, k = engine.photo_identity(photos[one])
        assert k == known[one]
        np.testing.assert_array_equal(v, vectors[one])
        # a swap given a photo draws that photo's person
        noise = engine.invert(photos[0]).noise
        np.testing.assert_array_equal(np.asarray(engine.swap(photos[one], engine.invert(photos[0]), keep=1.0)),
                                      np.asarray(engine.generate(int(k), noise=noise)[0]))
        with pytest.raises(ValueError, match="known_identity_cos"):
            dataclasses.replace(shipped, known_identity_cos=1.5)
    finally:
        engine.preset = shipped


def test_evaluate_reports_each_retrieval_variant(engine, synthetic_market):
    from reid_core.data import load_split
    from reid_core.evaluate import POST, evaluate, evaluate_variants
    from reid_core.metrics import evaluate_rank
    from reid_core.retrieval import k_reciprocal_rerank, nfc
    res = evaluate_variants(engine, synthetic_market, progress=False)
    assert list(res) == list(POST) and all(0 <= r["mAP"] <= 1 and r["id_density"] > 0 for r in res.values())
    assert res["raw"] == {**evaluate(engine, synthetic_market, progress=False), "seconds": res["raw"]["seconds"]}
    q = load_split(synthetic_market, "query", engine.embed_size, progress=False)
    g = load_split(synthetic_market, "gallery", engine.embed_size, progress=False)
    dist = k_reciprocal_rerank(nfc(engine.embed_arrays(q.images)), nfc(engine.embed_arrays(g.images)))
    assert res["nfc+rerank"]["mAP"] == pytest.approx(evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids)[1])
    assert res["nfc"]["id_density"] < res["raw"]["id_density"]      # NFC pulls identities together


def test_pose_views_regenerate_each_photo_in_each_library_pose(engine, synthetic_market):
    from reid_core.data import load_split
    q = load_split(synthetic_market, "query", engine.embed_size, progress=False)
    small = load_split(synthetic_market, "query", engine.image_size, progress=False)
    views = engine.pose_views(q.images[:3], small.images[:3], steps=3)
    assert views.shape == (3, len(engine.pose_library()), *engine.image_size, 3)
    ident = engine.embed_arrays(q.images[:3])
    noise = engine.img2noise(torch.from_numpy(small.images[:3]).permute(0, 3, 1, 2).float() / 127.5 - 1).detach()
    for j in (0, len(engine.pose_library()) - 1):
        want = np.stack([np.asarray(im) for im in engine.generate(ident, noise=noise.numpy(), pose=j, steps=3)])
        np.testing.assert_array_equal(views[:, j], want)
    assert np.abs(views[:, 0].astype(int) - views[:, -1].astype(int)).mean() > 0   # the pose matters


def test_identity_steering_draws_closer_to_the_identity_and_leaves_pose_views_alone(engine, synthetic_market):
    from reid_core.data import load_split
    q = load_split(synthetic_market, "query", engine.embed_size, progress=False)
    small = load_split(synthetic_market, "query", engine.image_size, progress=False)
    seeds = list(range(8))
    as_arrays = lambda ims: np.stack([np.asarray(im) for im in ims])  # noqa: E731
    plain, views = as_arrays(engine.generate(3, seed=seeds)), engine.pose_views(q.images[:2], small.images[:2], steps=3)
    assert engine.identity_steer == 0.0
    engine.identity_steer = 0.3
    try:
        steered = as_arrays(engine.generate(3, seed=seeds))
        steered_views = engine.pose_views(q.images[:2], small.images[:2], steps=3)
    finally:
        engine.identity_steer = 0.0
    assert np.array_equal(as_arrays(engine.generate(3, seed=seeds)), plain)
    assert np.abs(steered.astype(int) - plain).mean() > 1
    np.testing.assert_array_equal(steered_views, views)   # a search's views are never steered
    row = engine.identity_table[3] / np.linalg.norm(engine.identity_table[3])
    cos = lambda imgs: engine.embed_arrays(imgs) @ row  # noqa: E731
    assert cos(steered).mean() > cos(plain).mean()


def test_best_of_k_keeps_each_seeded_pictures_likeliest_candidate(engine):
    from reid_core.engine import candidate_seeds
    seeds, k = [0, 1, 2, 3], 3
    as_arrays = lambda ims: np.stack([np.asarray(im) for im in ims]).astype(int)  # noqa: E731
    assert engine.identity_candidates == 1
    picked = as_arrays(engine.generate(3, seed=seeds, candidates=k))
    drawn = [as_arrays(engine.generate(3, seed=seeds))] + [
        as_arrays(engine.generate(3, noise=engine.noise(candidate_seeds(seeds, j)))) for j in range(1, k)]
    drawn = np.stack(drawn)  # (k, len(seeds), H, W, 3)
    with torch.inference_mode():
        x = torch.from_numpy(drawn.reshape(-1, *drawn.shape[2:])).permute(0, 3, 1, 2).float() / 127.5 - 1
        ids = torch.from_numpy(engine.identity_table[[3]]).expand(len(x), -1)
        likeness = engine.identity_likeness(x, ids).view(k, len(seeds)).numpy()
    gaps = np.abs(drawn - picked[None]).mean(axis=(2, 3, 4))  # (k, len(seeds))
    which = gaps.argmin(0)
    assert (gaps.min(0) < 0.5).all(), "each picture shown is one of its candidates"
    assert (likeness[which, range(len(seeds))] >= likeness.max(0) - 1e-3).all(), "... the likeliest one"
    assert len(set(which)) > 1 or which[0] != 0, "the seed's own noise is not always kept"
    # a picture depends on its seed alone, not on the batch it was asked in; a given noise is drawn once
    np.testing.assert_allclose(as_arrays(engine.generate(3, seed=[2], candidates=k))[0], picked[2], atol=2)
    z = engine.noise(7)
    assert np.array_equal(as_arrays(engine.generate(3, noise=z, candidates=k)), as_arrays(engine.generate(3, noise=z)))
    engine.identity_candidates = k
    try:
        assert np.array_equal(as_arrays(engine.generate(3, seed=seeds)), picked)
    finally:
        engine.identity_candidates = 1
    with pytest.raises(ValueError):
        engine.generate(3, seed=0, candidates=0)
    # a swap below keep 1 draws its fresh share as many times; with the whole noise there is one picture
    noise = engine.noise([11, 12])
    ids = engine.identity_table[[3, 4]]
    one = as_arrays(engine.swap_arrays(ids, noise, 0.5, seed=7, candidates=1))
    many = as_arrays(engine.swap_arrays(ids, noise, 0.5, seed=7, candidates=k))
    alt = [as_arrays(engine.generate(ids, noise=engine._swap_noise(noise, 0.5, candidate_seeds([7, 8], j))))
           for j in range(1, k)]
    for i in range(2):
        assert min(np.abs(c[i] - many[i]).mean() for c in [one, *alt]) < 0.5
    assert np.array_equal(as_arrays(engine.swap_arrays(ids, noise, 1.0, candidates=k)),
                          as_arrays(engine.generate(ids, noise=noise)))
    assert candidate_seeds([5, 5, 6], 1) == candidate_seeds([5, 5, 6], 1)
    assert len({*candidate_seeds([5, 6], 1), *candidate_seeds([5, 6], 2), 5, 6}) == 6


def test_best_of_k_by_the_identitys_photos(tiny_weights, synthetic_market, tmp_path):
    """With the training photos' Img2ID vectors shipped, a training identity keeps the candidate
    whose nearest photos are most its own (a soft nearest-neighbour vote); any other identity the
    one nearest its vector. The vectors load only when made by these weights."""
    import shutil

    from reid_core.data import load_split
    from reid_core.engine import PHOTO_KERNEL, candidate_seeds
    from reid_core.weights import PHOTO_FEATURES_FILE, load_photo_features, save_photo_features
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    engine = ReIDEngine.from_pretrained(weights, device="cpu")
    assert engine.photo_bank is None  # none shipped: best of K by the rows
    train = load_split(synthetic_market, "train", engine.embed_size, progress=False)
    row_of = {int(p): k for k, p in enumerate(engine.identity_pids)}
    rows = np.array([row_of[int(p)] for p in train.pids])
    feats = engine.embed_arrays(train.images)
    save_photo_features(weights, feats, rows, engine.cache_key("photo_features"))
    assert load_photo_features(weights, "another", engine.preset.id_dim, engine.num_identities) is None
    assert load_photo_features(weights, engine.cache_key("photo_features"), engine.preset.id_dim + 1,
                               engine.num_identities) is None
    engine = ReIDEngine.from_pretrained(weights, device="cpu")
    bank, bank_rows = engine.photo_bank
    np.testing.assert_allclose(bank.numpy(), feats / np.linalg.norm(feats, axis=1, keepdims=True), atol=2e-3)  # fp16
    np.testing.assert_array_equal(bank_rows.numpy(), rows)

    assert list(engine.table_rows(engine.identity_table[[3, 0, 3]])) == [3, 0, 3]
    assert list(engine.table_rows(engine.identity_table[[3]] + 1e-3)) == [-1]
    seeds, k = [0, 1, 2, 3], 3
    as_arrays = lambda ims: np.stack([np.asarray(im) for im in ims]).astype(int)  # noqa: E731
    picked = as_arrays(engine.generate(3, seed=seeds, candidates=k))
    drawn = np.stack([as_arrays(engine.generate(3, noise=engine.noise(seeds if j == 0 else candidate_seeds(seeds, j))))
                      for j in range(k)])
    f = engine.embed_arrays(drawn.reshape(-1, *drawn.shape[2:]).astype(np.uint8))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    logits = PHOTO_KERNEL * f @ bank.numpy().T
    lse = lambda a: np.log(np.exp(a - a.max(1, keepdims=True)).sum(1)) + a.max(1)  # noqa: E731
    vote = (lse(np.where(rows[None] == 3, logits, -np.inf)) - lse(logits)).reshape(k, len(seeds))
    gaps = np.abs(drawn - picked[None]).mean(axis=(2, 3, 4))
    assert (gaps.min(0) < 0.5).all()
    assert (vote[gaps.argmin(0), range(len(seeds))] >= vote.max(0) - 1e-2).all(), "the photos' likeliest candidate"
    with torch.inference_mode():
        x = torch.from_numpy(drawn[:, 0]).permute(0, 3, 1, 2).float() / 127.5 - 1
        ids = torch.from_numpy(engine.identity_table[[3]]).expand(k, -1)
        np.testing.assert_allclose(engine.identity_likeness(x, ids, np.full(k, 3)).numpy(), vote[:, 0], atol=1e-2)
        # an identity that is no row is judged by its vector, as without photos
        np.testing.assert_allclose(engine.identity_likeness(x, ids, np.full(k, -1)).numpy(),
                                   engine.identity_likeness(x, ids).numpy(), atol=1e-6)
    (weights / PHOTO_FEATURES_FILE).write_bytes(b"not safetensors")
    assert ReIDEngine.from_pretrained(weights, device="cpu").photo_bank is None


def test_pose_centralization_is_chosen_on_training_identities(engine, synthetic_market):
    from reid_core.data import load_split
    from reid_core.evaluate import (CENTRALIZE_ETA, VIEW_STEPS, choose_centralization, evaluate_variants,
                                    parse_post)
    from reid_core.metrics import evaluate_rank, pairwise_distance
    from reid_core.retrieval import pose_centralize
    chosen = choose_centralization(engine, synthetic_market, ms=(1, 2), progress=False)
    assert set(chosen["by_m"]) == {1, 2} and all(c["eta"] in CENTRALIZE_ETA for c in chosen["by_m"].values())
    assert chosen["identities"] == 4          # half the 8 training identities; no test image is read
    res = evaluate_variants(engine, synthetic_market, posts=("raw", "pose2", "pose2+nfc+rerank"), progress=False,
                            centralization=chosen)
    eta = chosen["by_m"][2]["eta"]
    assert res["pose2"]["eta"] == eta
    # pose2 by hand: Img2ID of each photo's first two pose views, averaged into its feature
    feats = []
    for split in ("query", "gallery"):
        crops = load_split(synthetic_market, split, engine.embed_size, progress=False)
        small = load_split(synthetic_market, split, engine.image_size, progress=False)
        views = engine.pose_views(crops.images, small.images, poses=[0, 1], steps=VIEW_STEPS)
        vf = engine.embed_arrays(views.reshape(-1, *views.shape[2:])).reshape(len(views), 2, -1)
        feats.append((pose_centralize(engine.embed_arrays(crops.images), vf, eta), crops))
    (qf, q), (gf, g) = feats
    mAP = evaluate_rank(pairwise_distance(qf, gf), q.pids, g.pids, q.camids, g.camids)[1]
    assert res["pose2"]["mAP"] == pytest.approx(mAP)
    with pytest.raises(ValueError, match="unknown retrieval variant"):
        parse_post("pose+nfc")


def test_search_with_centralization_ranks_by_centralized_features(tiny_weights, synthetic_market, tmp_path):
    import shutil
    from reid_core.evaluate import main as evaluate_main
    from reid_core.metrics import pairwise_distance
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    evaluate_main(["--weights", str(w), "--data", str(synthetic_market), "--choose-centralization"])
    engine = ReIDEngine.from_pretrained(w, device="cpu")
    c = engine.centralization
    assert c["poses"] in (1, 2, 4, 8) and c["steps"] == 5 and "training" in c["chosen_on"]
    gallery = engine.index_gallery(synthetic_market, use_cache=False)
    photo = sorted((synthetic_market / "query").glob("*.jpg"))[0]
    with pytest.raises(ValueError, match="query photo"):
        engine.search(engine.embed([photo])[0], centralize=True)
    hits = engine.search(photo, k=5, centralize=True)
    crops = np.stack([engine.prepare(p, engine.embed_size) for p in gallery.paths])
    small = np.stack([engine.prepare(p) for p in gallery.paths])
    np.testing.assert_allclose(gallery.centralized, engine.centralize(crops, small), atol=1e-5)
    qc = engine.centralize(engine.prepare(photo, engine.embed_size)[None], engine.prepare(photo)[None])
    order = np.argsort(pairwise_distance(qc, gallery.centralized)[0], kind="stable")[:5]
    assert [h.path for h in hits] == [gallery.paths[i] for i in order]
    raw = pairwise_distance(engine.embed([photo]), gallery.features)[0]   # shown distances stay raw
    assert [h.distance for h in hits] == pytest.approx([raw[i] for i in order], abs=1e-5)
    uploads, _ = engine.gallery_from_photos([photo], ["mine.jpg"])
    assert len(engine.search(photo, k=3, uploads=uploads, centralize=True)) == 3
    assert uploads.centralized.shape == (1, engine.preset.id_dim)     # a visitor's photos are redrawn too


def test_a_calibrated_verdict_travels_with_the_weights(tiny_weights, synthetic_market, tmp_path):
    import shutil
    from reid_core.evaluate import main as evaluate_main
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    evaluate_main(["--weights", str(w), "--data", str(synthetic_market), "--calibrate",
                   "--json", str(tmp_path / "m.json")])
    scores = json.loads((tmp_path / "m.json").read_text())["verdict"]
    assert 0 <= scores["roc_auc"] <= 1 and scores["pairs"] > 0
    engine = ReIDEngine.from_pretrained(w, device="cpu")
    assert engine.verdict is not None
    engine.index_gallery(synthetic_market)
    hits = engine.search(sorted((synthetic_market / "query").glob("*.jpg"))[0], k=5)
    probs = [h.same_probability for h in hits]
    assert all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True)   # nearer: likelier
    assert ReIDEngine.from_pretrained(tiny_weights, device="cpu").verdict is None


def test_search_can_leave_out_the_querys_camera(engine, synthetic_market):
    gallery = engine.index_gallery(synthetic_market)
    query = sorted((synthetic_market / "query").glob("*.jpg"))[0]
    cam = int(query.name.split("_c")[1][0]) - 1
    hits = engine.search(query, k=len(gallery), skip_camera=cam)
    assert hits and all(h.camid != cam for h in hits)
    assert len(hits) == int((gallery.camids != cam).sum())
    assert len(engine.search(query, k=len(gallery))) == len(gallery)


def test_the_shipped_weights_load_and_generate():
    """The README's first command serves weights/: they must load with this code, strictly."""
    engine = ReIDEngine.from_pretrained(ROOT / "weights", device="cpu")
    img = engine.generate(0, seed=0)[0]
    assert img.size == (engine.image_size[1], engine.image_size[0]) and np.asarray(img).std() > 5
    assert engine.baseline is not None and engine.pose_library() is not None


def test_new_identities_live_where_the_generator_learned_them(engine):
    new = engine.sample_identities(16, seed=3)
    rows = np.linalg.norm(engine.identity_table, axis=1)
    assert engine.generator.config.normalize_table and np.allclose(rows, 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1, atol=1e-5)   # on the table's sphere
    assert np.array_equal(new, engine.sample_identities(16, seed=3))          # seeded

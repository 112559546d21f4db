"""reid_core.explore: images, noise display, dimension sensitivity, gallery ranking, identity map."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from reid_core.explore import Explorer, IdentityMap, Memo, grid, noise_to_image, upscale


@pytest.fixture(scope="module")
def engine(tiny_weights):
    from reid_core.engine import ReIDEngine
    return ReIDEngine.from_pretrained(tiny_weights, device="cpu")


# ---------------------------------------------------------------- upscale / grid
def test_upscale_is_nearest_neighbour():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    big = upscale(arr, 4)
    assert big.size == (12, 8)
    out = np.asarray(big)
    assert np.array_equal(out[::4, ::4], arr)              # every block holds its source pixel
    assert np.array_equal(out[3::4, 3::4], arr)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 6  # no blended colours
    same = upscale(Image.fromarray(arr), 1)
    assert same.size == (3, 2) and np.array_equal(np.asarray(same), arr)
    with pytest.raises(ValueError):
        upscale(arr, 0)


def test_grid_layout_and_padding():
    imgs = [Image.new("RGB", (8, 16), (i * 40, 0, 0)) for i in range(5)]
    sheet = grid(imgs, cols=3, scale=2, pad=4)
    # 3 columns of 16 px, 2 rows of 32 px, 4 px around and between
    assert sheet.size == (3 * 16 + 4 * 4, 2 * 32 + 3 * 4)
    a = np.asarray(sheet)
    assert tuple(a[0, 0]) == (255, 255, 255)
    assert tuple(a[4, 4]) == (0, 0, 0)                     # first image's top-left pixel
    assert tuple(a[4 + 32 + 4, 4 + 16 + 4]) == (160, 0, 0)  # second row, second column: image 4
    assert grid(imgs, cols=10, scale=1, pad=0).size == (40, 16)  # cols clamp to the image count
    mixed = grid([Image.new("RGB", (4, 4)), Image.new("RGB", (8, 2))], cols=2, scale=1, pad=0)
    assert mixed.size == (16, 4)
    with pytest.raises(ValueError):
        grid([])


# ---------------------------------------------------------------- noise display
def test_noise_to_image_clips_and_rescales():
    z = np.zeros((3, 4, 2), np.float32)
    z[0, 0, 0], z[1, 0, 0], z[2, 0, 0] = -2.5, 2.5, 0.0
    z[0, 1, 0], z[1, 1, 0] = -9.0, 9.0                    # beyond the clip
    z[2, 1, 0] = np.nan
    img = noise_to_image(z)
    assert img.size == (2, 4) and img.mode == "RGB"
    a = np.asarray(img)
    assert tuple(a[0, 0]) == (0, 255, 128)
    assert tuple(a[1, 0][:2]) == (0, 255) and a[1, 0][2] == 128   # clipped; NaN shown as 0
    assert noise_to_image(z[None]).size == (2, 4)           # a batch of one
    with pytest.raises(ValueError):
        noise_to_image(np.zeros((4, 2)))


def test_noise_to_image_of_a_real_inversion(engine, synthetic_market):
    photo = sorted((synthetic_market / "query").glob("*.jpg"))[0]
    inv = engine.invert(photo)
    img = noise_to_image(inv.noise)
    h, w = engine.image_size
    assert img.size == (w, h)


# ---------------------------------------------------------------- sensitivity
def test_dimension_sensitivity_matches_vary(engine):
    ident = engine.identity_table[1]
    sens = engine.explorer.sensitivity(ident, seed=3, delta=0.3)
    assert sens.shape == (engine.preset.id_dim,) and np.isfinite(sens).all() and (sens >= 0).all()
    assert sens.max() > 0
    base = np.asarray(engine.generate(ident, seed=3)[0], np.float32)
    for d in (0, int(np.argmax(sens))):
        moved = engine.vary(ident, d, [ident[d] + 0.3, ident[d] - 0.3], seed=3)
        expect = np.mean([np.abs(np.asarray(m, np.float32) - base).mean() for m in moved])
        assert sens[d] == pytest.approx(expect, abs=0.05)   # batches differ: a rare 1-level rounding flip


def test_dimension_sensitivity_is_cached(engine, monkeypatch):
    ex = Explorer(engine)  # a fresh memory: nothing remembered yet
    ident = engine.identity_table[2]
    first = ex.sensitivity(ident, seed=0)
    calls = []
    original = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = ex.sensitivity(ident, seed=0)
    assert calls == [] and np.array_equal(first, again)
    again[0] = -1                                            # callers get copies
    assert ex.sensitivity(ident, seed=0)[0] == first[0]
    assert ex.cached_sensitivity(ident, seed=1) is None
    fractions = []
    ex.sensitivity(ident, seed=1, progress=fractions.append, batch=20)  # another noise: computed
    assert len(calls) == 4 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert np.array_equal(ex.cached_sensitivity(ident, seed=1), ex.sensitivity(ident, seed=1))
    assert np.array_equal(ex.sensitivity(2, seed=0), first)  # an index works too
    with pytest.raises(ValueError):
        ex.sensitivity(engine.identity_table[:2])


def test_engine_has_one_explorer_and_it_remembers_generations(engine, monkeypatch):
    assert engine.explorer is engine.explorer
    ex = Explorer(engine)
    calls = []
    original = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    a = ex.generate(3, [0, 1])
    b = ex.generate(engine.identity_table[3], [0, 1])       # the same identity as a vector: remembered
    assert len(calls) == 1 and len(a) == 2
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    ex.generate(3, [1, 0])                                   # other seeds: generated
    assert len(calls) == 2


def test_memo_keeps_the_most_recent_and_computes_once_under_concurrency():
    m = Memo(2)
    m.put("a", 1)
    m.put("b", 2)
    assert m.get("a") == 1                                   # "a" is now the most recent
    m.put("c", 3)
    assert "b" not in m and m.get("a") == 1 and m.get("c") == 3 and len(m) == 2
    runs, gate = [], threading.Event()

    def slow():
        runs.append(1)
        gate.wait(5)
        return "value"
    results = []
    threads = [threading.Thread(target=lambda: results.append(m.get_or_compute("k", slow))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert runs == [1] and results == ["value"] * 4


# ---------------------------------------------------------------- identity map
class _TableOnly:
    """Stands in for an engine: the explorer's identity map reads only its identity table."""

    def __init__(self, table):
        self.identity_table = table
        self.num_identities = len(table)
        self.weights_dir = None          # nothing shipped: the map is fitted


def _clustered(k_per=15, clusters=3, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (clusters, dim))
    table = np.concatenate([c + rng.normal(0, 0.1, (k_per, dim)) for c in centres]).astype(np.float32)
    return table, np.repeat(np.arange(clusters), k_per), centres


def test_identity_map_pca_for_small_tables(engine):
    m = IdentityMap(engine.identity_table) if engine.num_identities < IdentityMap.min_umap_points else \
        IdentityMap(engine.identity_table, method="pca")
    assert m.method == "pca"
    assert m.coords.shape == (engine.num_identities, 2)
    np.testing.assert_allclose(m.transform(engine.identity_table), m.coords, atol=1e-5)
    assert m.transform(engine.identity_table[0]).shape == (1, 2)
    with pytest.raises(ValueError):
        m.transform(np.zeros((1, 5)))


@pytest.mark.timeout(300)
def test_identity_map_umap_places_points_near_their_cluster():
    table, labels, centres = _clustered()
    fake_engine = _TableOnly(table)
    ex = Explorer(fake_engine)
    assert not ex.map_ready()
    thread = ex.warm_up_map(n_neighbors=10)
    thread.join(timeout=280)
    assert ex.map_ready()
    m = ex.identity_map()
    assert m.method == "umap" and m.coords.shape == (len(table), 2)
    assert ex.identity_map() is m                              # fitted once
    # a new vector close to cluster c lands nearest to points of cluster c
    rng = np.random.default_rng(1)
    new = (centres + rng.normal(0, 0.1, centres.shape)).astype(np.float32)
    xy = m.transform(new)
    assert xy.shape == (3, 2)
    for c in range(3):
        nearest = np.argsort(np.linalg.norm(m.coords - xy[c], axis=1))[:5]
        assert (labels[nearest] == c).all()
    np.testing.assert_allclose(m.transform(new), xy)           # deterministic (seeded)


def test_identity_map_fits_once_under_concurrency(monkeypatch):
    fits = []
    original = IdentityMap.__init__

    def counting(self, table, **kw):
        fits.append(1)
        original(self, table, method="pca")
    monkeypatch.setattr(IdentityMap, "__init__", counting)
    fake_engine = _TableOnly(_clustered(k_per=4)[0])
    ex = Explorer(fake_engine)
    results = []
    threads = [threading.Thread(target=lambda: results.append(ex.identity_map())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fits) == 1 and all(r is results[0] for r in results)


def test_identity_map_rejects_bad_tables():
    with pytest.raises(ValueError):
        IdentityMap(np.zeros((1, 32)))
    with pytest.raises(ValueError):
        IdentityMap(np.zeros((5, 32)), method="tsne")


def test_portraits_shipped_with_the_weights_spare_the_generator(tiny_weights, tmp_path, monkeypatch):
    import shutil

    from reid_core import ReIDEngine
    from reid_core.weights import PORTRAITS_FILE, load_portraits, save_portraits
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    engine = ReIDEngine.from_pretrained(folder, device="cpu")
    made = engine.explorer.all_portraits(seed=0, batch=3)
    assert made.shape == (engine.num_identities, *engine.image_size, 3)
    key = engine.cache_key("portraits")
    save_portraits(folder, made, key, seed=0)
    assert np.array_equal(load_portraits(folder, key, 0), made)      # lossless
    assert load_portraits(folder, "other-weights", 0) is None and load_portraits(folder, key, 1) is None
    calls = []
    original = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    fresh = Explorer(engine)
    assert fresh.warm_portraits(seed=0) == "weights" and not calls
    shown = fresh.portrait_images(range(engine.num_identities), seed=0)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(shown, made)) and not calls
    (folder / PORTRAITS_FILE).write_bytes(b"damaged")                                # unreadable: not used
    assert load_portraits(folder, key, 0) is None


def test_precomputed_parts_are_keyed_by_the_networks_they_are_made_from(tiny_weights):
    """A new Img2Noise keeps every shipped part; a new judge only the slider ranking; a new
    Img2ID the slider axes and ranking; a new generator all of them. The export script names
    the same parts to remake."""
    import torch
    from conftest import script_module

    from reid_core import ReIDEngine
    from reid_core.engine import PRECOMPUTED_FROM

    def keys(change=None, preset=None):
        engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
        if change:
            with torch.no_grad():
                next(getattr(engine, change).parameters()).add_(0.5)
        for field, value in (preset or {}).items():
            setattr(engine.preset, field, value)
        return engine.fingerprint, {part: engine.cache_key(part) for part in PRECOMPUTED_FROM}

    full, parts = keys()
    assert len(set(parts.values())) == 4 and full not in parts.values()   # map; portraits; axes, photos; ranking
    expect = {"img2noise": set(), "prior": set(), "baseline": {"slider_ranking"},
              "img2id": {"photo_features", "portraits", "slider_axes", "slider_ranking"}, "generator": set(PRECOMPUTED_FROM),
              "pose_encoder": set()}
    for change, stale in expect.items():
        f, p = keys(change)
        assert {part for part in parts if p[part] != parts[part]} == stale, change
        # the full key (gallery features) leaves the judge and the pose guider out
        assert (f != full) == (change not in ("baseline", "pose_encoder")), change
    f, p = keys(preset={"img2noise_steps": 1, "noise_refine_channels": 8})  # another Img2Noise recipe
    assert p == parts and f != full
    f, p = keys(preset={"pose_steps": 1, "pose_levels": 2})  # another pose guider recipe
    assert p == parts and f == full
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")  # centralized views are the guider's
    views = engine.fingerprint_of("prior", "img2id", "img2noise", "pose_encoder")
    with torch.no_grad():
        next(engine.pose_encoder.parameters()).add_(0.5)
    engine._fingerprints.clear()
    assert engine.fingerprint_of("prior", "img2id", "img2noise", "pose_encoder") != views
    assert keys(preset={"sample_steps": 3})[1]["portraits"] != parts["portraits"]
    f, p = keys(preset={"identity_candidates": 3})  # best-of-K drawing: only what is drawn by seed
    assert f != full and {part for part in parts if p[part] != parts[part]} == {"portraits"}
    with pytest.raises(ValueError, match="keyed"):
        ReIDEngine.from_pretrained(tiny_weights, device="cpu").fingerprint_of("pose")

    with script_module("export_weights") as mod:
        assert mod.stale_precomputed(["img2noise", "uncertainty"]) == []
        assert mod.stale_precomputed(["baseline"]) == ["slider_ranking"]
        assert mod.stale_precomputed(["img2id"]) == ["photo_features", "portraits", "slider_axes", "slider_ranking"]
        assert mod.stale_precomputed(["generator"]) == list(mod.PRECOMPUTED)


def test_identity_map_fitted_at_export_is_used_as_shipped(tiny_weights, tmp_path, monkeypatch):
    import shutil

    from reid_core import ReIDEngine
    from reid_core.weights import save_identity_map
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    engine = ReIDEngine.from_pretrained(folder, device="cpu")
    coords = np.random.default_rng(0).normal(size=(engine.num_identities, 2)).astype(np.float32)
    save_identity_map(folder, "umap", coords, engine.cache_key("identity_map"))
    monkeypatch.setattr(IdentityMap, "min_umap_points", 10**9)  # a fit now would be PCA: it must not happen
    m = Explorer(engine).identity_map()
    assert m.method == "umap" and np.allclose(m.coords, coords, atol=1e-4)
    # a training identity's own vector lands on its own point
    np.testing.assert_allclose(m.transform(engine.identity_table[3])[0], m.coords[3], atol=1e-3)
    save_identity_map(folder, "umap", coords, "other-weights")                      # not these weights: refit
    assert Explorer(engine).identity_map().method == "pca"


def test_axis_identity_change_and_the_slider_order_it_ships(tiny_weights, tmp_path):
    import shutil

    from app import common
    from reid_core import ReIDEngine
    from reid_core.evaluate import axis_identity_change
    from reid_core.weights import SLIDER_RANKING_FILE, save_keyed_json
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    engine = ReIDEngine.from_pretrained(folder, device="cpu")
    k = len(engine.latent_axes)
    still = axis_identity_change(engine, engine.baseline, bases=4, sds=0.0)
    assert still["rate"] == [0.0] * k and still["changed_axes"] == 0      # no move: nobody changes
    r = axis_identity_change(engine, engine.baseline, bases=4, sds=6.0)
    rate = np.asarray(r["rate"])
    assert rate.shape == (k,) and ((rate >= 0) & (rate <= 1)).all() and rate.max() > 0  # a big move changes someone
    assert sorted(r["order"]) == list(range(k)) and list(np.diff(rate[r["order"]]) <= 0) == [True] * (k - 1)
    assert r["changed_axes"] == int((rate >= 0.5).sum())
    assert Explorer(engine).slider_order() == (list(range(k)), None)      # nothing shipped: natural order
    save_keyed_json(folder, SLIDER_RANKING_FILE, engine.cache_key("slider_ranking"), **r)
    assert Explorer(engine).slider_order() == (r["order"], r["rate"])
    order, labels, note = common.slider_layout(engine)
    assert order == r["order"] and "changes who" in labels[0] and "Fig. 11" in note
    save_keyed_json(folder, SLIDER_RANKING_FILE, "other-weights", **r)     # not these weights: ignored
    assert Explorer(engine).slider_order() == (list(range(k)), None)


def test_slider_ranges_are_round_numbers_holding_every_trained_identity(engine):
    from reid_core.explore import slider_ranges
    r = slider_ranges(engine)
    coords = engine.identity_table @ engine.latent_axes.T
    assert r.shape == (len(engine.latent_axes), 2) and (r[:, 0] <= coords.min(0)).all() and (r[:, 1] >= coords.max(0)).all()
    assert all(len(repr(float(x)).split(".")[-1]) <= 3 for x in r.ravel()), r   # shown on the sliders as typed

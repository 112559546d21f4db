"""The Gradio app's handlers called directly (no server, no browser), bad uploads included."""
from __future__ import annotations

import io
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from app import common
from app.common import PHOTO, PRIOR, TRAINING


@pytest.fixture(scope="module")
def engine(tiny_weights):
    from reid_core.engine import ReIDEngine
    return ReIDEngine.from_pretrained(tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def app(engine, synthetic_market):
    from app.gradio_app import ReIDApp
    return ReIDApp(engine, gallery=str(synthetic_market))


@pytest.fixture(scope="module")
def photo(synthetic_market) -> str:
    return str(sorted((synthetic_market / "query").glob("*.jpg"))[0])


def make_uploads(folder: Path, source: str) -> dict[str, Path]:
    """Awkward uploads: the bad ones must give a plain message, the odd ones must work."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["not_image"] = folder / "notes.jpg"
    out["not_image"].write_text("this is not a picture")
    data = Path(source).read_bytes()
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["tiny"] = folder / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(out["tiny"])
    rgba = Image.open(source).convert("RGBA")
    rgba.putalpha(128)
    out["rgba"] = folder / "rgba.png"
    rgba.save(out["rgba"])
    out["gray"] = folder / "gray.png"
    Image.open(source).convert("L").save(out["gray"])
    out["huge"] = folder / "huge.jpg"   # 10000 x 10000 (100 Mpixels): refused, before decoding
    Image.new("RGB", (10000, 10000), (120, 130, 140)).save(out["huge"], quality=30)
    return out


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, photo):
    return make_uploads(tmp_path_factory.mktemp("uploads"), photo)


def _caption_count(caption: str) -> int:
    return int(caption.split("**")[1].split()[0])


# ---------------------------------------------------------------- generate
def test_generate_from_every_identity_source(app, engine, photo):
    h, w = engine.image_size
    k = app.scale
    img, cap = app.generate(TRAINING, 3, 0, None, "0-3")
    assert isinstance(img, Image.Image) and _caption_count(cap) == 4 and "#3" in cap
    assert img.size == (4 * w * k + 5 * 4, h * k + 2 * 4)   # 4 upscaled images in one row
    img2, cap2 = app.generate(PRIOR, 0, 7, None, "1, 5, 9")
    assert _caption_count(cap2) == 3 and "prior (seed 7)" in cap2
    img3, cap3 = app.generate(PHOTO, 0, 0, photo, "0", steps=5)
    assert "uploaded photo" in cap3 and "5 DDIM steps" in cap3
    # same inputs, same pictures
    assert np.array_equal(np.asarray(app.generate(TRAINING, 3, 0, None, "0-3")[0]), np.asarray(img))


def test_generate_draws_quick_or_best_of_k(app, engine, monkeypatch):
    from app.gradio_app import LIBRARY_POSE, NO_POSE
    from reid_core.explore import grid

    def pixels(x):
        return np.asarray((x if isinstance(x, Image.Image) else Image.open(x)).convert("RGB"))

    monkeypatch.setattr(engine, "identity_candidates", 3)
    best, quick = common.draw_choices(engine)
    assert quick == common.QUICK_DRAW
    shown = {}
    for draw, k, words in ((best, 3, "best of 3"), (quick, 1, "one draw"), (None, 3, "best of 3")):
        img, cap = app.generate(TRAINING, 2, 0, None, "0-5", None, NO_POSE, 0, None, draw)
        expected = grid(engine.generate(2, seed=list(range(6)), candidates=k), cols=6, scale=app.scale)
        assert np.array_equal(pixels(img), pixels(expected)) and words in cap
        shown[k] = pixels(img)
    assert not np.array_equal(shown[1], shown[3])   # some seed's kept candidate is not its first
    posed, cap = app.generate(TRAINING, 2, 0, None, "0", None, LIBRARY_POSE, 0, None, quick)
    expected = grid(engine.generate(2, seed=0, pose=0, candidates=1), cols=1, scale=app.scale)
    assert np.array_equal(pixels(posed), pixels(expected)) and "one draw" in cap
    with pytest.raises(gr.Error, match="choose how to draw"):
        app.generate(TRAINING, 2, 0, None, "0", None, NO_POSE, 0, None, "Best of 99")
    monkeypatch.setattr(engine, "identity_candidates", 1)
    assert common.draw_choices(engine) == [common.QUICK_DRAW]   # nothing to choose: the control hides


@pytest.mark.parametrize("args, message", [
    ((TRAINING, 999, 0, None, "0"), "index"),
    ((TRAINING, -1, 0, None, "0"), "index"),
    ((TRAINING, 0, 0, None, "zero"), "whole number"),
    ((TRAINING, 0, 0, None, "0-99"), "at most 16"),
    ((TRAINING, 0, 0, None, ""), "at least one seed"),
    ((PHOTO, 0, 0, None, "0"), "Upload a photo"),
    ((PRIOR, 0, -3, None, "0"), "seed"),
    (("Something else", 0, 0, None, "0"), "identity source"),
])
def test_generate_rejects_bad_input_plainly(app, args, message):
    with pytest.raises(gr.Error, match=message):
        app.generate(*args)


def test_generate_with_a_pose(app, engine, photo, tmp_path):
    from app.gradio_app import LIBRARY_POSE, NO_POSE, PHOTO_POSE
    plain, _ = app.generate(TRAINING, 1, 0, None, "0-1", None, NO_POSE)
    posed, cap = app.generate(TRAINING, 1, 0, None, "0-1", None, LIBRARY_POSE, 0)
    assert _caption_count(cap) == 2
    def as_image(x):
        return x if isinstance(x, Image.Image) else Image.open(x)

    assert not np.array_equal(np.asarray(as_image(plain)), np.asarray(as_image(posed)))
    from_photo, _ = app.generate(TRAINING, 1, 0, None, "0", None, PHOTO_POSE, 0, photo)
    no_pose, _ = app.generate(TRAINING, 1, 0, None, "0", None, NO_POSE)
    from reid_core.explore import grid
    expected = grid(engine.generate(1, seed=0, pose=photo), cols=1, scale=app.scale)
    got = as_image(from_photo)
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(expected.convert("RGB")))  # the photo's pose
    assert not np.array_equal(np.asarray(got), np.asarray(as_image(no_pose)))
    with pytest.raises(gr.Error, match="photo whose pose"):
        app.generate(TRAINING, 1, 0, None, "0", None, PHOTO_POSE, 0, None)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 128), (0, 0, 0)).save(blank)
    with pytest.raises(gr.Error, match="no person"):
        app.generate(TRAINING, 1, 0, None, "0", None, PHOTO_POSE, 0, str(blank))


def test_parse_seeds():
    assert common.parse_seeds("0-3, 7") == [0, 1, 2, 3, 7]
    assert common.parse_seeds(5) == [5]
    assert common.parse_seeds(" 2 4 ") == [2, 4]
    for bad in ("3-1", "-2", "1.5", "a", ""):
        with pytest.raises(ValueError):
            common.parse_seeds(bad)


# ---------------------------------------------------------------- invert and swap
@pytest.mark.parametrize("method", ["img2noise", "refined", "ddim"])
def test_invert(app, engine, photo, method):
    inp, rec, noise, fig, cap = app.invert(photo, method)
    h, w = engine.image_size
    assert inp.size == rec.size == noise.size == (w * app.scale, h * app.scale)
    assert isinstance(fig, go.Figure) and len(fig.data[0].y) == engine.preset.id_dim
    assert "PSNR" in cap and method in cap and "dB" in cap
    assert "identity certainty" in cap and "training photos" in cap     # HAVANA's sigma, placed
    sheet, scap = app.swap(photo, method, PRIOR, 0, 4)
    assert sheet.size[0] > 3 * w * app.scale and "prior (seed 4)" in scap
    sheet2, scap2 = app.swap(photo, method, TRAINING, 1, 0)
    assert "#1" in scap2


def test_swap_puts_the_person_of_another_photo_on_this_photos_noise(app, engine, photo, synthetic_market):
    other = str(sorted((synthetic_market / "query").glob("*.jpg"))[5])
    sheet, cap = app.swap(photo, "img2noise", PHOTO, 0, 0, 0.5, other)
    assert "uploaded photo" in cap
    inv = app._inversion(photo, "img2noise")
    expected = common.grid([inv.input, inv.reconstruction, engine.swap(other, inv, keep=0.5)], cols=3, scale=app.scale)
    np.testing.assert_array_equal(np.asarray(sheet), np.asarray(expected))
    with pytest.raises(gr.Error, match="Upload a photo"):
        app.swap(photo, "img2noise", PHOTO, 0, 0, 0.5, None)


def test_invert_and_swap_errors(app, photo):
    with pytest.raises(gr.Error, match="Upload a photo"):
        app.invert(None, "img2noise")
    with pytest.raises(gr.Error, match="method"):
        app.invert(photo, "magic")
    with pytest.raises(gr.Error, match="Upload a photo"):
        app.swap(None, "img2noise", TRAINING, 0, 0)
    with pytest.raises(gr.Error, match="index"):
        app.swap(photo, "img2noise", TRAINING, 10 ** 6, 0)


# ---------------------------------------------------------------- bad uploads
@pytest.mark.parametrize("kind, message", [
    ("not_image", "not an image"),
    ("truncated", "damaged or truncated"),
    ("tiny", "too small"),
    ("huge", "Mpixel limit"),
])
def test_bad_uploads_give_plain_messages(app, uploads, kind, message):
    for call in (lambda p: app.invert(p, "img2noise"), lambda p: app.reidentify(p, 5, None),
                 lambda p: app.generate(PHOTO, 0, 0, p, "0"), lambda p: app.identity_map(p, 0, None)):
        with pytest.raises(gr.Error, match=message) as info:
            call(str(uploads[kind]))
        assert "Traceback" not in str(info.value) and "That photo cannot be used" in str(info.value)


@pytest.mark.parametrize("kind", ["rgba", "gray"])
def test_odd_but_valid_uploads_work(app, engine, uploads, kind):
    inp, rec, noise, fig, cap = app.invert(str(uploads[kind]), "img2noise")
    assert "PSNR" in cap
    assert np.asarray(inp).shape == (engine.image_size[0] * app.scale, engine.image_size[1] * app.scale, 3)


def test_over_pil_limit_is_plain(app):
    """A PNG header claiming 20000x20000: PIL refuses it before the engine looks; still a plain message."""
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    with pytest.raises(gr.Error, match="too large"):
        app.invert(io.BytesIO(data), "img2noise")


# ---------------------------------------------------------------- latent sliders
def test_latent_sliders(app, engine, photo):
    k = len(engine.latent_axes)
    lo, hi = app.ranges[:, 0], app.ranges[:, 1]
    out = app.latent_load(TRAINING, 2, 0, None, 0)
    values, image, base, cap = out[:k], out[k], out[k + 1], out[k + 2]
    assert len(values) == k and "#2" in cap
    np.testing.assert_allclose(base, engine.identity_table[2], atol=1e-6)     # the state keeps the whole vector
    np.testing.assert_allclose(values, np.clip(engine.to_axes(base), lo, hi), atol=1e-4)
    assert np.array_equal(np.asarray(app.latent_render(0, base, *values)), np.asarray(image))  # fixed noise
    moved = list(values)
    moved[5] = float(hi[5])
    img_moved = app.latent_render(0, base, *moved)
    assert img_moved.size == image.size
    assert np.abs(np.asarray(img_moved, np.float32) - np.asarray(image, np.float32)).mean() > 1  # the picture moved
    reset = app.latent_reset(0, base)
    assert list(reset[:k]) == list(values) and reset[k + 1] == base
    rnd = app.latent_random(0, seed=11)
    assert "seed 11" in rnd[-1] and all(a <= v <= b for v, a, b in zip(rnd[:k], lo, hi))
    cleared, hint = app.latent_sensitivity_cached(0, base, *values)
    assert cleared is None and "Which dimensions matter" in hint   # not computed yet: no stale chart
    fig, scap = app.latent_sensitivity(0, base, *values)
    assert isinstance(fig, go.Figure) and len(fig.data[0].y) == k and "most" in scap
    fig2, scap2 = app.latent_sensitivity_cached(0, base, *values)                   # now it is cached
    assert isinstance(fig2, go.Figure) and scap2 == scap
    from_photo = app.latent_load(PHOTO, 0, 0, photo, 1)
    assert "photo" in from_photo[-1]
    with pytest.raises(gr.Error):
        app.latent_render(0, base, *values[:-1])
    with pytest.raises(gr.Error):
        app.latent_render(0, base, *(["x"] * k))


# ---------------------------------------------------------------- re-identify
def test_reidentify_with_folder_and_uploads(app, engine, photo, synthetic_market, uploads):
    ids, gal, cap = app.reidentify(photo, 3, None)
    assert len(ids) == 3 and all(isinstance(im, Image.Image) and "#" in c for im, c in ids)
    if app.indexed_folder is None:
        assert gal == [] and "No gallery" in cap
    with pytest.raises(gr.Error, match="not one of the galleries"):
        app.index_folder("/etc")
    status = app.index_folder(str(synthetic_market))
    assert "images indexed" in status
    ids, gal, cap = app.reidentify(photo, 4, None)
    assert len(gal) == 4 and "pid" in gal[0][1]
    assert cap.startswith("Query photo · identity certainty: **")
    dists = [float(c.lstrip("✅❌ ").split(" · ")[0]) for _, c in gal]
    assert dists == sorted(dists)
    # the query's own person is among the nearest gallery images (synthetic persons are easy)
    qpid = int(Path(photo).name.split("_")[0])
    assert any(f"pid {qpid}" in c for _, c in gal)
    # a dataset crop: right and wrong matches are marked, and its own camera is left out by default
    qcam = int(Path(photo).name.split("_c")[1][0])
    assert all(c.startswith("✅" if f"pid {qpid} " in c + " " else "❌") for _, c in gal)
    assert all(f"cam {qcam}" not in c for _, c in gal) and f"camera {qcam} left out" in cap
    _, every_cam, cap2 = app.reidentify(photo, 20, None, False)
    assert any(f"cam {qcam}" in c for _, c in every_cam) and "left out" not in cap2
    # a visitor's own photos: bad files are skipped with a warning, good ones added
    state, status = app.add_uploads([photo, str(uploads["not_image"]), str(uploads["gray"])], None)
    assert len(state) == 2 and "2 of your own photos" in status
    ids, gal, cap = app.reidentify(photo, 2, state)
    assert gal[0][1].startswith("0.000") and Path(photo).name in gal[0][1]   # the same photo, distance 0
    with pytest.raises(gr.Error, match="none of those files"):
        app.add_uploads([str(uploads["not_image"])], state)
    with pytest.raises(gr.Error):
        app.add_uploads([], state)
    cleared, status = app.clear_uploads()
    assert cleared is None and "your own photos" not in status


def test_reidentify_with_pose_centralization(app, engine, photo, synthetic_market):
    app.index_folder(str(synthetic_market))
    saved = engine.centralization
    engine.centralization = {"poses": 2, "eta": 1.0, "steps": 3}
    try:
        _, gal, cap = app.reidentify(photo, 4, None, True, True)
        from app.common import name_identity
        want = engine.search(photo, k=4, skip_camera=name_identity(photo)[1], centralize=True)
    finally:
        engine.centralization = saved
        engine.gallery.centralized = None
    assert "Pose2ID centralization" in cap and "2 poses" in cap
    assert [c.lstrip("✅❌ ").split(" · ")[0] for _, c in gal] == [f"{m.distance:.3f}" for m in want]
    _, _, plain = app.reidentify(photo, 4, None, True, True)   # weights without settings: the switch is inert
    assert "centralization" not in plain


# ---------------------------------------------------------------- identity map
def test_identity_map_and_portraits(app, engine, photo):
    fig, cap = app.identity_map(None, 1, None)
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names[0] == "training identities" and len(fig.data[0].x) == engine.num_identities
    assert "identity #1" in names
    state, _ = app.add_uploads([photo], None)
    fig, cap = app.identity_map(photo, None, state)
    names = [t.name for t in fig.data]
    assert "your photo" in names and "your gallery uploads" in names and "Your photo" in cap
    sheet, who = app.show_identity(2)
    assert isinstance(sheet, Image.Image) and "#2" in who
    with pytest.raises(gr.Error):
        app.show_identity(engine.num_identities)


# ---------------------------------------------------------------- building the app
def test_build_demo_has_named_events(engine):
    from app.gradio_app import build_demo
    demo = build_demo(engine)
    names = {d.api_name for d in demo.fns.values()}
    for expected in ("generate", "invert", "swap", "latent_render", "latent_random", "latent_reset",
                     "latent_load", "reidentify", "index_folder", "add_to_gallery", "identity_map", "show_identity"):
        assert expected in names
    assert all(d.api_name for d in demo.fns.values())
    assert common.example_photos(engine), "the first visit has examples"


def test_weights_and_gallery_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("REID_WEIGHTS", raising=False)
    assert common.weights_arg(None).endswith("weights")
    monkeypatch.setenv("REID_WEIGHTS", "someone/some-repo")
    assert common.weights_arg(None) == "someone/some-repo"
    assert common.weights_arg("x") == "x"
    assert common.gallery_choices(str(tmp_path))[0] == str(tmp_path.resolve())


def test_warm_portraits_spare_reidentify_the_generator(engine, synthetic_market, photo, monkeypatch):
    from app.gradio_app import ReIDApp
    fresh = ReIDApp(engine, str(synthetic_market))
    fresh.memory.warm_portraits()
    assert len(fresh.memory.portraits) >= engine.num_identities
    calls = []
    original = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1) or original(*a, **k))
    ids, _, _ = fresh.reidentify(photo, 5)
    assert len(ids) == 5 and not calls
    from reid_core.explore import Explorer
    Explorer(engine).warm_portraits()  # a fresh memory reads them from the on-disk cache
    assert not calls
    again = ReIDApp(engine, str(synthetic_market))
    assert not again.warm_done.is_set()
    again.warm_up()
    assert again.warm_done.is_set()


def test_match_labels_say_who_where_and_how_likely():
    from reid_core.engine import Match
    assert common.match_label(Match("/x/0007_c2s1_01.jpg", 7, 1, 0.1234)) == "0.123 · pid 7 · cam 2"
    assert common.match_label(Match("a/b.jpg", -1, -1, 0.5, "uploads", None, 0.873)) == \
        "0.500 · 87% same · a/b.jpg"
    assert common.match_label(Match("/x/0007_c2s1_01.jpg", 7, 1, 0.1), query_pid=7) == "✅ 0.100 · pid 7 · cam 2"
    assert common.match_label(Match("/x/0008_c2s1_01.jpg", 8, 1, 0.1), query_pid=7).startswith("❌ 0.100")
    assert common.name_identity("/tmp/gradio/ab12/0042_c3s2_000100_01.jpg") == (42, 2)
    assert common.name_identity("holiday.jpg") == (-1, -1)
    assert common.match_label(Match("/g/photo.png", -1, -1, 0.25)) == "0.250 · photo.png"


def test_first_results_come_back_from_disk_after_a_restart(engine, synthetic_market, photo, monkeypatch, tmp_path):
    from app.gradio_app import ReIDApp
    monkeypatch.setenv("REID_CACHE", str(tmp_path))
    (gen, gen_cap), inv = ReIDApp(engine, str(synthetic_market)).initial_outputs(photo)
    monkeypatch.setattr(engine, "_explorer", None)          # a restart: nothing remembered in memory
    calls = []
    for name in ("generate", "invert"):
        original = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _o=original, **k: calls.append(1) or _o(*a, **k))
    (gen2, gen_cap2), inv2 = ReIDApp(engine, str(synthetic_market)).initial_outputs(photo)
    assert not calls, "the first page's results were recomputed"
    assert gen_cap2 == gen_cap and inv2[-1] == inv[-1]
    assert np.array_equal(np.asarray(gen2), np.asarray(gen))

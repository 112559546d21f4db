"""The Streamlit app through streamlit.testing (no browser): every tab, widgets, bad uploads."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app" / "streamlit_app.py")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def at(tiny_weights, synthetic_market, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("REID_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("REID_GALLERY", str(synthetic_market))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _sheets(at) -> list[list[tuple[str, str]]]:
    """Every st.image on the page as its [(media url, caption)]; a url names its picture's content."""
    return [[(i.url, i.caption) for i in e.proto.imgs] for e in at.get("image")]


def _pictures(at) -> list[str]:
    """The media urls of every picture on the page."""
    return [url for sheet in _sheets(at) for url, _ in sheet]


def _photo_bytes(synthetic_market) -> bytes:
    return sorted((synthetic_market / "query").glob("*.jpg"))[0].read_bytes()


def test_first_page_shows_results(at):
    assert at.title[0].value == "Generative person re-identification"
    assert [t.label for t in at.tabs] == ["Generate", "Invert", "Latent sliders", "Re-identify", "Identity map"]
    assert not at.error
    assert len(_pictures(at)) >= 2     # a generated sheet and the slider picture on the first visit
    assert len(at.slider) >= 32


def test_generate_and_invert(at, synthetic_market):
    at.text_input(key="gen-seeds").set_value("0-5")
    _ok(at.button(key="gen-btn").click().run())
    assert not at.error
    at.radio(key="gen-source").set_value("New identity (prior)")
    at.number_input(key="gen-prior").set_value(9)
    _ok(at.button(key="gen-btn").click().run())
    assert not at.error
    at.text_input(key="gen-seeds").set_value("nine")
    _ok(at.button(key="gen-btn").click().run())
    assert any("whole number" in e.value for e in at.error)
    at.file_uploader(key="inv-upload").set_value(("q.jpg", _photo_bytes(synthetic_market), "image/jpeg"))
    _ok(at.run())
    at.radio(key="inv-method").set_value("ddim")
    _ok(at.button(key="inv-btn").click().run())
    assert any("PSNR" in m.value and "identity certainty" in m.value for m in at.markdown)
    _ok(at.button(key="swap-btn").click().run())
    assert not at.error
    at.radio(key="swap-source").set_value("From a photo")   # the person of another photo (an example)
    _ok(at.run())
    _ok(at.button(key="swap-btn").click().run())
    assert not at.error
    assert any("uploaded photo" in cap for sheet in _sheets(at) for _, cap in sheet)


def test_generate_in_a_library_pose(at):
    at.selectbox(key="gen-pose").set_value("library pose 0")
    _ok(at.run())
    assert any("skeleton" in cap for sheet in _sheets(at) for _, cap in sheet)
    _ok(at.button(key="gen-btn").click().run())
    in_pose_0 = set(_pictures(at))
    at.selectbox(key="gen-pose").set_value("library pose 1")
    _ok(at.button(key="gen-btn").click().run())
    assert not at.error
    assert set(_pictures(at)) - in_pose_0, "another library pose shows another picture"


@pytest.mark.parametrize("name, data, message", [
    ("notes.jpg", b"not a picture at all", "not an image"),
    ("tiny.png", None, "too small"),
    ("truncated.jpg", "truncate", "damaged or truncated"),
])
def test_bad_uploads_show_plain_errors(at, synthetic_market, name, data, message):
    import io
    if data is None:
        buf = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buf, "PNG")
        data = buf.getvalue()
    elif data == "truncate":
        full = _photo_bytes(synthetic_market)
        data = full[: len(full) // 2]
    at.file_uploader(key="inv-upload").set_value((name, data, "image/jpeg"))
    _ok(at.run())
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    _ok(at.button(key="inv-btn").click().run())      # the app keeps working
    assert any("Upload a photo" in e.value for e in at.error)


def test_rgba_and_grayscale_uploads_work(at, synthetic_market):
    import io
    src = Image.open(io.BytesIO(_photo_bytes(synthetic_market)))
    for mode in ("RGBA", "L"):
        buf = io.BytesIO()
        src.convert(mode).save(buf, "PNG")
        at.file_uploader(key="inv-upload").set_value((f"x-{mode}.png", buf.getvalue(), "image/png"))
        _ok(at.button(key="inv-btn").click().run())
        assert not at.error and any("PSNR" in m.value for m in at.markdown)


def test_latent_sliders(at):
    shown = set(_pictures(at))
    lo, hi = at.slider(key="lat-dim-0").min, at.slider(key="lat-dim-0").max
    at.slider(key="lat-dim-0").set_value(hi if at.slider(key="lat-dim-0").value < (lo + hi) / 2 else lo)
    _ok(at.run())
    assert set(_pictures(at)) - shown, "moving a slider changes the picture"
    _ok(at.button(key="lat-random").click().run())
    after = [at.slider(key=f"lat-dim-{d}").value for d in range(32)]
    _ok(at.button(key="lat-reset").click().run())
    assert [at.slider(key=f"lat-dim-{d}").value for d in range(32)] == after  # reset to the loaded identity
    _ok(at.button(key="lat-sens-btn").click().run())
    assert any("move this picture most" in m.value for m in at.markdown)


def test_reidentify_and_map(at, synthetic_market):
    _ok(at.button(key="reid-btn").click().run())   # an example photo is preselected
    assert not at.error
    at.selectbox(key="gal-folder").set_value(str(Path(synthetic_market).resolve()))
    _ok(at.button(key="gal-index").click().run())
    assert not at.error
    _ok(at.button(key="reid-btn").click().run())
    assert any("Nearest gallery images" in m.value for m in at.markdown)
    assert any(m.value.startswith("Query photo · identity certainty") for m in at.markdown)
    assert any(len(sheet) >= 5 and all("pid" in cap for _, cap in sheet) for sheet in _sheets(at))
    at.file_uploader(key="gal-files").set_value([("<b>mine</b>.jpg", _photo_bytes(synthetic_market), "image/jpeg"),
                                                 ("bad.jpg", b"nope", "image/jpeg")])
    _ok(at.button(key="gal-add").click().run())
    assert any("bad.jpg" in w.value for w in at.warning)
    assert any("1 of your own photos" in c.value for c in at.caption)
    at.slider(key="reid-k").set_value(20)
    _ok(at.button(key="reid-btn").click().run())
    captions = [cap for sheet in _sheets(at) for _, cap in sheet]
    assert any("<b>mine</b>.jpg" in cap for cap in captions)   # the visitor's photo is found (captions are text)
    if "map-btn" in [b.key for b in at.button]:        # the map was still fitting in the background
        _ok(at.button(key="map-btn").click().run())
    assert len(at.get("plotly_chart")) >= 1            # the identity map
    at.number_input(key="map-index").set_value(2)
    _ok(at.run())
    assert not at.error


def test_reidentify_with_pose_centralization(tiny_weights, synthetic_market, monkeypatch, tmp_path):
    import json
    import shutil

    from streamlit.testing.v1 import AppTest
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    (w / "centralization.json").write_text(json.dumps({"poses": 2, "eta": 1.0, "steps": 3}))
    monkeypatch.setenv("REID_WEIGHTS", str(w))
    monkeypatch.setenv("REID_GALLERY", str(synthetic_market))
    at = _ok(AppTest.from_file(APP, default_timeout=180).run())
    at.selectbox(key="gal-folder").set_value(str(Path(synthetic_market).resolve()))
    _ok(at.button(key="gal-index").click().run())
    at.checkbox(key="reid-central").check()
    _ok(at.button(key="reid-btn").click().run())
    assert not at.error
    assert any("Ranked with **Pose2ID centralization**" in m.value and "2 poses" in m.value for m in at.markdown)
    assert any(len(sheet) >= 5 for sheet in _sheets(at))

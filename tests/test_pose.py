"""Tests for reid_core.pose: keypoint mapping, rendering, PCK, extractors.

Only ``test_real_query_crops`` needs ../shared/datasets/cuhk03-pair1 (skipped with a
reason when it is absent); everything else runs on synthetic inputs.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from reid_core import pose as P
from reid_core.data import DEMO_DATA

ROOT = Path(__file__).resolve().parents[1]
DATA = DEMO_DATA

# protobuf 4.x deprecation warning raised inside mediapipe's own packet reading;
# MediaPipePose silences it globally, but pytest resets filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")


@pytest.fixture(scope="module")
def extractor():
    ex = P.get_pose_extractor("mediapipe")
    yield ex
    ex.close()


def _landmarks33() -> np.ndarray:
    """33 landmarks with unique, index-encoding values: x = i/100, y = 0.5 + i/100."""
    a = np.zeros((33, 3), dtype=np.float32)
    a[:, 0] = np.arange(33) / 100.0
    a[:, 1] = 0.5 + np.arange(33) / 100.0
    a[:, 2] = 0.5 + np.arange(33) / 100.0
    return a


# ----------------------------------------------------------------------- constants
def test_constants():
    assert len(P.KEYPOINT_NAMES) == 18 and P.KEYPOINT_NAMES[0] == "nose" and P.KEYPOINT_NAMES[1] == "neck"
    assert P.KEYPOINT_NAMES[17] == "l_ear"
    assert len(P.LIMBS) == 17 and len(P.COLORS) == 18
    assert all(0 <= a < 18 and 0 <= b < 18 for a, b in P.LIMBS)
    assert P.COLORS[0] == (255, 0, 0) and P.COLORS[12] == (0, 0, 255)


# ------------------------------------------------------------------------- mapping
def test_blazepose_mapping_indices():
    a = _landmarks33()
    k = P.blazepose_to_openpose(a.tolist())  # the annotation file's list-of-lists format
    assert k.shape == (18, 3) and k.dtype == np.float32
    expected = {"nose": 0, "l_eye": 2, "r_eye": 5, "l_ear": 7, "r_ear": 8, "l_shoulder": 11,
                "r_shoulder": 12, "l_elbow": 13, "r_elbow": 14, "l_wrist": 15, "r_wrist": 16,
                "l_hip": 23, "r_hip": 24, "l_knee": 25, "r_knee": 26, "l_ankle": 27, "r_ankle": 28}
    for name, bp in expected.items():
        np.testing.assert_allclose(k[P.KEYPOINT_NAMES.index(name)], a[bp], err_msg=name)


def test_blazepose_neck_is_shoulder_midpoint():
    a = _landmarks33()
    a[11] = (0.6, 0.30, 0.9)  # left shoulder
    a[12] = (0.2, 0.20, 0.4)  # right shoulder
    neck = P.blazepose_to_openpose(a)[1]
    np.testing.assert_allclose(neck, (0.4, 0.25, 0.4), atol=1e-6)


def test_blazepose_accepts_mediapipe_landmark_objects():
    a = _landmarks33()
    objs = SimpleNamespace(landmark=[SimpleNamespace(x=x, y=y, visibility=v, z=0.0) for x, y, v in a])
    np.testing.assert_allclose(P.blazepose_to_openpose(objs), P.blazepose_to_openpose(a))


def test_blazepose_bad_shape():
    with pytest.raises(ValueError, match="33"):
        P.blazepose_to_openpose(np.zeros((18, 3)))


# ----------------------------------------------------------------------- rendering
def _limb_keypoints() -> np.ndarray:
    """Only neck (1) and r_shoulder (2) confident: draws limb 0 and two joints."""
    k = np.zeros((18, 3), dtype=np.float32)
    k[1] = (0.75, 0.5, 1.0)
    k[2] = (0.25, 0.5, 1.0)
    k[9] = (0.5, 0.9, 0.1)  # below min_conf: must not be drawn
    return k


@pytest.mark.parametrize("size", [(64, 32), (128, 64), (256, 128), (512, 512)])
def test_render_limb_colours_and_background(size):
    h, w = size
    img = P.render_skeleton(_limb_keypoints(), size=size)
    assert img.mode == "RGB" and img.size == (w, h)
    a = np.asarray(img).astype(int)
    limb = np.array(P.COLORS[0]) * P.LIMB_COLOR_SCALE
    mid = a[int(0.5 * h), int(0.5 * w)]  # midpoint of the neck-shoulder stick
    assert np.abs(mid - limb).max() <= 12, mid
    neck = a[int(0.5 * h), min(int(0.75 * w), w - 1)]
    assert np.abs(neck - np.array(P.COLORS[1])).max() <= 40, neck
    # black everywhere away from the stick (rows far from y = 0.5), incl. the
    # low-confidence r_knee at (0.5, 0.9)
    far = np.ones((h, w), bool)
    far[int(0.35 * h): int(0.65 * h) + 1] = False
    assert a[far].max() == 0
    assert a[int(0.9 * h), int(0.5 * w)].max() == 0


@pytest.mark.parametrize("a,b", [((0.2, 0.2), (0.8, 0.8)), ((0.5, 0.1), (0.5, 0.9)), ((0.8, 0.2), (0.2, 0.7))])
def test_render_stick_follows_segment(a, b):
    k = np.zeros((18, 3), dtype=np.float32)
    k[1] = (*a, 1.0)
    k[2] = (*b, 1.0)
    h, w = 256, 128
    img = np.asarray(P.render_skeleton(k, (h, w))).astype(int)
    for t in (0.25, 0.5, 0.75):
        x, y = a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])
        assert img[int(y * h), int(x * w), 0] > 100, (t, img[int(y * h), int(x * w)])
    # a point well off the segment stays black
    off = (a[0] + 0.5 * (b[0] - a[0]) + 0.25 * (b[1] - a[1]), a[1] + 0.5 * (b[1] - a[1]) - 0.25 * (b[0] - a[0]))
    assert img[int(off[1] * h), int(off[0] * w)].max() == 0


def test_render_thickness_scales_with_size():
    assert P.default_thickness((64, 32)) == 1
    assert P.default_thickness((512, 512)) == 4
    k = _limb_keypoints()
    small = (np.asarray(P.render_skeleton(k, (128, 64))).max(axis=2) > 0).mean()
    big = (np.asarray(P.render_skeleton(k, (1024, 512))).max(axis=2) > 0).mean()
    # covered fraction of the canvas stays in the same range (sticks thicken with size)
    assert 0.2 < big / small < 5


def test_render_none_and_array():
    assert np.asarray(P.render_skeleton(None, (64, 32))).max() == 0
    k = _limb_keypoints()
    arr = P.render_skeleton_array(k, (128, 64))
    assert arr.shape == (3, 128, 64) and arr.dtype == np.float32
    assert arr.min() == -1.0 and arr.max() <= 1.0
    img = np.asarray(P.render_skeleton(k, (128, 64))).transpose(2, 0, 1)
    np.testing.assert_allclose(arr, img / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        P.render_skeleton(np.zeros((17, 3)), (64, 32))


# ----------------------------------------------------------------------------- PCK
def _ref() -> np.ndarray:
    r = np.zeros((18, 3), dtype=np.float32)
    r[0] = (0.5, 0.1, 1.0)   # top-most
    r[1] = (0.5, 0.3, 1.0)
    r[10] = (0.5, 0.9, 1.0)  # bottom-most: body height 0.8 * 128 = 102.4 px
    r[13] = (0.4, 0.9, 1.0)
    return r


def test_pck_perfect_and_shifted():
    ref = _ref()
    assert P.pck(ref, ref) == (4, 4)
    pred = ref.copy()
    # threshold 0.2 * 102.4 = 20.48 px; x is scaled by the width (64), not the height
    pred[1, 0] += 0.30  # 19.2 px: correct
    pred[13, 0] += 0.35  # 22.4 px: wrong
    assert P.pck(pred, ref, 0.2, size=(128, 64)) == (3, 4)
    # on a square 128x128 image the same shifts are 38/45 px: both wrong
    assert P.pck(pred, ref, 0.2, size=(128, 128)) == (2, 4)


def test_pck_confidence_and_missing():
    ref = _ref()
    pred = ref.copy()
    pred[13, 2] = 0.1  # unconfident prediction: not considered ...
    assert P.pck(pred, ref) == (3, 3)
    assert P.pck(pred, ref, count_missing=True) == (3, 4)  # ... or counted wrong
    ref2 = ref.copy()
    ref2[0, 2] = 0.2  # unconfident reference keypoint never counts
    assert P.pck(ref2, ref2) == (3, 3)
    assert P.pck(None, ref) == (0, 0)
    assert P.pck(None, ref, count_missing=True) == (0, 4)
    lonely = np.zeros((18, 3), np.float32)
    lonely[0] = (0.5, 0.5, 1.0)
    assert P.pck(lonely, lonely) == (0, 0)  # no body height


# ---------------------------------------------------------------------- extractors
def test_no_person_is_a_result(extractor):
    rng = np.random.default_rng(0)
    for img in (Image.new("RGB", (64, 128)),
                Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)),
                Image.new("L", (32, 64), 128)):
        res = extractor(img)
        assert isinstance(res, P.PoseResult)
        assert res.found is False and res.keypoints is None
        assert "no person" in res.message and res.backend == "mediapipe"


def test_any_mode_and_size(extractor):
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8))
    for img in (base.convert("L"), base.convert("RGBA"), base.convert("P"), base.convert("I"),
                base.resize((2, 4)), base.resize((600, 300)), np.zeros((16, 8, 3), np.uint8)):
        res = extractor(img)   # noise: a plain "no person" answer in every mode and size, never an exception
        assert res.found is False and res.keypoints is None and "no person" in res.message


def test_a_person_is_found_alike_in_every_mode_and_size(extractor):
    if not (DATA / "query").is_dir():
        pytest.skip(f"real data not available: {DATA}/query is absent")
    for name in sorted(p.name for p in (DATA / "query").glob("*.jpg"))[::40]:
        with Image.open(DATA / "query" / name) as im:
            rgb = im.convert("RGB")
        ref = extractor(rgb)
        if ref.found:
            break
    else:
        pytest.fail("no person found in any sampled query crop")
    for img in (rgb.convert("RGBA"), rgb.resize((256, 512), Image.BICUBIC), np.asarray(rgb)):
        res = extractor(img)
        assert res.found, f"lost the person in {getattr(img, 'mode', 'array')} {getattr(img, 'size', img.shape)}"
        both = (ref.keypoints[:, 2] > 0) & (res.keypoints[:, 2] > 0)
        assert both.sum() >= 10
        err = np.abs(res.keypoints[both, :2] - ref.keypoints[both, :2])
        assert np.median(err) < 0.03 and err.max() < 0.15   # the same body in the same place


def test_bad_inputs(extractor):
    with pytest.raises(TypeError, match="PIL"):
        extractor("query/0001_c1s1_000000_00.jpg")
    with pytest.raises(TypeError, match="PIL"):
        extractor(42)
    with pytest.raises(TypeError, match="uint8"):
        extractor(np.zeros((16, 8, 3), np.float32))
    with pytest.raises(ValueError):
        extractor(np.zeros((16, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="unknown pose backend"):
        P.get_pose_extractor("nope")


def test_detector_fallback_maps_back_through_padding(monkeypatch):
    """The stock-pipeline fallback runs on an upscaled, padded copy; its landmarks
    must come back as fractions of the original image."""
    ex = P.MediaPipePose(roi_scales=(), detector_fallback=True)
    target = _landmarks33()
    target[:, 0] = np.linspace(0.1, 0.9, 33)
    target[:, 1] = np.linspace(0.05, 0.95, 33)
    seen = {}

    class FakePose:
        def process(self, x):
            hp, wp = x.shape[:2]
            seen["shape"] = x.shape
            f = P._DETECTOR_UPSCALE
            pv, ph = round(128 * f * P._DETECTOR_PAD[0]), round(64 * f * P._DETECTOR_PAD[1])
            lms = [SimpleNamespace(x=(ph + tx * 64 * f) / wp, y=(pv + ty * 128 * f) / hp, visibility=v)
                   for tx, ty, v in target]
            return SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=lms))

    monkeypatch.setattr(ex, "_pose", FakePose())
    res = ex(Image.new("RGB", (64, 128), (90, 90, 90)))
    ex.close()
    assert res.found and res.strategy == "detector"
    assert seen["shape"][0] > 2 * 128 and seen["shape"][1] > 2 * 64  # it was padded
    np.testing.assert_allclose(res.keypoints, P.blazepose_to_openpose(target), atol=1e-5)


def test_thread_safe(extractor):
    rng = np.random.default_rng(2)
    imgs = [Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)) for _ in range(4)]
    errors = []

    def work(img):
        try:
            for _ in range(3):
                assert not extractor(img).found
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(im,)) for im in imgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_optional_backend_is_lazy_and_explains_alternative():
    code = ("import sys, reid_core.pose; "
            "print([m for m in sys.modules if m.split('.')[0] in ('torchvision', 'controlnet_aux')])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    try:
        ex = P.get_pose_extractor("controlnet_aux")
    except P.PoseBackendUnavailable as e:
        assert "mediapipe" in str(e) and "controlnet_aux" in str(e)
    else:  # pragma: no cover - only where controlnet_aux and its weights work
        ex.close()
        pytest.skip("controlnet_aux is usable here; the unavailable path cannot be exercised")


# ----------------------------------------------------------------------- real data
def test_real_query_crops(extractor):
    if not (DATA / "query").is_dir() or not (DATA / "keypoints.json.gz").exists():
        pytest.skip(f"real data not available: {DATA} (query/ and keypoints.json.gz) is absent")
    with gzip.open(DATA / "keypoints.json.gz", "rt") as f:
        refs = json.load(f)["keypoints"]
    names = sorted(p.name for p in (DATA / "query").glob("*.jpg"))[::40][:10]
    found, correct, considered = 0, 0, 0
    for n in names:
        with Image.open(DATA / "query" / n) as im:
            assert im.size == (64, 128)
            res = extractor(im)
        if not res.found:
            continue
        found += 1
        k = res.keypoints
        assert k.shape == (18, 3) and np.isfinite(k).all()
        assert (k[:, :2] > -0.5).all() and (k[:, :2] < 1.5).all()
        ref = refs.get(f"query/{n}")
        if ref is not None:
            c, m = P.pck(k, P.blazepose_to_openpose(ref), 0.2, size=(128, 64))
            correct, considered = correct + c, considered + m
    assert found >= 8, f"found only {found}/10 people"
    assert considered >= 50 and correct / considered >= 0.75, (correct, considered)


def test_whole_body_rule_rejects_partial_and_collapsed_poses():
    from reid_core.synthetic import _keypoints
    body = np.array(_keypoints(32, 0, (128, 64)), np.float32)
    assert P.is_whole_body(body)
    dot = body.copy()
    dot[:, 0] = 0.5 + 0.03 * (dot[:, 0] - 0.5)      # every joint within ~6% of the width ...
    dot[:, 1] = 0.5 + 0.02 * (dot[:, 1] - 0.5)      # ... and 2% of the height: one spot
    assert not P.is_whole_body(dot)
    head_and_arm = body.copy()
    head_and_arm[[1, 5, 6, 7, 8, 9, 10, 11, 12, 13], 2] = 0.0   # only 8 joints confident
    assert not P.is_whole_body(head_and_arm)
    short = body.copy()
    short[:, 1] = 0.2 + 0.45 * short[:, 1]          # spans less than half the height
    assert not P.is_whole_body(short)


def test_protobuf_compat_supplies_what_protobuf_5_removed(monkeypatch):
    from google.protobuf import descriptor_pb2, message_factory, symbol_database
    from reid_core.pose import protobuf_compat
    if hasattr(symbol_database.SymbolDatabase, "GetPrototype"):   # protobuf 4: take it away, as 5 does
        monkeypatch.delattr(symbol_database.SymbolDatabase, "GetPrototype")
    assert protobuf_compat() is True
    assert protobuf_compat() is False                              # supplied once
    desc = descriptor_pb2.FileDescriptorProto.DESCRIPTOR
    cls = symbol_database.Default().GetPrototype(desc)
    assert cls is message_factory.GetMessageClass(desc) and cls().DESCRIPTOR is desc

"""Pose extraction and OpenPose-style skeleton rendering for small person crops.

Keypoints everywhere in this module are OpenPose/COCO-18 arrays of shape (18, 3)
holding ``(x, y, confidence)``: x and y are fractions of the image width and height
(so one array serves a 128x64 crop, its 64x32 version or any other size; points may
fall slightly outside [0, 1] when the model places a joint beyond the crop edge) and
confidence is in [0, 1].

Backends:

* ``MediaPipePose`` (default): mediapipe 0.10.14's BlazePose full model, the one
  bundled in its wheel. The stock ``mp.solutions.pose`` pipeline runs a person
  detector first, and that detector misses about half of the people in 128x64 re-ID
  crops (their faces are a few pixels wide). A re-ID crop already *is* a person box,
  so this backend skips the detector and hands the landmark model a region of
  interest derived from the crop itself, retrying a few ROI scales, and only then
  falls back to the stock detector pipeline (for images that are not person crops).
  The landmark model's own pose-presence score still gates the result, so blank or
  non-person images come back as ``found=False``.
* ``ControlNetAuxPose``: OpenPose or DWPose from the optional ``controlnet_aux``
  package, imported only when that backend is constructed.

No person found is a normal ``PoseResult(found=False, ...)``, never an exception.
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .data import flatten_alpha

__all__ = [
    "KEYPOINT_NAMES",
    "LIMBS",
    "COLORS",
    "BLAZEPOSE_TO_OPENPOSE",
    "blazepose_to_openpose",
    "render_skeleton",
    "render_skeleton_array",
    "default_thickness",
    "pck",
    "PoseResult",
    "PoseBackendUnavailable",
    "PoseExtractor",
    "MediaPipePose",
    "ControlNetAuxPose",
    "get_pose_extractor",
]

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)

# OpenPose's limbSeq (0-based); like controlnet_aux's draw_bodypose, only the first
# 17 of its 19 pairs are drawn (the ear-shoulder pairs are skipped).
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7),
    (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)

# OpenPose's 18 standard colours (RGB). Joint k is drawn in COLORS[k]; limb i in
# 0.6 * COLORS[i], as OpenPose / ControlNet do, so pose-conditioned models trained
# on either convention see the same pictures.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_COLOR_SCALE = 0.6

# OpenPose index -> BlazePose-33 index (neck, index 1, has no BlazePose counterpart).
BLAZEPOSE_TO_OPENPOSE: dict[int, int] = {
    0: 0,     # nose
    2: 12,    # r_shoulder
    3: 14,    # r_elbow
    4: 16,    # r_wrist
    5: 11,    # l_shoulder
    6: 13,    # l_elbow
    7: 15,    # l_wrist
    8: 24,    # r_hip
    9: 26,    # r_knee
    10: 28,   # r_ankle
    11: 23,   # l_hip
    12: 25,   # l_knee
    13: 27,   # l_ankle
    14: 5,    # r_eye
    15: 2,    # l_eye
    16: 8,    # r_ear
    17: 7,    # l_ear
}
_NECK = 1
_BP_L_SHOULDER, _BP_R_SHOULDER = 11, 12


# --------------------------------------------------------------------------- mapping
def blazepose_to_openpose(landmarks33: Any) -> np.ndarray:
    """Convert 33 BlazePose landmarks to the 18 OpenPose/COCO keypoints.

    Args:
        landmarks33: (33, 3) or (33, >=3) array-like of ``(x, y, visibility)`` (the
            format of the dataset's ``keypoints.json.gz`` entries), or a mediapipe
            ``NormalizedLandmarkList`` / sequence of objects with ``.x .y .visibility``.

    Returns:
        (18, 3) float32 array ``(x, y, confidence)``, x/y as fractions of width/height.
        The neck is the shoulders' midpoint, with the smaller of their confidences.
    """
    a = _as_landmark_array(landmarks33)
    out = np.zeros((18, 3), dtype=np.float32)
    for op_idx, bp_idx in BLAZEPOSE_TO_OPENPOSE.items():
        out[op_idx] = a[bp_idx, :3]
    ls, rs = a[_BP_L_SHOULDER], a[_BP_R_SHOULDER]
    out[_NECK, :2] = (ls[:2] + rs[:2]) / 2.0
    out[_NECK, 2] = min(ls[2], rs[2])
    return out


def _as_landmark_array(landmarks33: Any) -> np.ndarray:
    if hasattr(landmarks33, "landmark"):  # mediapipe NormalizedLandmarkList
        landmarks33 = landmarks33.landmark
    if (not isinstance(landmarks33, np.ndarray) and len(landmarks33)
            and hasattr(landmarks33[0], "visibility")):
        landmarks33 = [[lm.x, lm.y, lm.visibility] for lm in landmarks33]
    a = np.asarray(landmarks33, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] != 33 or a.shape[1] < 3:
        raise ValueError(f"expected 33 BlazePose landmarks of (x, y, visibility), got shape {a.shape}")
    return a


def _as_keypoints18(keypoints18: Any) -> np.ndarray:
    k = np.asarray(keypoints18, dtype=np.float32)
    if k.shape != (18, 3):
        raise ValueError(f"expected (18, 3) OpenPose keypoints (x, y, confidence), got shape {k.shape}")
    return k


# ------------------------------------------------------------------------- rendering
def default_thickness(size: tuple[int, int]) -> int:
    """Stick half-width / joint radius in pixels for an (H, W) canvas.

    OpenPose draws with 4 px on ~512 px canvases; keep that ratio, never below 1 px.
    """
    return max(1, int(round(max(size) / 128.0)))


def render_skeleton(
    keypoints18: Any,
    size: tuple[int, int] = (128, 64),
    min_conf: float = 0.3,
    thickness: int | None = None,
) -> Image.Image:
    """Draw an OpenPose-style skeleton on black.

    Args:
        keypoints18: (18, 3) ``(x, y, confidence)`` with x/y fractions of width/height,
            or None (gives an all-black image).
        size: (H, W) of the output in pixels; any size (64x32, 128x64, 512x512...).
        min_conf: joints below this confidence are not drawn, nor limbs touching them.
        thickness: stick half-width and joint radius in output pixels; default scales
            with the canvas (see ``default_thickness``).

    Returns:
        RGB PIL image of size (W, H): limbs as ellipses in 0.6 x OpenPose colour,
        joints as dots in full OpenPose colour.
    """
    return Image.fromarray(_render_uint8(keypoints18, size, min_conf, thickness), mode="RGB")


def render_skeleton_array(
    keypoints18: Any,
    size: tuple[int, int] = (128, 64),
    min_conf: float = 0.3,
    thickness: int | None = None,
) -> np.ndarray:
    """Same drawing as ``render_skeleton`` as a (3, H, W) float32 array in [-1, 1]
    (black background = -1), ready for ``torch.from_numpy`` as a model input."""
    img = _render_uint8(keypoints18, size, min_conf, thickness)
    return (img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0).copy()


def _render_uint8(keypoints18, size, min_conf, thickness) -> np.ndarray:
    import cv2

    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be a positive (H, W), got {size}")
    if keypoints18 is None:
        return np.zeros((h, w, 3), dtype=np.uint8)
    kp = _as_keypoints18(keypoints18)
    t = default_thickness((h, w)) if thickness is None else max(1, int(thickness))
    # Small canvases are drawn supersampled and area-downscaled: integer pixel
    # geometry at 64x32 would otherwise snap joints by up to half a pixel and make
    # 1 px sticks jagged; the anti-aliased edges keep sub-pixel position information.
    ss = 1 if max(h, w) >= 256 else int(math.ceil(256 / max(h, w)))
    H, W = h * ss, w * ss
    canvas = np.zeros((H, W, 3), dtype=np.uint8)
    ok = np.isfinite(kp).all(axis=1) & (kp[:, 2] >= min_conf)
    px = kp[:, 0] * W - 0.5
    py = kp[:, 1] * H - 0.5
    half_w = t * ss
    for i, (a, b) in enumerate(LIMBS):
        if not (ok[a] and ok[b]):
            continue
        mx, my = (px[a] + px[b]) / 2.0, (py[a] + py[b]) / 2.0
        length = math.hypot(px[a] - px[b], py[a] - py[b])
        angle = math.degrees(math.atan2(py[a] - py[b], px[a] - px[b]))
        poly = cv2.ellipse2Poly((int(round(mx)), int(round(my))),
                                (int(round(length / 2.0)), half_w), int(round(angle)), 0, 360, 1)
        color = tuple(int(c * LIMB_COLOR_SCALE) for c in COLORS[i])
        cv2.fillConvexPoly(canvas, poly, color)
    for k in range(18):
        if ok[k]:
            cv2.circle(canvas, (int(round(px[k])), int(round(py[k]))), half_w, COLORS[k], thickness=-1)
    if ss > 1:
        canvas = cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA)
    return canvas


# ----------------------------------------------------------------------------- PCK
def pck(
    pred18: Any,
    ref18: Any,
    thresh: float = 0.2,
    size: tuple[int, int] = (128, 64),
    min_conf: float = 0.5,
    count_missing: bool = False,
) -> tuple[int, int]:
    """Percentage-of-correct-keypoints counts for one person.

    A keypoint is correct when its predicted position lies within
    ``thresh * body_height`` of the reference, distances measured in pixels of an
    (H, W) = ``size`` image (x/y are fractions and crops are not square). The body
    height is the distance from the top-most to the bottom-most confident reference
    keypoint.

    Args:
        pred18, ref18: (18, 3) ``(x, y, confidence)`` arrays; ``pred18`` may be None.
        min_conf: confidence at which a keypoint counts as present (both arrays).
        count_missing: if False (the standard definition) only keypoints confident in
            both arrays are considered; if True every confident reference keypoint is
            considered and a missing/unconfident prediction counts as wrong.

    Returns:
        (num_correct, num_considered); (0, 0) when the reference has fewer than two
        confident keypoints (no body height).
    """
    ref = _as_keypoints18(ref18)
    rc = np.isfinite(ref).all(axis=1) & (ref[:, 2] >= min_conf)
    if rc.sum() < 2:
        return 0, 0
    scale = np.array([size[1], size[0]], dtype=np.float64)
    rxy = ref[:, :2].astype(np.float64) * scale
    idx = np.flatnonzero(rc)
    top, bottom = idx[np.argmin(rxy[idx, 1])], idx[np.argmax(rxy[idx, 1])]
    height = float(np.linalg.norm(rxy[top] - rxy[bottom]))
    if height <= 0:
        return 0, 0
    if pred18 is None:
        return (0, int(rc.sum())) if count_missing else (0, 0)
    pred = _as_keypoints18(pred18)
    pc = np.isfinite(pred).all(axis=1) & (pred[:, 2] >= min_conf)
    both = rc & pc
    d = np.linalg.norm(pred[:, :2].astype(np.float64) * scale - rxy, axis=1)
    correct = int((both & (d <= thresh * height)).sum())
    considered = int(rc.sum()) if count_missing else int(both.sum())
    return correct, considered


# --------------------------------------------------------------------------- results
@dataclass
class PoseResult:
    """Outcome of one extraction.

    keypoints: (18, 3) float32 ``(x, y, confidence)`` in original-image fractions, or
        None when no person was found.
    found: whether a person was found.
    backend: name of the backend that ran.
    message: human-readable outcome, e.g. "no person found in this crop".
    strategy: which attempt succeeded (e.g. "roi@1.5", "detector"), "" if none.
    """

    keypoints: np.ndarray | None
    found: bool
    backend: str
    message: str = ""
    strategy: str = ""


class PoseBackendUnavailable(RuntimeError):
    """A pose backend cannot run here (missing package, weights not downloadable...)."""


NO_PERSON_MESSAGE = "no person found in this crop"


def _to_rgb_array(image: Any) -> np.ndarray:
    """PIL image (any mode) or uint8 array (H, W) / (H, W, 3|4) -> contiguous (H, W, 3) uint8 RGB."""
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"empty image of size {image.size}")
        if image.mode != "RGB":
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # convert("RGB") would clip 16-bit/float data to white; rescale first.
                a = np.asarray(image, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
                image = Image.fromarray(a.astype(np.uint8), mode="L")
            image = flatten_alpha(image).convert("RGB")   # as every other reader of photos does
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8, got dtype {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"numpy images must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"empty image of shape {image.shape}")
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(
        f"expected a PIL.Image.Image (any mode) or a uint8 RGB numpy array, got {type(image).__name__}"
    )


class PoseExtractor:
    """Interface: ``extractor(image) -> PoseResult``.

    ``image`` is a PIL image of any mode and size (or an (H, W, 3) uint8 RGB array).
    Implementations are thread-safe.
    """

    name: str = "base"

    def __call__(self, image: Any) -> PoseResult:
        return self.extract(image)

    def extract(self, image: Any) -> PoseResult:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release backend resources (optional)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------ mediapipe
def protobuf_compat() -> bool:
    """mediapipe 0.10.14 reads its graph outputs with `SymbolDatabase.GetPrototype`, which
    protobuf 5 removed; supply it (as `message_factory.GetMessageClass`) when it is missing.
    With it, the extractor gives the same keypoints on protobuf 6 as on 4.25 (20 training
    crops, max difference 0.0). Returns True if it had to be supplied."""
    from google.protobuf import message_factory, symbol_database
    if hasattr(symbol_database.SymbolDatabase, "GetPrototype"):
        return False
    symbol_database.SymbolDatabase.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)
    return True


# Landmark model only, fed an explicit ROI instead of the person detector's output.
# Node and stream names follow mediapipe's own pose_landmark_cpu graph so the
# ThresholdingCalculator (pose presence) can be tuned by its canonical name.
_ROI_GRAPH = """
input_stream: "IMAGE:image"
input_stream: "ROI:roi"
output_stream: "LANDMARKS:landmarks"
input_side_packet: "MODEL_COMPLEXITY:model_complexity"
input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
node {
  calculator: "PoseLandmarkByRoiCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  output_stream: "LANDMARKS:landmarks"
  input_side_packet: "MODEL_COMPLEXITY:model_complexity"
  input_side_packet: "ENABLE_SEGMENTATION:enable_segmentation"
}
"""
_PRESENCE_PARAM = "poselandmarkbyroicpu__tensorstoposelandmarksandsegmentation__ThresholdingCalculator.threshold"

# Measured on the 400 cuhk03-pair1 query crops (128x64), see scripts/bench_pose.py:
# ROI side = 1.5 x crop height alone finds 98% of people (PCK@0.2 0.94); 1.25 is a bit
# tighter (92%, 0.94), 1.75/2.0 find more of the rest at slightly lower PCK; the
# cascade below finds 99.8%. Upscaling, sharpening or padding before the ROI pass
# changed nothing measurable (the ROI is resampled to 256x256 anyway), so none is done.
DEFAULT_ROI_SCALES: tuple[float, ...] = (1.5, 1.25, 1.75, 2.0)

# Fallback for images that are not tight person crops: the stock detector pipeline on
# a 2x upscaled copy with a border (the detector wants people off the frame edges).
# On the crops this alone found 68% (vs 56% for the stock pipeline on the raw crop).
_DETECTOR_UPSCALE = 2
_DETECTOR_PAD = (0.25, 1.0)  # vertical, horizontal border as fractions of H, W


class MediaPipePose(PoseExtractor):
    """BlazePose (mediapipe 0.10.14 bundled full model, complexity 1) for person crops.

    Strategy per image, cheapest first, stopping at the first success:
      1. landmark model on a centred square ROI of side ``s x image height`` for each
         ``s`` in ``roi_scales`` (the person detector is skipped: a re-ID crop is
         already a person box); ~15-25 ms each on one CPU core;
      2. if ``detector_fallback``: the stock ``mp.solutions.pose.Pose`` pipeline
         (detector + landmarks) on an upscaled, border-padded copy.
    Every attempt is gated by the landmark model's pose-presence score
    (``presence_threshold``), so images without a person return ``found=False``.

    Args:
        roi_scales: ROI side lengths in units of the image height, tried in order;
            empty to use the detector only.
        roi_center: (x, y) ROI centre as fractions of width/height.
        presence_threshold: minimum pose-presence score in [0, 1].
        detector_fallback: try the stock detector pipeline after the ROI attempts.
        min_detection_confidence: person-detector threshold for the fallback.
    """

    name = "mediapipe"

    def __init__(
        self,
        roi_scales: Sequence[float] = DEFAULT_ROI_SCALES,
        roi_center: tuple[float, float] = (0.5, 0.5),
        presence_threshold: float = 0.5,
        detector_fallback: bool = True,
        min_detection_confidence: float = 0.5,
    ):
        try:
            protobuf_compat()
            import mediapipe as mp
            from google.protobuf import text_format
            from mediapipe.framework import calculator_pb2
            from mediapipe.framework.formats import rect_pb2
            from mediapipe.python.solution_base import SolutionBase
        except Exception as e:  # pragma: no cover - depends on the environment
            raise PoseBackendUnavailable(
                f"mediapipe backend unavailable ({type(e).__name__}: {e}); "
                "install mediapipe==0.10.14 (the last release bundling its pose model)"
            ) from e
        self._mp = mp
        self._rect_pb2 = rect_pb2
        self.roi_scales = tuple(float(s) for s in roi_scales)
        if any(s <= 0 for s in self.roi_scales):
            raise ValueError(f"roi_scales must be positive, got {roi_scales}")
        self.roi_center = (float(roi_center[0]), float(roi_center[1]))
        self.presence_threshold = float(presence_threshold)
        self.detector_fallback = bool(detector_fallback)
        self.min_detection_confidence = float(min_detection_confidence)
        # One lock for both graphs: SolutionBase.process keeps per-call state on the
        # instance (output callbacks, timestamps) and is not re-entrant.
        self._lock = threading.Lock()
        self._roi_graph = None
        if not self.roi_scales and not self.detector_fallback:
            raise ValueError("MediaPipePose needs roi_scales, detector_fallback, or both")
        if self.roi_scales:
            cfg = text_format.Parse(_ROI_GRAPH, calculator_pb2.CalculatorGraphConfig())
            self._roi_graph = SolutionBase(
                graph_config=cfg,
                side_inputs={"model_complexity": 1, "enable_segmentation": False},
                calculator_params={_PRESENCE_PARAM: self.presence_threshold},
            )
        self._pose = None  # stock pipeline, created on first fallback use
        self._closed = False
        # mediapipe reads its output protos through an API protobuf 4.x deprecates;
        # the warning is about mediapipe's code, not the caller's.
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                                category=UserWarning)

    # -- helpers
    def _stock_pose(self):
        if self._pose is None:
            self._pose = self._mp.solutions.pose.Pose(
                static_image_mode=True,
                model_complexity=1,  # the only complexity whose model ships in the wheel
                smooth_landmarks=False,
                enable_segmentation=False,
                min_detection_confidence=self.min_detection_confidence,
                min_tracking_confidence=self.presence_threshold,
            )
        return self._pose

    def _run_roi(self, rgb: np.ndarray, scale: float) -> np.ndarray | None:
        h, w = rgb.shape[:2]
        # Square ROI in pixels (the landmark model's input is square), so the
        # normalised width is scale * h / w.
        roi = self._rect_pb2.NormalizedRect(
            x_center=self.roi_center[0], y_center=self.roi_center[1],
            width=scale * h / w, height=scale, rotation=0.0,
        )
        out = self._roi_graph.process({"image": rgb, "roi": roi})
        if out.landmarks is None:
            return None
        return blazepose_to_openpose(out.landmarks)

    def _run_detector(self, rgb: np.ndarray) -> np.ndarray | None:
        import cv2

        h, w = rgb.shape[:2]
        f = _DETECTOR_UPSCALE if max(h, w) < 512 else 1
        x = cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_CUBIC) if f > 1 else rgb
        pv, ph = int(round(h * f * _DETECTOR_PAD[0])), int(round(w * f * _DETECTOR_PAD[1]))
        x = cv2.copyMakeBorder(x, pv, pv, ph, ph, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        res = self._stock_pose().process(x)
        if res.pose_landmarks is None:
            return None
        kp = blazepose_to_openpose(res.pose_landmarks)
        hp, wp = x.shape[:2]
        # padded-image fractions -> original-image fractions
        kp[:, 0] = (kp[:, 0] * wp - ph) / (w * f)
        kp[:, 1] = (kp[:, 1] * hp - pv) / (h * f)
        return kp

    # -- API
    def extract(self, image: Any) -> PoseResult:
        """Find the person's 18 keypoints in ``image`` (PIL, any mode/size)."""
        rgb = _to_rgb_array(image)
        attempts: list[tuple[str, Any]] = [(f"roi@{s:g}", s) for s in self.roi_scales]
        if self.detector_fallback:
            attempts.append(("detector", None))
        with self._lock:
            if self._closed:
                raise RuntimeError("this MediaPipePose has been closed")
            for label, scale in attempts:
                kp = self._run_detector(rgb) if scale is None else self._run_roi(rgb, scale)
                if kp is not None:
                    return PoseResult(kp, True, self.name, f"person found ({label})", label)
        return PoseResult(None, False, self.name, NO_PERSON_MESSAGE, "")

    def close(self) -> None:
        with self._lock:
            for g in (self._roi_graph, self._pose):
                if g is not None:
                    try:
                        g.close()
                    except Exception:
                        pass
            self._roi_graph = None
            self._pose = None
            self._closed = True


# --------------------------------------------------------------------- controlnet_aux
class ControlNetAuxPose(PoseExtractor):
    """OpenPose or DWPose body keypoints via the optional ``controlnet_aux`` package.

    The package (and torch/torchvision with it) is imported only here, and its weights
    are fetched from the Hugging Face Hub on first use; when either fails this raises
    ``PoseBackendUnavailable`` pointing at the bundled mediapipe backend.

    Args:
        model: "openpose" or "dwpose".
        repo: Hub repository holding the annotator weights.
    """

    def __init__(self, model: str = "openpose", repo: str = "lllyasviel/Annotators", **kwargs: Any):
        if model not in ("openpose", "dwpose"):
            raise ValueError(f"model must be 'openpose' or 'dwpose', got {model!r}")
        self.name = f"controlnet_aux:{model}"
        self.model = model
        hint = ('use the bundled mediapipe backend instead: get_pose_extractor("mediapipe") '
                "or --backend mediapipe")
        try:
            import controlnet_aux  # noqa: F401  (imports torchvision in its __init__)
        except BaseException as e:  # noqa: BLE001 - a broken torchvision can raise anything
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise PoseBackendUnavailable(
                f"pose backend {self.name!r} needs the optional 'controlnet_aux' package "
                f"(with a torchvision matching torch), which cannot be imported here "
                f"({type(e).__name__}: {e}); {hint}"
            ) from e
        try:
            if model == "openpose":
                from controlnet_aux import OpenposeDetector

                self._det = OpenposeDetector.from_pretrained(repo, **kwargs)
            else:
                from controlnet_aux import DWposeDetector

                self._det = DWposeDetector(**kwargs)
        except Exception as e:
            raise PoseBackendUnavailable(
                f"pose backend {self.name!r}: could not load its weights ({type(e).__name__}: {e}); "
                f"no network or no cached weights? {hint}"
            ) from e
        self._lock = threading.Lock()

    def extract(self, image: Any) -> PoseResult:
        rgb = _to_rgb_array(image)
        h, w = rgb.shape[:2]
        with self._lock:
            if self.model == "openpose":
                poses = self._det.detect_poses(rgb, include_hand=False, include_face=False)
            else:  # pragma: no cover - depends on the controlnet_aux version
                poses = self._det.detect_poses(rgb)
        best, best_n = None, 0
        for p in poses or []:
            body = getattr(p, "body", None)
            kps = getattr(body, "keypoints", None) or []
            arr = np.zeros((18, 3), dtype=np.float32)
            for i, k in enumerate(kps[:18]):
                if k is not None:
                    arr[i] = (k.x, k.y, getattr(k, "score", 1.0) or 1.0)
            n = int((arr[:, 2] > 0).sum())
            if n > best_n:
                best, best_n = arr, n
        if best is None:
            return PoseResult(None, False, self.name, NO_PERSON_MESSAGE)
        # controlnet_aux keypoints are already normalised to [0, 1] of the input
        # image in recent versions; older ones return pixels.
        if best[:, :2].max() > 1.5:
            best[:, 0] /= w
            best[:, 1] /= h
        return PoseResult(best, True, self.name, "person found")


# ---------------------------------------------------------------------------- factory
_BACKENDS = {
    "mediapipe": lambda **kw: MediaPipePose(**kw),
    "controlnet_aux": lambda **kw: ControlNetAuxPose(**kw),
    "openpose": lambda **kw: ControlNetAuxPose(model="openpose", **kw),
    "dwpose": lambda **kw: ControlNetAuxPose(model="dwpose", **kw),
}


def get_pose_extractor(name: str = "mediapipe", **kwargs: Any) -> PoseExtractor:
    """Build a pose extractor by name: "mediapipe" (default), "controlnet_aux" /
    "openpose" / "dwpose" (optional package). Raises ``PoseBackendUnavailable`` when
    the backend cannot run here and ``ValueError`` for unknown names."""
    key = name.strip().lower().replace("-", "_")
    if key not in _BACKENDS:
        raise ValueError(f"unknown pose backend {name!r}; choose from {', '.join(_BACKENDS)}")
    return _BACKENDS[key](**kwargs)


# ------------------------------------------------------------------- data helpers
_LR_PAIRS = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))


def flip_keypoints(keypoints18: Any) -> np.ndarray:
    """Mirror a pose horizontally: x -> 1 - x and left/right joints swapped.

    Flipping the rendered skeleton image instead would paint the left arm in the
    right arm's colour, teaching a pose-conditioned model the wrong limbs.
    """
    k = _as_keypoints18(keypoints18).copy()
    k[:, 0] = 1.0 - k[:, 0]
    for a, b in _LR_PAIRS:
        k[[a, b]] = k[[b, a]]
    return k


def load_pose_annotations(path) -> dict[str, np.ndarray | None]:
    """A gzip JSON pose file -> {"split_folder/name.jpg": (18, 3) keypoints or None}.

    Reads both the dataset's 33-landmark BlazePose file (`keypoints.json.gz`) and the
    18-keypoint files written by scripts/extract_poses.py (`"format": "openpose18"`).
    """
    import gzip
    import json

    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    if "keypoints" not in doc:
        raise ValueError(f"{path}: not a pose file (no 'keypoints' key)")
    is18 = doc.get("format") == "openpose18"
    out: dict[str, np.ndarray | None] = {}
    for name, kp in doc["keypoints"].items():
        if kp is None:
            out[name] = None
        else:
            out[name] = _as_keypoints18(kp) if is18 else blazepose_to_openpose(kp)
    return out


def is_whole_body(keypoints18: Any, min_visible: int = 14, min_height: float = 0.5, min_width: float = 0.08,
                  min_conf: float = 0.3) -> bool:
    """A pose a user would call a person: at least `min_visible` of the 18 joints confident,
    spread over at least `min_height` of the crop's height (and `min_width` of its width), so
    a collapsed detection (every joint in one spot) or a head and one arm never qualify."""
    k = _as_keypoints18(keypoints18)
    ok = np.isfinite(k).all(axis=1) & (k[:, 2] >= min_conf)
    if ok.sum() < min_visible:
        return False
    xy = k[ok, :2]
    return bool(np.ptp(xy[:, 1]) >= min_height and np.ptp(xy[:, 0]) >= min_width)


def normalised_pose(keypoints18: Any, min_conf: float = 0.3) -> np.ndarray | None:
    """(18, 3) -> (36,) coordinates centred on the neck and scaled by the torso length,
    unconfident joints at 0; None when neck or hips are missing. Used to compare poses."""
    k = _as_keypoints18(keypoints18)
    conf = k[:, 2] >= min_conf
    hips = [i for i in (8, 11) if conf[i]]
    if not conf[1] or not hips:
        return None
    neck = k[1, :2] * np.array([1.0, 2.0])  # fractions of a 1:2 crop -> isotropic units
    hip = np.mean([k[i, :2] for i in hips], axis=0) * np.array([1.0, 2.0])
    torso = max(np.linalg.norm(hip - neck), 1e-3)
    xy = (k[:, :2] * np.array([1.0, 2.0]) - neck) / torso
    xy[~conf] = 0.0
    return xy.reshape(-1).astype(np.float32)

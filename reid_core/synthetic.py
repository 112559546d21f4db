"""A synthetic Market-1501-layout dataset, for tests and the `tiny` end-to-end benchmark.

Each identity is a "person" drawn as a head, a coloured shirt and coloured
trousers on a background; cameras change the background and brightness, shots
jitter the position. Identities are therefore learnable, and the layout, the
names and the junk/distractor rules are exactly Market-1501's.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _keypoints(cx: int, dy: int, size) -> list[list[float]]:
    """The 18 OpenPose keypoints of the figure `_person` draws (it faces the camera)."""
    h, w = size
    pts = [(cx, 16), (cx, 26), (cx - 14, 28), (cx - 15, 48), (cx - 15, 68), (cx + 14, 28),
           (cx + 15, 48), (cx + 15, 68), (cx - 7, 72), (cx - 7, 95), (cx - 7, 116), (cx + 7, 72),
           (cx + 7, 95), (cx + 7, 116), (cx - 3, 14), (cx + 3, 14), (cx - 6, 16), (cx + 6, 16)]
    return [[round(x / w, 4), round((y + dy) / h, 4), 1.0] for x, y in pts]


def _person(rng: np.random.Generator, colours, cam: int, size=(128, 64), pose_out: list | None = None) -> Image.Image:
    h, w = size
    bg = (np.array([90, 110, 100]) + cam * 40 + rng.integers(-15, 16, 3)).clip(0, 255)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in bg))
    d = ImageDraw.Draw(img)
    dx, dy = int(rng.integers(-4, 5)), int(rng.integers(-4, 5))
    cx = w // 2 + dx
    d.ellipse([cx - 7, 8 + dy, cx + 7, 24 + dy], fill=(220, 180, 150))
    d.rectangle([cx - 14, 26 + dy, cx + 14, 70 + dy], fill=tuple(colours[0]))
    d.rectangle([cx - 12, 70 + dy, cx + 12, 118 + dy], fill=tuple(colours[1]))
    if pose_out is not None:
        pose_out.append(_keypoints(cx, dy, size))
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def make_synthetic_market(root, num_train_ids: int = 8, num_test_ids: int = 4, shots: int = 3,
                          seed: int = 0, size=(128, 64), junk: bool = True) -> Path:
    """Write bounding_box_train / bounding_box_test / query under `root`; return it.

    Train ids are 1..num_train_ids; test ids follow. Every id is seen by cameras 1
    and 2 with `shots` images each. Query holds one image per camera per test id;
    the gallery holds the rest, plus a distractor (pid 0000) and a junk (-1) image.
    `poses18.json.gz` holds each image's 18 keypoints, as scripts/extract_poses.py writes them.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, (num_train_ids + num_test_ids, 2, 3))
    poses: dict[str, list] = {}
    for pid in range(1, num_train_ids + num_test_ids + 1):
        for cam in (1, 2):
            for shot in range(shots):
                kp: list = []
                img = _person(rng, palette[pid - 1], cam, size, kp)
                name = f"{pid:04d}_c{cam}s1_{shot:06d}_00.jpg"
                if pid <= num_train_ids:
                    folder = "bounding_box_train"
                else:
                    folder = "query" if shot == 0 else "bounding_box_test"
                img.save(root / folder / name, quality=95)
                poses[f"{folder}/{name}"] = kp[0]
    if junk:
        _person(rng, rng.integers(0, 256, (2, 3)), 1, size).save(root / "bounding_box_test" / "0000_c1s1_000000_00.jpg")
        _person(rng, rng.integers(0, 256, (2, 3)), 2, size).save(root / "bounding_box_test" / "-1_c2s1_000000_00.jpg")
    with gzip.open(root / "poses18.json.gz", "wt") as f:
        json.dump({"format": "openpose18", "coords": "fraction_xy", "keypoints": poses}, f)
    return root

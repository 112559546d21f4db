#!/usr/bin/env python
"""Extract 18 OpenPose keypoints for every image of a Market-1501-layout folder.

Reads DIR/{bounding_box_train,bounding_box_test,query}/*.jpg and writes one gzip JSON
file (default DIR/poses18.json.gz; pass --out when DIR is read-only):

    {"format": "openpose18", "coords": "fraction_xy", "backend": "mediapipe",
     "keypoint_names": [...18 names...],
     "keypoints": {"query/0001_c1s1_000000_00.jpg": [[x, y, c] x 18] | null}}

x, y are fractions of the image width/height, c the keypoint confidence in [0, 1];
null means no person was found. The run is resumable: entries already in the output
file are skipped, and the file is rewritten atomically (tmp file + os.replace) every
--save-every images and on exit, so an interrupted run loses at most that many.

Example:
    python scripts/extract_poses.py --data ../shared/datasets/cuhk03-pair1 --out runs/poses18.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from pathlib import Path


from PIL import Image

from reid_core.io import atomic_write_bytes
from reid_core.pose import KEYPOINT_NAMES, get_pose_extractor


SPLITS = ("bounding_box_train", "bounding_box_test", "query")
OUT_NAME = "poses18.json.gz"


def list_images(data: Path, splits=SPLITS) -> list[str]:
    """Relative keys "split/name.jpg" of every image, sorted, splits in the given order."""
    keys = []
    for split in splits:
        folder = data / split
        if folder.is_dir():
            keys.extend(f"{split}/{p.name}" for p in sorted(folder.glob("*.jpg")))
    return keys


def load_existing(path: Path) -> dict:
    """Keypoints already stored in ``path`` ({} if the file does not exist)."""
    if not path.exists():
        return {}
    try:
        with gzip.open(path, "rt") as f:
            doc = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot resume from {path}: not a readable gzip JSON file ({e}); "
                         "move it away or choose another --out") from e
    if doc.get("format") != "openpose18":
        raise SystemExit(f"{path} exists but is not an openpose18 file (format={doc.get('format')!r})")
    return dict(doc.get("keypoints", {}))


def save(path: Path, keypoints: dict, backend: str) -> None:
    """Write atomically: a reader or a crash never sees a half-written file."""
    doc = {
        "format": "openpose18",
        "coords": "fraction_xy",
        "backend": backend,
        "keypoint_names": list(KEYPOINT_NAMES),
        "keypoints": dict(sorted(keypoints.items())),
    }
    atomic_write_bytes(path, gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), compresslevel=6))


def resolve_out(data: Path, out: Path | None) -> Path:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if not is_writable_dir(data):
        raise SystemExit(f"{data} is read-only: pass --out FILE to choose where to write the poses")
    return data / OUT_NAME


def is_writable_dir(path: Path) -> bool:
    """False for folders without write permission bits even when running as root:
    os.access() says yes to root, but a dataset marked read-only must stay untouched."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(path, os.W_OK)


def _round(kp) -> list:
    return [[round(float(x), 4), round(float(y), 4), round(float(c), 4)] for x, y, c in kp]


def extract(data: Path, out: Path, backend: str = "mediapipe", save_every: int = 500,
            limit: int | None = None, progress: bool = True) -> dict:
    """Fill ``out`` with keypoints for every image under ``data``; returns counts."""
    keys = list_images(data)
    if not keys:
        raise SystemExit(f"no images found under {data} (expected {', '.join(SPLITS)} subfolders of *.jpg)")
    done = load_existing(out)
    todo = [k for k in keys if k not in done]
    if limit is not None:
        todo = todo[:limit]
    counts = {"total": len(keys), "already_done": len(keys) - len([k for k in keys if k not in done]),
              "processed": 0, "found": 0, "errors": 0}
    if not todo:
        return counts

    extractor = get_pose_extractor(backend)
    it = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="poses", unit="img", initial=0)
    since_save = 0
    try:
        for key in it:
            try:
                with Image.open(data / key) as im:
                    res = extractor(im)
                done[key] = _round(res.keypoints) if res.found else None
                counts["found"] += int(res.found)
            except (OSError, ValueError) as e:
                # An unreadable image is recorded as "no pose" and reported, not fatal.
                counts["errors"] += 1
                done[key] = None
                print(f"warning: {key}: {e}", file=sys.stderr)
            counts["processed"] += 1
            since_save += 1
            if since_save >= save_every:
                save(out, done, extractor.name)
                since_save = 0
    finally:
        if since_save:
            save(out, done, extractor.name)
        extractor.close()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="Market-1501-layout folder")
    ap.add_argument("--out", type=Path, default=None, help=f"output gzip JSON (default: DATA/{OUT_NAME})")
    ap.add_argument("--backend", default="mediapipe", help="pose backend (default: mediapipe)")
    ap.add_argument("--save-every", type=int, default=500, help="rewrite the output every N images")
    ap.add_argument("--limit", type=int, default=None, help="process at most N new images (testing)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    data = args.data.resolve()
    if not data.is_dir():
        raise SystemExit(f"--data {data} is not a folder")
    out = resolve_out(data, args.out)
    c = extract(data, out, args.backend, max(1, args.save_every), args.limit, progress=not args.no_progress)
    print(f"{out}: {c['total']} images, {c['already_done']} already done, {c['processed']} processed, "
          f"{c['found']} with a person, {c['errors']} unreadable")
    return 0


if __name__ == "__main__":
    sys.exit(main())

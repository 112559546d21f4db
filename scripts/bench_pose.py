#!/usr/bin/env python
"""Benchmark a pose extractor on the stored 128x64 re-ID crops.

Measures, on one split of a Market-1501-layout folder with reference annotations
(``DIR/keypoints.json.gz``: 33 BlazePose landmarks per image, found on the original,
larger crops):

* found_rate    fraction of the split's crops where a person was found;
* pck02         PCK@0.2 of body height over keypoints confident (>= 0.5) in both the
                prediction and the reference (crops with a reference and a prediction);
* pck02_strict  same, but every confident reference keypoint counts, a missing or
                unconfident prediction (including a person not found) being wrong;
* latency_ms_p50 / latency_ms_p95  per-crop wall time of one extractor call on a
                decoded PIL image (after one warm-up call).

Example:
    python scripts/bench_pose.py --split query --json runs/bench_pose.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from reid_core.data import DEMO_DATA
from reid_core.io import atomic_write_text
from reid_core.pose import blazepose_to_openpose, get_pose_extractor, pck


DEFAULT_DATA = DEMO_DATA
TARGETS = {"found_rate": 0.85, "pck02": 0.80, "latency_ms_p50": 60.0}
REF_MIN_VISIBILITY = 0.5
PCK_SIZE = (128, 64)


def load_reference(data: Path) -> dict:
    path = data / "keypoints.json.gz"
    if not path.exists():
        raise SystemExit(f"reference annotations not found: {path}")
    with gzip.open(path, "rt") as f:
        return json.load(f)["keypoints"]


def run_bench(data: Path, split: str = "query", limit: int | None = None, backend: str = "mediapipe",
              progress: bool = True) -> dict:
    """Run the benchmark; returns the metrics dict (see module docstring)."""
    refs = load_reference(data)
    folder = data / split
    if not folder.is_dir():
        raise SystemExit(f"split folder not found: {folder}")
    names = sorted(p.name for p in folder.glob("*.jpg"))
    if limit:
        names = names[:limit]
    if not names:
        raise SystemExit(f"no *.jpg in {folder}")

    extractor = get_pose_extractor(backend)
    images = []
    for n in names:
        with Image.open(folder / n) as im:
            im.load()
            images.append(im.copy())
    extractor(images[0])  # warm-up: graph start and first XNNPACK allocation

    found = 0
    lat_ms = []
    c_std = n_std = c_strict = n_strict = 0
    n_ref = 0
    strategies: dict[str, int] = {}
    it = zip(names, images)
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(it, total=len(names), desc=f"pose {split}", unit="img")
        except ImportError:
            pass
    for name, img in it:
        t0 = time.perf_counter()
        res = extractor(img)
        lat_ms.append((time.perf_counter() - t0) * 1000.0)
        if res.found:
            found += 1
            strategies[res.strategy] = strategies.get(res.strategy, 0) + 1
        ref = refs.get(f"{split}/{name}")
        if ref is None:
            continue
        n_ref += 1
        ref18 = blazepose_to_openpose(ref)
        pred = res.keypoints if res.found else None
        a, b = pck(pred, ref18, 0.2, size=PCK_SIZE, min_conf=REF_MIN_VISIBILITY)
        c_std, n_std = c_std + a, n_std + b
        a, b = pck(pred, ref18, 0.2, size=PCK_SIZE, min_conf=REF_MIN_VISIBILITY, count_missing=True)
        c_strict, n_strict = c_strict + a, n_strict + b
    extractor.close()

    lat = np.asarray(lat_ms)
    return {
        "data": str(data),
        "split": split,
        "backend": backend,
        "n_images": len(names),
        "n_with_reference": n_ref,
        "found": found,
        "found_rate": found / len(names),
        "pck02": c_std / n_std if n_std else float("nan"),
        "pck02_keypoints": n_std,
        "pck02_strict": c_strict / n_strict if n_strict else float("nan"),
        "pck02_strict_keypoints": n_strict,
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_mean": float(lat.mean()),
        "strategies": dict(sorted(strategies.items(), key=lambda kv: -kv[1])),
    }


def print_table(m: dict) -> None:
    rows = [
        ("found rate", f"{m['found_rate']:.3f}", f"{m['found']}/{m['n_images']}", f">= {TARGETS['found_rate']}"),
        ("PCK@0.2", f"{m['pck02']:.3f}", f"{m['pck02_keypoints']} kp", f">= {TARGETS['pck02']}"),
        ("PCK@0.2 strict", f"{m['pck02_strict']:.3f}", f"{m['pck02_strict_keypoints']} kp", ""),
        ("latency p50 (ms)", f"{m['latency_ms_p50']:.1f}", "", f"<= {TARGETS['latency_ms_p50']:g}"),
        ("latency p95 (ms)", f"{m['latency_ms_p95']:.1f}", "", ""),
    ]
    print(f"\n{m['backend']} on {m['data']}/{m['split']} ({m['n_images']} crops, "
          f"{m['n_with_reference']} with a reference pose)")
    print(f"{'metric':<18}{'value':>8}  {'count':<12}{'target':<8}")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>8}  {r[2]:<12}{r[3]:<8}")
    print("successful strategy:", ", ".join(f"{k} {v}" for k, v in m["strategies"].items()) or "-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Market-1501-layout folder with keypoints.json.gz")
    ap.add_argument("--split", default="query", help="subfolder to score (default: query)")
    ap.add_argument("--limit", type=int, default=None, help="first N crops only (sorted by name)")
    ap.add_argument("--backend", default="mediapipe", help="pose backend (default: mediapipe)")
    ap.add_argument("--json", type=Path, default=None, help="write the metrics to this JSON file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    m = run_bench(args.data.resolve(), args.split, args.limit, args.backend, progress=not args.no_progress)
    print_table(m)
    if args.json:
        atomic_write_text(args.json, json.dumps(m, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time to quality: Img2ID mAP and identity consistency against training minutes.

    python scripts/bench_curve.py --run runs/cpu [--judge weights] [--data ../shared/datasets/cuhk03-pair1]

Evaluates every snapshot a run kept (`--set snapshot_every=N` while training; see
reid_core/training/snapshots.py): Img2ID's mAP / Rank-1 on the test split (Market
protocol) and the judge's top-1 on generated images of a spread of training identities.
Writes docs/time_to_quality.json and the plot docs/img/time_to_quality.png, so anyone
can see how far more CPU time would go.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reid_core.config import Preset  # noqa: E402
from reid_core.engine import ReIDEngine  # noqa: E402
from reid_core.evaluate import evaluate, identity_consistency  # noqa: E402
from reid_core.training.snapshots import list_snapshots  # noqa: E402
from reid_core.weights import load_component  # noqa: E402


def snapshot_engine(snapshot: Path, run: Path) -> ReIDEngine:
    """An engine on a snapshot's generator and Img2ID (the run's final prior and Img2Noise
    fill the other places; nothing measured here uses them)."""
    preset = Preset.load(run / "preset.json")
    pids = json.loads((run / "identities.json").read_text())["pids"]
    return ReIDEngine(preset, load_component(snapshot, "generator"), load_component(run, "prior"),
                      load_component(snapshot, "img2id"), load_component(run, "img2noise"), pids)


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = [p["minutes"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(m, [100 * p["mAP"] for p in points], "o-", label="Img2ID mAP (test)")
    ax.plot(m, [100 * p["rank1"] for p in points], "s--", label="Img2ID Rank-1 (test)")
    ax.plot(m, [100 * p["consistency_top1"] for p in points], "^-", label="identity consistency (judge top-1)")
    ax.set_xlabel("training minutes of the joint stage (1 CPU thread)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title("Time to quality on cuhk03-pair1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--judge", type=Path, default=None, help="weights folder whose baseline judges (default: --run)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cuhk03-pair1")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--identities", type=int, default=160, help="training identities generated per snapshot")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    judge = load_component(a.judge or a.run, "baseline")
    points = []
    for snap in list_snapshots(a.run):
        meta = json.loads((snap / "meta.json").read_text())
        t0 = time.perf_counter()
        engine = snapshot_engine(snap, a.run)
        reid = evaluate(engine, a.data, "img2id", progress=False)
        rows = np.linspace(0, engine.num_identities - 1, a.identities).astype(int)
        cons = identity_consistency(engine, judge, a.data, rows=rows, seeds=range(a.seeds))
        points.append({**meta, "mAP": reid["mAP"], "rank1": reid["rank1"], "consistency_top1": cons["top1"],
                       "diversity": cons["diversity"]})
        print(f"{snap.parent.name}/{snap.name}: {meta['minutes']:.1f} min  mAP {reid['mAP']:.1%}  "
              f"R1 {reid['rank1']:.1%}  consistency {cons['top1']:.1%}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    (a.out / "time_to_quality.json").write_text(json.dumps({"run": str(a.run), "points": points}, indent=2))
    plot(points, a.out / "img" / "time_to_quality.png")
    print(f"wrote {a.out / 'img' / 'time_to_quality.png'}")


if __name__ == "__main__":
    main()

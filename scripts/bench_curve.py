"""Time to quality: Img2ID mAP and identity consistency against training minutes.

    python scripts/bench_curve.py --run runs/cpu [--judge weights] [--data ../shared/datasets/cuhk03-pair1]
    python scripts/bench_curve.py --run runs/a:1500 runs/b runs/c --judge runs/judge --steps 500 1500 ...

Evaluates the snapshots a run kept (`--set snapshot_every=N` while training; see
reid_core/training/snapshots.py): Img2ID's mAP / Rank-1 on the test split (Market
protocol) and the judge's top-1 on generated images of a spread of training identities.
Several runs make a chain, each continued from the one before with `--init`: their
minutes add up, and `RUN:STEP` keeps a run's snapshots only up to the step the next
run started from.
Writes docs/time_to_quality.json and the plot docs/img/time_to_quality.png, so anyone
can see how far more CPU time would go.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


from reid_core.config import Preset
from reid_core.data import DEMO_DATA
from reid_core.engine import ReIDEngine
from reid_core.evaluate import evaluate, identity_consistency
from reid_core.training.snapshots import list_snapshots
from reid_core.weights import load_component

ROOT = Path(__file__).resolve().parents[1]


def stand_in(component: str, preset: Preset):
    """A tiny untrained network for an engine place that a measurement never calls."""
    from reid_core.models import IdentityEncoder, IdentityPrior, NoiseEncoder
    small = dict(block_out_channels=(8, 16), layers_per_block=1)
    return {"prior": lambda: IdentityPrior(id_dim=preset.id_dim, hidden_dim=8, num_layers=1),
            "img2noise": lambda: NoiseEncoder(sample_size=preset.image_size, **small),
            "img2id": lambda: IdentityEncoder(sample_size=preset.image_size, id_dim=preset.id_dim, **small)}[component]()


def snapshot_engine(snapshot: Path, run: Path) -> ReIDEngine:
    """An engine on a snapshot's generator and Img2ID. Nothing measured here uses the prior
    or Img2Noise: the run's own fill their places, or stand-ins while it has none."""
    from reid_core.weights import has_component
    preset = Preset.load(run / "preset.json")
    pids = json.loads((run / "identities.json").read_text())["pids"]
    prior, img2noise = (load_component(run, c) if has_component(run, c) else stand_in(c, preset)
                        for c in ("prior", "img2noise"))
    return ReIDEngine(preset, load_component(snapshot, "generator"), prior,
                      load_component(snapshot, "img2id"), img2noise, pids)


def chain_snapshots(runs: list[str]) -> list[tuple[Path, Path, int, float]]:
    """(snapshot, run, step, minutes since the chain began) for a chain of runs `RUN[:STEP]`."""
    out, offset = [], 0.0
    for spec in runs:
        run, _, upto = spec.partition(":")
        run = Path(run)
        last = 0.0
        for snap in list_snapshots(run):
            meta = json.loads((snap / "meta.json").read_text())
            if upto and meta["step"] > int(upto):
                continue
            out.append((snap, run, meta["step"], offset + meta["minutes"]))
            last = max(last, meta["minutes"])
        offset += last
    return out


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
    ap.add_argument("--run", nargs="+", required=True,
                    help="a run, or a chain of runs each continued from the last (RUN or RUN:LAST_STEP)")
    ap.add_argument("--every", type=int, default=1,
                    help="evaluate every n-th snapshot of the chain (and always the last)")
    ap.add_argument("--judge", type=Path, default=None, help="weights folder whose baseline judges (default: --run)")
    ap.add_argument("--data", type=Path, default=DEMO_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--identities", type=int, default=160, help="training identities generated per snapshot")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    judge = load_component(a.judge or Path(a.run[-1].partition(":")[0]), "baseline")
    chain = chain_snapshots(a.run)
    chain = [c for i, c in enumerate(chain) if i % a.every == 0 or i == len(chain) - 1]
    # points already measured (same run and step) are kept, so a chain can grow run by run
    saved = a.out / "time_to_quality.json"
    known = {(p["run"], p["step"]): p for p in json.loads(saved.read_text())["points"]} if saved.exists() else {}
    points = []
    for snap, run, step, minutes in chain:
        meta = {"run": str(run), "step": step, "minutes": round(minutes, 3)}
        if (str(run), step) in known:
            points.append({**known[(str(run), step)], **meta})
            continue
        t0 = time.perf_counter()
        engine = snapshot_engine(snap, run)
        reid = evaluate(engine, a.data, "img2id", progress=False)
        rows = np.linspace(0, engine.num_identities - 1, a.identities).astype(int)
        cons = identity_consistency(engine, judge, a.data, rows=rows, seeds=range(a.seeds))
        points.append({**meta, "mAP": reid["mAP"], "rank1": reid["rank1"], "consistency_top1": cons["top1"],
                       "diversity": cons["diversity"]})
        print(f"{run.name} {step}: {minutes:.1f} min  mAP {reid['mAP']:.1%}  "
              f"R1 {reid['rank1']:.1%}  consistency {cons['top1']:.1%}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        saved.write_text(json.dumps({"runs": a.run, "identities": a.identities, "seeds": a.seeds, "points": points}, indent=2))
    saved.write_text(json.dumps({"runs": a.run, "identities": a.identities, "seeds": a.seeds, "points": points}, indent=2))
    plot(points, a.out / "img" / "time_to_quality.png")
    print(f"wrote {a.out / 'img' / 'time_to_quality.png'}")


if __name__ == "__main__":
    main()

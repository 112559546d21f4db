"""The recipe ablation: paper recipe / table-rate fix / joint, same data, same CPU minutes.

    python scripts/bench_ablation.py --runs runs/ablation/paper runs/ablation/table_rate runs/ablation/joint \
        [--judge weights] [--seeds 2]

Each run is a weights folder trained by `python -m reid_core.training` (the commands are in
docs/BENCHMARKS.md). For each: identity consistency (the judge's top-1 on every training
identity x `--seeds` noises), Img2ID mAP / Rank-1 on the test split, and the training
minutes of the stages that made the generator and Img2ID. Writes docs/ablation.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reid_core.engine import ReIDEngine  # noqa: E402
from reid_core.evaluate import evaluate, identity_consistency  # noqa: E402
from reid_core.weights import load_component  # noqa: E402

RECIPE_STAGES = ("joint", "generator", "img2id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--judge", type=Path, default=ROOT / "weights")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cuhk03-pair1")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "ablation.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    judge = load_component(a.judge, "baseline")
    rows = json.loads(a.json.read_text()) if a.json.exists() else {}
    for run in a.runs:
        engine = ReIDEngine.from_pretrained(run, load_baseline=False)
        log = json.loads((run / "training_log.json").read_text())
        reid = evaluate(engine, a.data, "img2id", progress=False)
        cons = identity_consistency(engine, judge, a.data, seeds=range(a.seeds))
        p = engine.preset
        rows[run.name] = {
            "run": str(run), "recipe": p.recipe, "conditioning": p.conditioning,
            "table_lr": p.table_lr, "gen_K": p.gen_K, "guidance_scale": engine.guidance_scale,
            "minutes": round(sum(log[s]["minutes"] for s in RECIPE_STAGES if s in log), 1),
            "consistency_top1": cons["top1"], "consistency_top5": cons["top5"], "diversity": cons["diversity"],
            "seed_agreement": cons["seed_agreement"], "mAP": reid["mAP"], "rank1": reid["rank1"]}
        print(run.name, rows[run.name], flush=True)
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

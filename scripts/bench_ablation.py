"""The recipe ablation: paper recipe / table-rate fix / joint, same data, comparable CPU minutes.

    python scripts/bench_ablation.py --judge runs/judge2 \
        --row "paper recipe=runs/ablation/paper" \
        --row "joint=runs/jointvs/snapshots/joint/0000250+35.0" [--identities 100 --seeds 4]

A row is a training run folder (its generator checkpoint, EMA weights, is read when the
run stopped before it finished), a snapshot folder (`--set snapshot_every=N`) or a weights
folder; `+MINUTES` adds the minutes of the runs it was continued from (`--init`). For each: identity consistency (the judge's top-1 on generated images of a spread of
training identities x `--seeds` noises), Img2ID mAP / Rank-1 on the test split when the row
has an Img2ID, and the training minutes it took. Rows are merged into docs/ablation.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


from bench_curve import chain_snapshots, snapshot_engine, stand_in
from reid_core.config import Preset
from reid_core.data import DEMO_DATA
from reid_core.evaluate import evaluate, identity_consistency
from reid_core.weights import has_component, load_component

ROOT = Path(__file__).resolve().parents[1]


def generator_from_checkpoint(run: Path):
    """The EMA generator of a run's `generator` stage checkpoint (a run stopped early), and its minutes."""
    from reid_core.training.common import new_generator
    preset = Preset.load(run / "preset.json")
    ids = json.loads((run / "identities.json").read_text())["pids"]
    state = torch.load(run / "checkpoints" / "generator.pt", map_location="cpu", weights_only=True)
    gen = new_generator(preset, len(ids))
    gen.load_state_dict(state["modules"]["generator"])
    rest = [p for n, p in gen.named_parameters() if not n.startswith("identity_embedding")]
    with torch.no_grad():  # the stage keeps an EMA of every weight but the table (generator.py)
        for p, s in zip(rest, state["ema"]["shadow_params"], strict=True):
            p.copy_(s)
    return gen.eval(), preset, ids, state["seconds"] / 60, state["step"]


def row_engine(path: Path):
    """(engine, minutes, step, has_img2id) for a run, snapshot or weights folder."""
    from reid_core.engine import ReIDEngine
    if (path / "meta.json").exists():                       # a snapshot: its run is two levels up
        run = path.parents[2]
        meta = json.loads((path / "meta.json").read_text())
        minutes = next(m for s, r, st, m in chain_snapshots([str(run)]) if s == path)
        return snapshot_engine(path, run), minutes, meta["step"], True
    if (path / "checkpoints" / "generator.pt").exists() and not has_component(path, "generator"):
        gen, preset, ids, minutes, step = generator_from_checkpoint(path)
        # the run has no Img2ID yet (the paper recipe trains it after the generator): untrained
        # stand-ins fill the engine's other places; nothing measured here uses them
        engine = ReIDEngine(preset, gen, stand_in("prior", preset), stand_in("img2id", preset),
                            stand_in("img2noise", preset), ids)
        return engine, minutes, step, False
    log = json.loads((path / "training_log.json").read_text())
    minutes = sum(log[s]["minutes"] for s in ("joint", "generator", "img2id") if s in log)
    return ReIDEngine.from_pretrained(path, load_baseline=False), minutes, None, True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--row", action="append", required=True, help="NAME=FOLDER[+MINUTES_BEFORE]")
    ap.add_argument("--judge", type=Path, default=ROOT / "weights")
    ap.add_argument("--data", type=Path, default=DEMO_DATA)
    ap.add_argument("--identities", type=int, default=100, help="training identities generated per row")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "ablation.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    judge = load_component(a.judge, "baseline")
    rows = json.loads(a.json.read_text()) if a.json.exists() else {}
    for spec in a.row:
        name, _, folder = spec.partition("=")
        folder, _, before = folder.partition("+")
        engine, minutes, step, has_img2id = row_engine(Path(folder))
        minutes += float(before or 0)
        ids = np.linspace(0, engine.num_identities - 1, a.identities).astype(int)
        cons = identity_consistency(engine, judge, a.data, rows=ids, seeds=range(a.seeds))
        reid = evaluate(engine, a.data, "img2id", progress=False) if has_img2id else {}
        p = engine.preset
        rows[name] = {
            "folder": folder, "step": step, "recipe": p.recipe, "conditioning": p.conditioning,
            "prediction_type": p.prediction_type, "identity_map_levels": p.identity_map_levels,
            "id_dim": p.id_dim, "table_lr": p.table_lr, "gen_K": p.gen_K, "guidance_scale": engine.guidance_scale,
            "minutes": round(minutes, 1), "identities": a.identities, "seeds": a.seeds,
            "consistency_top1": cons["top1"], "consistency_top5": cons["top5"], "diversity": cons["diversity"],
            "seed_agreement": cons["seed_agreement"], "mAP": reid.get("mAP"), "rank1": reid.get("rank1")}
        print(name, rows[name], flush=True)
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

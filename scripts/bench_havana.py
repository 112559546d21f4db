"""HAVANA's variational head vs the same head trained plainly, same budget (issue 11, item 5).

    python scripts/bench_havana.py [--weights weights] [--data DIR] [--steps N] [--out docs/havana.json]

Both heads train on the frozen pooled feature of the shipped Img2ID with the same steps, batch,
seed and learning rate (`reid_core/training/uncertainty.py`); the test feature is z_mu, ranked
on the cuhk03-pair1 test split (Market protocol) beside the shipped Img2ID head. Nothing is
chosen on the test split. `--save-to WEIGHTS` keeps the variational head in a weights folder
(as the `uncertainty` component) when its mAP is not below the plain head's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from reid_core.data import DEMO_DATA
from reid_core.engine import ReIDEngine
from reid_core.evaluate import evaluate
from reid_core.io import atomic_write_json
from reid_core.training.common import load_train_data
from reid_core.training.uncertainty import train_uncertainty
from reid_core.weights import save_component

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--data", type=Path, default=DEMO_DATA)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's uncertainty_steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "havana.json")
    ap.add_argument("--save-to", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = ReIDEngine.from_pretrained(a.weights, device="cpu")
    preset = engine.preset
    if a.steps:
        preset = dataclasses.replace(preset, uncertainty_steps=a.steps)
    data = load_train_data(a.data, preset)
    res = {"command": "python scripts/bench_havana.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
           "steps": preset.uncertainty_steps, "batch": "16 x 4", "lr": preset.uncertainty_lr,
           "img2id": evaluate(engine, a.data, "img2id", progress=False)}
    heads = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, variational in (("plain", False), ("havana", True)):
            p = dataclasses.replace(preset, uncertainty_variational=variational)
            t = time.perf_counter()
            heads[name] = train_uncertainty(data, engine.img2id, p, Path(tmp) / name)
            minutes = (time.perf_counter() - t) / 60
            engine.uncertainty = heads[name]
            res[name] = {**evaluate(engine, a.data, "havana", progress=False), "minutes": round(minutes, 2)}
            print(f"{name}: mAP {res[name]['mAP']:.2%}  Rank-1 {res[name]['rank1']:.2%}  ({minutes:.1f} min)")
    res["kept"] = res["havana"]["mAP"] >= res["plain"]["mAP"]
    if a.save_to is not None:
        if res["kept"]:
            shutil.rmtree(a.save_to / "uncertainty", ignore_errors=True)
            save_component(heads["havana"], a.save_to, "uncertainty")
            print(f"saved the variational head to {a.save_to / 'uncertainty'}")
        else:
            print("the variational head fell behind the plain one: not saved")
    atomic_write_json(a.out, res)
    print(json.dumps({k: res[k]["mAP"] for k in ("img2id", "plain", "havana")}, indent=1), "kept:", res["kept"])


if __name__ == "__main__":
    main()

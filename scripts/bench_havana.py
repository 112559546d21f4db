"""HAVANA's variational head vs the same head trained plainly, same budget (issue 11, item 5),
and whether its sigma means anything.

    python scripts/bench_havana.py [--weights weights] [--data DIR] [--run-out runs/unc] [--out docs/havana.json]

All heads read the frozen pooled feature of the shipped Img2ID (computed once) and train for the
preset's `uncertainty_steps` with the same batches, seed and learning rate
(`reid_core/training/uncertainty.py`). Their test feature is z_mu.

1. The issue's comparison, on the test split: the plain head and HAVANA's head with the paper's
   settings (the preset's defaults: beta 1, alpha 0.2, margin 0.5) train on all training
   identities; test mAP / Rank-1 of z_mu; HAVANA's head is kept only if not below the plain one.
   Also measured: how well its certainty (minus the mean sigma of a query) tells a right Rank-1
   match from a wrong one (ROC AUC; 0.5 = says nothing), against Img2ID's Rank-1 (what the apps
   show it beside) and against the head's own.
2. An attempt to make sigma say more, chosen on TRAINING identities only: the variants below
   train on the training split minus 100 held-out identities (`validation_split`) and are
   scored there (z_mu mAP, certainty AUC); the one with the best AUC among those whose mAP is
   not below the plain head's is then measured on the test split like the paper's head.
The paper's head, if kept, is written to `--run-out` as the `uncertainty` component (add it with
`scripts/export_weights.py --run RUN_OUT --only uncertainty --fp16`).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from reid_core.data import DEMO_DATA, load_split, relabel, validation_split
from reid_core.engine import ReIDEngine
from reid_core.io import atomic_write_json
from reid_core.metrics import evaluate_rank, l2_normalize, pairwise_distance
from reid_core.training.common import TrainData, load_train_data
from reid_core.training.joint import pooled_features
from reid_core.training.uncertainty import train_uncertainty

ROOT = Path(__file__).resolve().parents[1]
PAPER = "havana (paper: beta 1)"
VARIANTS = {  # name -> preset overrides
    "plain": dict(uncertainty_variational=False),
    PAPER: dict(uncertainty_beta=1.0),
    "havana, beta 0.1": dict(uncertainty_beta=0.1),
    "havana, beta 0.01": dict(uncertainty_beta=0.01),
    "havana, beta 0.01, CE on a sampled z": dict(uncertainty_beta=0.01, uncertainty_sampled_ce=True),
}


@torch.no_grad()
def head_features(head, pooled: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """z_mu (unit length) and mean sigma of each photo, averaged with its mirror image."""
    head.eval()
    (m0, s0), (m1, s1) = head(pooled[0]), head(pooled[1])
    mu = l2_normalize(((m0 + m1) / 2).numpy())
    sigma = ((s0 + s1) / 2).mean(1).numpy() if s0 is not None else np.full(len(mu), np.nan)
    return mu, sigma


def rank1_right(qf, gf, qp, gp, qc, gc) -> np.ndarray:
    d = pairwise_distance(qf, gf)
    d[(qp[:, None] == gp[None]) & (qc[:, None] == gc[None])] = np.inf    # Market protocol
    return gp[d.argmin(1)] == qp


def certainty_auc(right: np.ndarray, sigma: np.ndarray) -> float | None:
    if np.isnan(sigma).any() or right.all() or not right.any():
        return None
    return float(roc_auc_score(right, -sigma))


def scores(head, q_pooled, g_pooled, q, g, reference_right=None) -> dict:
    qm, qs = head_features(head, q_pooled)
    gm, _ = head_features(head, g_pooled)
    cmc, mAP = evaluate_rank(pairwise_distance(qm, gm), q[0], g[0], q[1], g[1])
    own = rank1_right(qm, gm, q[0], g[0], q[1], g[1])
    out = {"mAP": float(mAP), "rank1": float(cmc[0]), "auc_own_rank1": certainty_auc(own, qs),
           "mean_sigma": float(np.nanmean(qs)) if not np.isnan(qs).all() else None}
    if reference_right is not None:
        out["auc_img2id_rank1"] = certainty_auc(reference_right, qs)
    return out


def subset(data: TrainData, idx: np.ndarray) -> TrainData:
    labels, _ = relabel(data.pids[idx])
    return TrainData(data.images[idx], data.crops[idx], labels, data.pids[idx], data.camids[idx],
                     [data.paths[i] for i in idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--data", type=Path, default=DEMO_DATA)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "havana.json")
    ap.add_argument("--run-out", type=Path, default=None, help="write the paper's head here as a run component")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = ReIDEngine.from_pretrained(a.weights, device="cpu")
    preset = engine.preset
    data = load_train_data(a.data, preset)
    pooled = pooled_features(engine.img2id, data.crops, "cpu")
    res = {"command": "python scripts/bench_havana.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
           "steps": preset.uncertainty_steps, "batch": "16 x 4", "lr": preset.uncertainty_lr, "validation": {}}

    # the sweep, on held-out TRAINING identities
    rest, vq, vg = validation_split(data.pids, data.camids, num_ids=100, seed=0)
    vqi, vgi = (data.pids[vq], data.camids[vq]), (data.pids[vg], data.camids[vg])
    with tempfile.TemporaryDirectory() as tmp:
        for name, over in VARIANTS.items():
            p = dataclasses.replace(preset, **over)
            head = train_uncertainty(subset(data, rest), engine.img2id, p, Path(tmp) / str(len(res["validation"])),
                                     pooled=pooled[:, rest], progress=False)
            res["validation"][name] = {**scores(head, pooled[:, vq], pooled[:, vg], vqi, vgi), "overrides": over}
            print(name, res["validation"][name], flush=True)
    val = res["validation"]
    fair = [n for n in val if n != "plain" and val[n]["mAP"] >= val["plain"]["mAP"]] or \
        [n for n in val if n != "plain"]
    chosen = max(fair, key=lambda n: val[n]["auc_own_rank1"] or 0)
    res["sweep_choice"] = chosen

    # test: plain, the paper's head and the sweep's choice on all training identities
    q = load_split(a.data, "query", engine.embed_size, progress=False)
    g = load_split(a.data, "gallery", engine.embed_size, progress=False)
    qp, gp = pooled_features(engine.img2id, q.images, "cpu"), pooled_features(engine.img2id, g.images, "cpu")
    img2id_right = rank1_right(engine.embed_arrays(q.images), engine.embed_arrays(g.images), q.pids, g.pids,
                               q.camids, g.camids)
    res["img2id_rank1"] = float(img2id_right.mean())
    res["test"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(dict.fromkeys(("plain", PAPER, chosen))):
            p = dataclasses.replace(preset, **VARIANTS[name])
            out = a.run_out if name == PAPER and a.run_out is not None else Path(tmp) / str(i)
            t = time.perf_counter()
            head = train_uncertainty(data, engine.img2id, p, out, pooled=pooled, progress=False)
            res["test"][name] = {**scores(head, qp, gp, (q.pids, q.camids), (g.pids, g.camids), img2id_right),
                                 "minutes": round((time.perf_counter() - t) / 60, 2)}
            print("test", name, res["test"][name], flush=True)
    res["kept"] = res["test"][PAPER]["mAP"] >= res["test"]["plain"]["mAP"]
    res["paper"] = PAPER
    atomic_write_json(a.out, res)
    print("sweep's choice:", chosen, "| HAVANA (paper) kept:", res["kept"])


if __name__ == "__main__":
    main()

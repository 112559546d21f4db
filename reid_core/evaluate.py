"""Re-ID evaluation on a Market-1501-layout test split (query vs bounding_box_test).

    python -m reid_core.evaluate --weights weights --data DIR [--model img2id|baseline] [--json FILE]

Prints mAP and CMC Rank-1/5/10 under the Market-1501 protocol (same pid and same
camera removed from each query's gallery) and writes them as fractions in [0, 1].
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .data import load_split
from .metrics import evaluate_rank, pairwise_distance, rank_summary


def features(engine, images_u8: np.ndarray, model: str) -> np.ndarray:
    if model == "img2id":
        return engine.embed_arrays(images_u8)
    if model == "baseline":
        if engine.baseline is None:
            raise ValueError("these weights hold no baseline model (train it with --stages baseline)")
        from .baseline import embed_images
        return embed_images(engine.baseline, images_u8, device=engine.device)
    raise ValueError(f"unknown model {model!r}")


def evaluate(engine, data, model: str = "img2id", progress: bool = True) -> dict:
    """Rank metrics of one model on the query/gallery splits of `data`."""
    size = engine.image_size
    q = load_split(data, "query", size, progress=progress)
    g = load_split(data, "gallery", size, progress=progress)
    t0 = time.perf_counter()
    qf, gf = features(engine, q.images, model), features(engine, g.images, model)
    # BNNeck features are compared by cosine, as BoT does; Img2ID by Euclidean distance (paper).
    metric = "cosine" if model == "baseline" else "euclidean"
    dist = pairwise_distance(qf, gf, metric=metric)
    cmc, mAP = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids)
    out = rank_summary(cmc, mAP)
    out.update(model=model, metric=metric, num_query=len(q), num_gallery=len(g),
               seconds=time.perf_counter() - t0)
    return out


def main(argv=None) -> None:
    from .engine import ReIDEngine
    p = argparse.ArgumentParser(prog="python -m reid_core.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="img2id", choices=["img2id", "baseline"])
    p.add_argument("--json", default=None, help="write the metrics to this file")
    a = p.parse_args(argv)
    engine = ReIDEngine.from_pretrained(a.weights)
    res = evaluate(engine, a.data, a.model)
    print(f"{a.model}: mAP {res['mAP']:.2%}  Rank-1 {res['rank1']:.2%}  Rank-5 {res['rank5']:.2%}  "
          f"Rank-10 {res['rank10']:.2%}  ({res['num_query']} queries, {res['num_gallery']} gallery)")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Figures of the engine issue, measured on this machine.

    python scripts/bench_engine.py [--json FILE] [--threads 2]

1. `tiny` end to end (generator, prior, Img2ID, Img2Noise + evaluate) on a synthetic
   Market-layout folder: wall time (target < 60 s on 2 cores).
2. A sampled image with a fixed seed: bit-identical across two runs and after save -> load.
3. `paper` preset at 64x32 on CPU: one image in 10 DDIM steps (p50/p95; target <= 150 ms p50)
   and Img2ID throughput on batches of 256 (target >= 300 images/s). Timing does not depend on
   the weights' values, so freshly initialised networks of the preset's shapes are timed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


from reid_core.config import get_preset
from reid_core.diffusion import ddim_sample
from reid_core.engine import ReIDEngine
from reid_core.evaluate import evaluate
from reid_core.models import IdentityEncoder, IdentityUNet
from reid_core.synthetic import make_synthetic_market
from reid_core.training import train
from timing import timeit  # scripts/timing.py


def bench_tiny(tmp: Path) -> dict:
    data = make_synthetic_market(tmp / "market", num_train_ids=16, num_test_ids=8)
    t0 = time.perf_counter()
    out = train(data, get_preset("tiny"), tmp / "tiny", stages=("joint", "prior", "img2noise"),
                progress=False, device="cpu")
    engine = ReIDEngine.from_pretrained(out, device="cpu")
    metrics = evaluate(engine, data, progress=False)
    wall = time.perf_counter() - t0
    a = np.asarray(engine.generate(0, seed=123)[0])
    b = np.asarray(engine.generate(0, seed=123)[0])
    c = np.asarray(ReIDEngine.from_pretrained(out, device="cpu").generate(0, seed=123)[0])
    return {"tiny_end_to_end_s": wall, "tiny_mAP": metrics["mAP"],
            "bit_identical_two_runs": bool(np.array_equal(a, b)),
            "bit_identical_after_reload": bool(np.array_equal(a, c))}


@torch.inference_mode()
def bench_paper_speed(repeats: int = 30) -> dict:
    p = get_preset("paper")
    torch.manual_seed(0)
    gen = IdentityUNet(sample_size=p.image_size, block_out_channels=p.channels,
                       layers_per_block=p.layers_per_block, id_dim=p.id_dim, num_identities=0).eval()
    enc = IdentityEncoder(sample_size=p.image_size, block_out_channels=p.enc_channels,
                          layers_per_block=p.enc_layers_per_block, id_dim=p.id_dim).eval()
    ident = torch.randn(1, p.id_dim)
    noise = torch.randn(1, 3, *p.image_size)
    def sample_fp32():
        ddim_sample(gen, ident, noise, p.sample_steps)

    def sample_bf16():  # what ReIDEngine(precision="bf16") does
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ddim_sample(gen, ident, noise, p.sample_steps)

    timings = {name: timeit(fn, repeats, warmup=3) for name, fn in (("fp32", sample_fp32), ("bf16", sample_bf16))}
    x = torch.rand(256, 3, *p.image_size) * 2 - 1
    enc(x)
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < 5.0:
        enc(x)
        n += len(x)
    ips = n / (time.perf_counter() - t)
    return {"paper_generate_1": timings["fp32"], "paper_generate_1_bf16": timings["bf16"],
            "paper_img2id_images_per_s": ips,
            "paper_generator_params_M": sum(q.numel() for q in gen.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-tiny", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"threads": a.threads, "torch": torch.__version__}
    if not a.skip_tiny:
        with tempfile.TemporaryDirectory() as tmp:
            res.update(bench_tiny(Path(tmp)))
    res.update(bench_paper_speed())
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Latency measurement shared by the benchmark scripts."""
from __future__ import annotations

import time

import numpy as np


def timeit(fn, repeats: int, warmup: int = 2) -> dict:
    """Run `fn` `warmup` times untimed, then `repeats` times: p50/p95 in milliseconds."""
    for _ in range(warmup):
        fn()
    xs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    xs = np.asarray(xs) * 1000
    return {"p50_ms": float(np.percentile(xs, 50)), "p95_ms": float(np.percentile(xs, 95)), "n": repeats}

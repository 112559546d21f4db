"""scripts/benchmark.py's record: a merged run keeps, per section, the command that measured it."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import script_module


@pytest.fixture(scope="module")
def bench():
    with script_module("benchmark") as mod:  # it imports scripts/timing.py
        yield mod


def test_a_merged_run_records_each_sections_own_command(bench):
    sections = ("reid", "consistency", "swap", "speed")
    first = {"command": "A", "commands": {"reid": "A", "consistency": "A", "speed": "A"},
             "reid": 1, "consistency": 2, "speed": 3, "machine": "m"}
    second = bench.merged(first, {"command": "B", "commands": {"consistency": "B", "swap": "B"},
                                  "consistency": 20, "swap": 4, "machine": "n"}, sections)
    assert second["commands"] == {"reid": "A", "speed": "A", "consistency": "B", "swap": "B"}
    assert (second["reid"], second["consistency"], second["swap"], second["speed"], second["machine"]) == (1, 20, 4, 3, "n")
    third = bench.merged(second, {"command": "C", "commands": {"reid": "C"}, "reid": 10}, sections)
    assert third["commands"] == {"speed": "A", "consistency": "B", "swap": "B", "reid": "C"}   # no nesting
    assert bench._by_command(third["commands"]) == {"A": ["speed"], "B": ["consistency", "swap"], "C": ["reid"]}
    # a record from before per-section commands: its one command stands for each of its sections
    old = bench.merged({"command": "old", "reid": 1, "speed": 3}, {"command": "D", "commands": {"swap": "D"}, "swap": 4},
                       sections)
    assert old["commands"] == {"reid": "old", "speed": "old", "swap": "D"}


def test_unseen_swap_ranks_each_result_as_a_query_of_its_person(bench, tiny_weights, synthetic_market):
    from reid_core.data import load_split
    from reid_core.engine import ReIDEngine
    from reid_core.models.baseline_net import embed_images
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    q = load_split(synthetic_market, "query", engine.image_size, progress=False)
    g = load_split(synthetic_market, "gallery", engine.image_size, progress=False)
    out = bench.unseen_swap_figures(engine, synthetic_market, n=len(q.pids), seed=0)
    assert out == bench.unseen_swap_figures(engine, synthetic_market, n=len(q.pids), seed=0)  # seeded
    assert out["queries"] == len(q.pids) and all(0 <= v <= 1 for r in ("swapped", "real") for v in out[r].values())
    # the real queries' reference, by hand: the nearest gallery photo by the judge's cosine, the same
    # person on the same camera left out (Market), names the query's person
    qf, gf = embed_images(engine.baseline, q.images), embed_images(engine.baseline, g.images)
    qf, gf = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    hits = []
    for f, pid, cam in zip(qf, q.pids, q.camids):
        valid = ~((g.pids == pid) & (g.camids == cam))
        if (g.pids[valid] == pid).any():
            hits.append(g.pids[valid][np.argmax(gf[valid] @ f)] == pid)
    assert out["real"]["rank1"] == pytest.approx(np.mean(hits))


def test_the_quick_draw_figure_draws_each_picture_once(bench, tiny_weights, synthetic_market, monkeypatch):
    from reid_core.engine import ReIDEngine
    from reid_core.evaluate import generate_rows, identity_consistency
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    monkeypatch.setattr(engine, "identity_candidates", 3)
    rows, seeds = np.array([0, 2]), range(3)
    quick, best = (generate_rows(engine, rows, seeds, candidates=k) for k in (1, None))
    by_hand = [np.asarray(engine.generate(int(r), seed=int(r) * 1000 + s, candidates=k)[0])
               for k in (1, 3) for r in rows for s in seeds]
    assert np.array_equal(quick, np.stack(by_hand[:6])) and np.array_equal(best, np.stack(by_hand[6:]))
    assert not np.array_equal(quick, best)
    out = bench.bench_consistency(engine, synthetic_market, quick=True, candidates=1)
    assert out["identity_candidates"] == 1 and engine.identity_candidates == 3
    again = identity_consistency(engine, engine.baseline, synthetic_market, rows=np.linspace(
        0, engine.num_identities - 1, 100).astype(int), seeds=range(8), candidates=1)
    figures = ("top1", "top5", "seed_agreement", "identities", "pixel_std_generated", "identity_candidates")
    assert {k: out[k] for k in figures} == {k: again[k] for k in figures}
    # the report shows the trade beside the default's figure
    speed = {"threads": 2, "generate_1": {"p50_ms": 700.0}, "generate_1_quick": {"p50_ms": 180.0}}
    rows = bench.drawing_rows(out | {"identity_candidates": 3}, out, speed)
    assert any("best of 3 (the default)" in r and "700 ms" in r for r in rows)
    assert any("quick: one draw" in r and "180 ms" in r for r in rows)

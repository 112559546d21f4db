"""Identity consistency under other sampling settings, on training identities (the judge's
classes; nothing from the test split): classifier-free guidance scale, guided steps and the
initial noise's temperature.

    python scripts/sweep_sampling.py --weights runs/s16 --settings 3,1 4,1 5,1 3,0.85 [--identities 100]

Each setting is "scale,temperature[,end[,start[,every]]]": guidance on DDIM steps start..end-1 of
the 10 (the preset's `guidance_start` and `guidance_steps`; end 0: to the last), its direction
computed on every `every`-th of them and reused between (`guidance_every`; default 1). Prints one JSON
line per setting, the same figures as `benchmark.py --sections consistency`.

    python scripts/sweep_sampling.py --settings 3,1 --sampler ddim dpm2m unipc

`--sampler`: diffusers' multistep solvers in place of DDIM for generation, on the same
schedule and timesteps (an experiment: the engine samples with DDIM, which Img2Noise's chain
was trained through).

    python scripts/sweep_sampling.py --swap --settings 3 4 5 6 [--pairs 200] [--keep 1 0.5 0]

    python scripts/sweep_sampling.py --steer 0 0.3 0.5 0.3,499,799 0.3,399,799,2

`--steer`: Img2ID's guidance on the predicted image (`identity_steer`) instead, each setting
"scale[,lowest,highest timestep[,blur]]" (the rest from the weights' preset), under the
preset's classifier-free guidance.

    python scripts/sweep_sampling.py --candidates 1 2 3 4

`--candidates`: how many times each seeded picture is drawn for Img2ID to keep the best
(`identity_candidates`), under the preset's guidance and steering.

`--swap`: the guidance scale of identity swaps instead (each setting "scale[,steer]": steer is
`identity_steer`, default the preset's), the figures of `benchmark.py --sections swap` on other
pairs of training images (seed 1; the benchmark's are seed 0).

    python scripts/sweep_sampling.py --swap --condition img2id dcac --keep 0.5 --unseen

`--condition`: what photo A is drawn under: the engine's (`photo_identities`: a person it trained
on under their row, anyone else under Img2ID's vector f), Img2ID's vector f always, or DCAC's
correlation-aware condition c = softmax(logits / tau) . rows (`--tau`, default the preset's
`dcac_tau`), which the joint stage trains the generator on for half the samples. `--unseen`: also
`benchmark.py --sections swap_unseen`'s figure (test queries as A) on other queries (seed 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

import reid_core.diffusion as diffusion
from reid_core.data import DEMO_DATA
from reid_core.engine import ReIDEngine
from reid_core.evaluate import identity_consistency
from reid_core.schedule import _betas, make_scheduler

SAMPLERS = ("ddim", "dpm2m", "unipc")


def scheduler_factory(kind: str):
    """make_scheduler's stand-in for sampler `kind`: the same betas and trailing timesteps."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    def make(num_train_timesteps: int = 1000, prediction_type: str = "epsilon"):
        if kind == "ddim":
            return make_scheduler(num_train_timesteps, prediction_type)
        kw = dict(num_train_timesteps=num_train_timesteps, trained_betas=_betas(num_train_timesteps),
                  prediction_type=prediction_type, timestep_spacing="trailing", final_sigmas_type="zero")
        if kind == "dpm2m":
            return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2)
        return UniPCMultistepScheduler(**kw)
    return make


def dcac_identities(engine, tau: float | None = None):
    """Photos (uint8 crops) -> DCAC's condition c = softmax(logits / tau) . rows of their Img2ID
    vectors (`training.joint.dcac_condition`, the logits as the joint stage makes them)."""
    from reid_core.losses import prototype_logits
    from reid_core.training.joint import dcac_condition
    table = torch.from_numpy(engine.identity_table)
    tau = engine.preset.dcac_tau if tau is None else tau

    def identities(crops: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(engine.embed_arrays(crops))
        return dcac_condition(prototype_logits(f, table, engine.preset.proto_scale), table, tau).numpy()
    return identities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="weights")
    ap.add_argument("--data", default=str(DEMO_DATA))
    ap.add_argument("--settings", nargs="+", default=["3,1"])
    ap.add_argument("--identities", type=int, default=100, help="evenly spread over the table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--swap", action="store_true", help="sweep the swap's guidance scale")
    ap.add_argument("--pairs", type=int, default=200, help="--swap: pairs of training images")
    ap.add_argument("--keep", type=float, nargs="+", default=[1.0],
                    help="--swap: shares of B's noise kept (engine.swap_noise)")
    ap.add_argument("--condition", nargs="+", default=["engine"], choices=("engine", "img2id", "dcac"),
                    help="--swap: what photo A is drawn under")
    ap.add_argument("--tau", type=float, help="--condition dcac: its temperature (default: the preset's dcac_tau)")
    ap.add_argument("--unseen", action="store_true", help="--swap: also the unseen people's figure (test queries)")
    ap.add_argument("--sampler", nargs="+", default=["ddim"], choices=SAMPLERS)
    ap.add_argument("--steer", nargs="+", help="sweep identity steering: scale[,lowest,highest[,blur]]")
    ap.add_argument("--candidates", type=int, nargs="+", help="sweep best-of-K drawing (identity_candidates)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = ReIDEngine.from_pretrained(a.weights, device="cpu")
    if a.swap:
        from benchmark import swap_figures, unseen_swap_figures  # scripts/benchmark.py
        steer = engine.identity_steer
        for condition in a.condition:
            identities = dcac_identities(engine, a.tau) if condition == "dcac" else \
                {"engine": None, "img2id": engine.embed_arrays}[condition]
            for spec in a.settings:
                values = list(map(float, spec.split(",")))
                engine.guidance_scale = values[0]
                engine.identity_steer = values[1] if len(values) > 1 else steer
                setting = {"condition": condition, "guidance_scale": engine.guidance_scale,
                           "identity_steer": engine.identity_steer}
                r, _ = swap_figures(engine, a.data, a.pairs, seed=1, transfer=False, keeps=tuple(a.keep),
                                    identities=identities)
                for keep, f in r["by_keep"].items():
                    print(json.dumps({**setting, "keep": float(keep), **f}), flush=True)
                if a.unseen:
                    u = unseen_swap_figures(engine, a.data, a.pairs, seed=1, identities=identities)
                    print(json.dumps({**setting, "unseen": u}), flush=True)
        return
    rows = np.linspace(0, engine.num_identities - 1, a.identities).astype(int)
    if a.candidates:
        for k in a.candidates:
            engine.identity_candidates = k
            r = identity_consistency(engine, engine.baseline, a.data, rows=rows, seeds=range(8))
            print(json.dumps({"identity_candidates": k,
                              **{f: r[f] for f in ("top1", "top5", "seed_agreement", "diversity", "seconds")}}),
                  flush=True)
        return
    if a.steer:
        p = engine.preset  # the weights' own: each setting's missing fields come from it, not the last setting
        for spec in a.steer:
            values = list(map(float, spec.split(",")))
            window = tuple(int(v) for v in values[1:3]) if len(values) >= 3 else p.identity_steer_window
            blur = values[3] if len(values) >= 4 else p.identity_steer_blur
            engine.identity_steer = values[0]
            engine.preset = dataclasses.replace(p, identity_steer_window=window, identity_steer_blur=blur)
            r = identity_consistency(engine, engine.baseline, a.data, rows=rows, seeds=range(8))
            print(json.dumps({"identity_steer": values[0], "window": list(window), "blur": blur,
                              **{k: r[k] for k in ("top1", "top5", "seed_agreement", "diversity", "seconds")}}),
                  flush=True)
        return
    unit_noise = engine.noise
    for sampler in a.sampler:
        diffusion.make_scheduler = scheduler_factory(sampler)
        for spec in a.settings:
            values = list(map(float, spec.split(",")))
            scale, temp, end, start, every = values + [0.0, 0.0, 1.0][len(values) - 2:]
            engine.guidance_scale, engine.guidance_steps, engine.guidance_start = scale, int(end) or None, int(start)
            engine.guidance_every = int(every)
            engine.noise = lambda seeds, t=temp: unit_noise(seeds) * t
            r = identity_consistency(engine, engine.baseline, a.data, rows=rows, seeds=range(8))
            print(json.dumps({"sampler": sampler, "scale": scale, "temperature": temp,
                              "guided_steps": [int(start), int(end)], "guidance_every": int(every),
                              **{k: r[k] for k in ("top1", "top5", "seed_agreement", "diversity", "seconds")}}),
                  flush=True)


if __name__ == "__main__":
    main()

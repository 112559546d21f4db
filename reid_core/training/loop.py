"""The training loop, written once: every stage is a `step_fn` handed to `TrainLoop.run`.

The loop owns what all stages share: per-group learning-rate schedules, gradient
clipping, EMA, a tqdm bar, atomic checkpoints every `checkpoint_every` steps, exact
resume, the training time spent (kept across resumes), and snapshots of the weights
at chosen steps, from which the benchmark draws its time-to-quality curve.

A checkpoint holds {step, modules, opt, ema, history, seconds}; it is written with
`torch.save` of tensors and plain values only, so it loads with `weights_only=True`.
Every step's randomness comes from `step_rngs(seed, stage, step)` (augment.py), so a
resumed run repeats the uninterrupted one bit for bit.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..io import atomic_torch_save
from .augment import step_rngs

Schedule = Callable[[int], float]  # step -> multiplier of a group's base learning rate
StepFn = Callable[[int, np.random.Generator, torch.Generator], dict]


def warmup_cosine(total: int, warmup: int, floor: float = 0.1, start: int = 0) -> Schedule:
    """0 before `start`; linear warm-up over `warmup` steps, then cosine decay to `floor`."""
    def f(step: int) -> float:
        s = step - start
        if s < 0:
            return 0.0
        if s < warmup:
            return (s + 1) / warmup
        p = min(1.0, (s - warmup) / max(1, total - start - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def warmup_steps(total: int, warmup: int, milestones=(0.5,), gamma: float = 0.1,
                 warmup_factor: float = 0.1, end: int | None = None, after: float = 0.0) -> Schedule:
    """BoT: linear warm-up from `warmup_factor`, then x`gamma` at each fraction of `total` in
    `milestones`; from step `end` on (if given) the multiplier is `after`."""
    def f(step: int) -> float:
        if end is not None and step >= end:
            return after
        m = 1.0
        if step < warmup:
            a = step / warmup
            m = warmup_factor * (1 - a) + a
        for frac in milestones:
            if step >= int(frac * total):
                m *= gamma
        return m
    return f


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if Path(path).exists() else None


class TrainLoop:
    """Runs `step_fn(step, rng, gen) -> {"loss": tensor, other scalars...}` for `steps` steps.

    Args:
        stage: name, salts the per-step randomness and names the checkpoint file.
        out: run folder; the checkpoint is `out/checkpoints/<stage>.pt`.
        modules: everything whose state the checkpoint keeps, by name.
        optimizer: its param groups' `lr` at construction is each group's base rate.
        schedules: one multiplier schedule per param group.
        ema: optional EMA of `ema_params`, stepped from `ema_start` on.
        snapshot_every / on_snapshot: call `on_snapshot(step, minutes)` every so many steps
            (weights under EMA, if any), for time-to-quality curves.
    """

    def __init__(self, stage: str, out: Path, *, seed: int, steps: int, modules: dict,
                 optimizer: torch.optim.Optimizer, schedules: list[Schedule],
                 ema: EMAModel | None = None, ema_params: list | None = None, ema_start: int = 0,
                 checkpoint_every: int = 500, clip_grad: float | None = 1.0,
                 snapshot_every: int = 0, on_snapshot: Callable[[int, float], None] | None = None,
                 resume: bool = False, progress: bool = True):
        if len(schedules) != len(optimizer.param_groups):
            raise ValueError("one schedule per optimizer param group")
        self.stage, self.out, self.seed, self.steps = stage, Path(out), seed, steps
        self.modules, self.opt, self.schedules = modules, optimizer, schedules
        self.ema, self.ema_params, self.ema_start = ema, ema_params, ema_start
        self.checkpoint_every, self.clip_grad = checkpoint_every, clip_grad
        self.snapshot_every, self.on_snapshot = snapshot_every, on_snapshot
        self.progress = progress
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.ckpt = self.out / "checkpoints" / f"{stage}.pt"
        self.start, self.seconds, self.history = 0, 0.0, []
        state = load_checkpoint(self.ckpt) if resume else None
        if state is not None:
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            optimizer.load_state_dict(state["opt"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            self.start, self.seconds = int(state["step"]), float(state["seconds"])
            self.history = list(state["history"])

    @property
    def minutes(self) -> float:
        return self.seconds / 60

    def save(self, step: int) -> None:
        atomic_torch_save({"step": step, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                           "opt": self.opt.state_dict(),
                           "ema": self.ema.state_dict() if self.ema is not None else {},
                           "history": self.history, "seconds": self.seconds}, self.ckpt)

    def snapshot(self, step: int) -> None:
        if self.ema is not None:
            self.ema.store(self.ema_params)
            self.ema.copy_to(self.ema_params)
        try:
            self.on_snapshot(step, self.minutes)
        finally:
            if self.ema is not None:
                self.ema.restore(self.ema_params)

    def run(self, step_fn: StepFn) -> list[float]:
        for m in self.modules.values():
            m.train()
        bar = tqdm(range(self.start, self.steps), initial=self.start, total=self.steps, desc=self.stage,
                   disable=not self.progress, dynamic_ncols=True)
        recent: dict[str, list[float]] = {}
        for step in bar:
            t0 = time.perf_counter()
            for group, schedule in zip(self.opt.param_groups, self.schedules):
                group["lr"] = group["base_lr"] * schedule(step)
            rng, gen = step_rngs(self.seed, self.stage, step)
            logs = step_fn(step, rng, gen)
            loss = logs["loss"]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_([p for p in self.params if p.grad is not None], self.clip_grad)
            self.opt.step()
            if self.ema is not None and step >= self.ema_start:
                self.ema.step(self.ema_params)
            self.history.append(float(loss.detach()))
            self.seconds += time.perf_counter() - t0
            for k, v in logs.items():
                recent.setdefault(k, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
            if step % 10 == 0:
                bar.set_postfix({k: f"{np.mean(v[-50:]):.3g}" for k, v in recent.items()}, refresh=False)
            done = step + 1
            if done % self.checkpoint_every == 0 and done < self.steps:
                self.save(done)
            if self.on_snapshot is not None and self.snapshot_every and done % self.snapshot_every == 0:
                self.snapshot(done)
        bar.close()
        self.save(self.steps)
        return self.history

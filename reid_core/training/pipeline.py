"""The stages in order, each loading what the earlier ones saved.

    joint recipe: baseline | joint (Img2ID + table, then generator) -> distill -> prior -> img2noise
                  -> pose -> uncertainty
    paper recipe: baseline | generator -> prior -> img2id -> img2noise -> pose -> uncertainty

The baseline never sees the generator (it is the judge of generated identities), so it
can train alongside the rest (`jobs=2`: a second process, one thread each).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from ..config import (BaselineConfig, DistillConfig, GeneratorConfig, Img2IDConfig, Img2NoiseConfig, JointConfig, PoseConfig,
                      Preset, PriorConfig, UncertaintyConfig)
from ..io import atomic_write_json
from ..weights import IDENTITIES_FILE, POSE_LIBRARY_FILE, PRESET_FILE, has_component, load_component

STAGES = ("baseline", "joint", "distill", "generator", "prior", "img2id", "img2noise", "pose", "uncertainty")
RECIPE_STAGES = {"joint": ("baseline", "joint", "distill", "prior", "img2noise", "pose", "uncertainty"),
                 "paper": ("baseline", "generator", "prior", "img2id", "img2noise", "pose", "uncertainty")}
# which stages train a component (a run's training log is keyed by stage)
COMPONENT_STAGES = {"generator": ("joint", "generator", "distill"), "img2id": ("joint", "img2id"),
                    "prior": ("prior",), "img2noise": ("img2noise",), "pose_encoder": ("pose",),
                    "pose_generator": ("pose",), "baseline": ("baseline",), "uncertainty": ("uncertainty",)}
# what a stage leaves in the run folder when done (a finished stage is skipped on --resume)
STAGE_OUTPUTS = {"baseline": "baseline", "joint": "img2id", "generator": "generator", "prior": "prior",
                 "img2id": "img2id", "img2noise": "img2noise", "pose": "pose_encoder", "uncertainty": "uncertainty"}
DERIVED_FROM_GENERATOR = ("synth_bank.npz", "inverted_noise_*.npz")
_SCHEDULE_FIELDS = ("_steps", "checkpoint_every", "snapshot_every")
# the preset fields each stage trains with (the rest are shared by every stage)
STAGE_CONFIGS = {"baseline": (BaselineConfig,), "joint": (GeneratorConfig, JointConfig, Img2IDConfig),
                 "distill": (DistillConfig,),
                 "generator": (GeneratorConfig,), "prior": (PriorConfig,), "img2id": (Img2IDConfig,),
                 "img2noise": (Img2NoiseConfig, "synth_images"), "pose": (PoseConfig,),
                 "uncertainty": (UncertaintyConfig,)}


def drop_derived(out: Path) -> None:
    """Forget what an older generator made (the synthetic bank, inverted noise): stale now."""
    for pattern in DERIVED_FROM_GENERATOR:
        for f in (Path(out) / "checkpoints").glob(pattern):
            f.unlink()


def stage_fields(stage: str) -> set[str]:
    """The preset fields `stage` trains with."""
    return {name for c in STAGE_CONFIGS[stage]
            for name in ([c] if isinstance(c, str) else [f.name for f in dataclasses.fields(c)])}


def with_stage_fields(saved: Preset, trained: Preset, stages) -> Preset:
    """`saved` with the fields of `stages` taken from `trained` (what those stages trained with)."""
    own = set().union(*(stage_fields(s) for s in stages)) if stages else set()
    return dataclasses.replace(saved, **{k: getattr(trained, k) for k in own})


def record_preset(path: Path, preset: Preset, stages, recipe_stages) -> None:
    """Write what the run's components were trained with. An invocation training only some
    stages (say pose in one process, img2noise in another) updates only those stages'
    fields of an existing record, under a lock: the record never claims values that no
    stage trained with, whichever process writes last. Shared fields (sizes, seed, sampling)
    must agree with the record then."""
    import fcntl
    path = Path(path)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists() or set(stages) >= set(recipe_stages):
            preset.save(path)
            return
        saved = Preset.load(path)
        every = set().union(*(stage_fields(s) for s in STAGE_CONFIGS))
        shared = [f.name for f in dataclasses.fields(Preset)
                  if f.name not in every and getattr(saved, f.name) != getattr(preset, f.name)
                  and not f.name.endswith(_SCHEDULE_FIELDS)]
        if shared:
            raise ValueError(f"{path} was trained with other {', '.join(shared)}; train the remaining stages "
                             f"with --preset-file {path} (and --set for their own fields), or use a new --out")
        with_stage_fields(saved, preset, stages).save(path)


def check_resumable(saved: Preset, asked: Preset, where) -> None:
    """A resumed run may change how long stages train (step counts), nothing else:
    other fields shape the networks or the data the checkpoints were made with."""
    diff = [f.name for f in dataclasses.fields(Preset) if getattr(saved, f.name) != getattr(asked, f.name)]
    fixed = [d for d in diff if not d.endswith(_SCHEDULE_FIELDS)]
    if fixed:
        raise ValueError(f"{where} was trained with other {', '.join(fixed)}; "
                         f"use a new --out, or the same values to resume")
    for d in diff:
        print(f"resume: {d} {getattr(saved, d)} -> {getattr(asked, d)} (the lr schedule follows the new length)")


def _stage_cmd(data, preset: Preset, out: Path, stages, resume: bool, init: Path | None, device: str) -> list[str]:
    cmd = [sys.executable, "-m", "reid_core.training", "--data", str(data), "--out", str(out),
           "--preset-file", str(out / PRESET_FILE), "--stages", *stages, "--threads", "1", "--device", device]
    return cmd + (["--resume"] if resume else []) + (["--init", str(init)] if init else [])


def train(data, preset: Preset, out, stages=None, *, resume: bool = False, init=None, device: str = "cpu",
          progress: bool = True, jobs: int = 1) -> Path:
    """Run the chosen stages (default: the preset's recipe) in order."""
    from .baseline import train_baseline
    from .common import load_train_data
    from .distill import train_distill
    from .generator import train_generator
    from .img2id import train_img2id
    from .img2noise import train_img2noise
    from .joint import train_joint
    from .pose import build_pose_library, find_pose_file, pose_keypoints, train_pose
    from .prior import train_prior
    from .uncertainty import train_uncertainty

    import time
    t_start = time.perf_counter()
    out = Path(out)
    init = Path(init) if init else None
    order = RECIPE_STAGES[preset.recipe]
    stages = order if stages is None else tuple(stages)
    wrong = [s for s in stages if s not in order]
    if wrong:
        raise ValueError(f"stages {wrong} are not part of the {preset.recipe!r} recipe {order}")
    stages = [s for s in order if s in stages]
    out.mkdir(parents=True, exist_ok=True)
    if resume and (out / PRESET_FILE).exists():
        check_resumable(Preset.load(out / PRESET_FILE), preset, out / PRESET_FILE)
    record_preset(out / PRESET_FILE, preset, stages, order)
    data_ = load_train_data(data, preset, progress)
    import numpy as np
    atomic_write_json(out / IDENTITIES_FILE, {"pids": np.unique(data_.pids).tolist()})

    side = None
    if jobs > 1 and "baseline" in stages and len(stages) > 1:
        stages.remove("baseline")
        side = subprocess.Popen(_stage_cmd(data, preset, out, ["baseline"], resume, init, device),
                                stdout=subprocess.DEVNULL, stderr=open(out / "baseline.log", "w"))

    def done(stage):
        if stage == "distill":  # the joint stage writes a generator too: only a distilled one says done
            return resume and has_component(out, "generator") and \
                bool(json.loads((out / "generator" / "config.json").read_text()).get("guidance_embedding"))
        return resume and has_component(out, STAGE_OUTPUTS[stage])

    def load(component):
        """A component this run trained, else the one --init starts from (a stage run alone)."""
        src = out if has_component(out, component) or init is None else init
        return load_component(src, component).to(device)

    kw = dict(init=init, device=device, resume=resume, progress=progress)
    for stage in stages:
        if done(stage) and not (stage == "pose" and not (out / POSE_LIBRARY_FILE).exists()):
            continue
        if stage == "baseline":
            train_baseline(data_, preset, out, **kw)
        elif stage in ("joint", "generator"):
            drop_derived(out)
            (train_joint if stage == "joint" else train_generator)(data_, preset, out, **kw)
        elif stage == "distill":
            if not preset.distill_steps:
                continue
            drop_derived(out)
            train_distill(data_, load("generator"), load("img2id"), preset, out, **kw)
        elif stage == "prior":
            train_prior(load("generator"), preset, out, device=device, resume=resume, progress=progress)
        elif stage == "img2id":
            train_img2id(data_, load("generator"), load("prior"), preset, out, **kw)
        elif stage == "img2noise":
            train_img2noise(data_, load("generator"), load("prior"), load("img2id"), preset, out, **kw)
        elif stage == "pose":
            if find_pose_file(data) is None:
                print(f"pose stage skipped: no pose annotations in {data}")
                continue
            if not done("pose"):
                train_pose(data_, data, load("generator"), preset, out, **kw)
            kps = pose_keypoints(find_pose_file(data), data_.paths)
            build_pose_library(data_.crops, data_.labels, data_.paths, kps, load("img2id"), preset, out, device)
        elif stage == "uncertainty":
            train_uncertainty(data_, load("img2id"), preset, out, device=device, resume=resume, progress=progress)
    if side is not None and side.wait():
        raise RuntimeError(f"the baseline stage failed: see {out / 'baseline.log'}")
    if set(stages) | ({"baseline"} if side is not None else set()) == set(order):
        from .common import write_log
        write_log(out, "pipeline", {"wall_minutes": round((time.perf_counter() - t_start) / 60, 2),
                                    "jobs": 2 if side is not None else 1, "resumed": resume})
    return out


def _set_value(text: str):
    """A --set value: JSON (numbers, true, [64, 32], "quoted"), else the bare word as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> None:
    import argparse

    import torch

    from ..config import PRESETS, get_preset
    p = argparse.ArgumentParser(prog="python -m reid_core.training",
                                description="Train the studio's models on a Market-1501-layout folder.")
    p.add_argument("--data", required=True, help="Market-1501-layout folder")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--preset-file", default=None, help="a saved preset.json instead of --preset")
    p.add_argument("--out", required=True)
    p.add_argument("--stages", nargs="+", default=None, choices=STAGES, help="default: the recipe's stages")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--init", default=None, help="start every network from this weights folder (e.g. weights/)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--jobs", type=int, default=1, help="2: train the baseline in a second process beside the rest")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override preset fields, e.g. --set gen_steps=100 seed=1")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = {k: _set_value(v) for k, _, v in (kv.partition("=") for kv in a.set)}
    if a.preset_file:
        preset = dataclasses.replace(Preset.load(a.preset_file), **{k: tuple(v) if isinstance(v, list) else v
                                                                    for k, v in overrides.items()})
    else:
        preset = get_preset(a.preset, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    print(preset.to_json())
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train(a.data, preset, a.out, a.stages, resume=a.resume, init=a.init, device=device, jobs=a.jobs)
    print(f"done: {a.out}")

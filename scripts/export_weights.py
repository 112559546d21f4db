"""Assemble a trained run into a shippable weights folder, fp16 where it loses nothing measurable.

    python scripts/export_weights.py --run runs/cpu [--baseline-run runs/cpu-baseline] --out weights [--fp16]
    python scripts/export_weights.py --out weights --precomputed-only [identity_map photo_features portraits slider_axes slider_ranking] [--data DIR]
    python scripts/export_weights.py --run runs/unc --out weights --fp16 --only uncertainty

Copies each component's config.json and safetensors (cast to fp16 with --fp16), plus
preset.json, identities.json, pose_library.json and training_log.json; then loads the
export and the fp32 run side by side and prints what the cast changed (pixels of
generated images, embedding distances), so the choice is measured, not assumed.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


from reid_core.config import Preset
from reid_core.data import DEMO_DATA
from reid_core.engine import PRECOMPUTED_FROM, ReIDEngine
from reid_core.io import atomic_write_json
from reid_core.training.pipeline import COMPONENT_STAGES, with_stage_fields
from reid_core.weights import COMPONENTS, FILES, PRESET_FILE

# normalisation statistics (the prior's mean/std, BatchNorm running stats) stay exact; they are tiny
KEEP_FP32_TENSORS = ("running_mean", "running_var", "mean", "std")


def keep_fp32(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in KEEP_FP32_TENSORS


def export(run: Path, out: Path, fp16: bool, baseline_run: Path | None = None, only: list[str] | None = None,
           continues: bool = False) -> None:
    """Copy a run's components (or `only` these, adding to a weights folder, with their
    training-log records and their stages' preset fields) and its files into `out`.
    With `only`, the component's earlier history records are replaced, or kept when
    `continues` (the run started from `out`'s component with --init)."""
    out.mkdir(parents=True, exist_ok=True)
    for comp in only or COMPONENTS:
        src = (baseline_run if comp == "baseline" and baseline_run else run) / comp
        if not (src / "config.json").exists():
            print(f"  {comp}: not in the run, skipped")
            continue
        dst = out / comp
        dst.mkdir(exist_ok=True)
        shutil.copy(src / "config.json", dst / "config.json")
        for st in src.glob("*.safetensors"):
            tensors = load_file(st)
            if fp16:
                tensors = {k: v.half() if v.is_floating_point() and not keep_fp32(k) else v
                           for k, v in tensors.items()}
            save_file(tensors, dst / st.name, metadata={"format": "pt"})
    if "pose_encoder" in (only or COMPONENTS) and (run / "pose_encoder" / "config.json").exists() \
            and not (run / "pose_generator" / "config.json").exists() and (out / "pose_generator").exists():
        # the run's guider was trained on the frozen generator: an older tuned copy is stale
        shutil.rmtree(out / "pose_generator")
        print("  pose_generator: removed (the run's pose guider steers the generator itself)")
    if only:
        log_file = out / "training_log.json"
        log = json.loads(log_file.read_text()) if log_file.exists() else {}
        ran = json.loads((run / "training_log.json").read_text()) if (run / "training_log.json").exists() else {}
        stages = sorted({s for c in only for s in COMPONENT_STAGES[c] if s in ran})  # what this run trained
        log.update({s: ran[s] for s in stages})
        history = log.get("history", [])
        if not continues:  # re-adding replaces
            history = [h for h in history if h.get("what") not in stages]
        history += [{"run": str(run), "what": s + " (--init: continued)" * continues, "steps": ran[s]["steps"],
                     "minutes": ran[s]["minutes"]} for s in stages]
        if "history" in log or history:
            log["history"] = history
        atomic_write_json(log_file, log)
        if (out / PRESET_FILE).exists() and (run / PRESET_FILE).exists():  # what these components trained with
            with_stage_fields(Preset.load(out / PRESET_FILE), Preset.load(run / PRESET_FILE),
                              stages).save(out / PRESET_FILE)
        return
    for f in FILES:
        if (run / f).exists():
            shutil.copy(run / f, out / f)
    if baseline_run and (baseline_run / "training_log.json").exists() and (out / "training_log.json").exists():
        log = json.loads((out / "training_log.json").read_text())
        log.update({k: v for k, v in json.loads((baseline_run / "training_log.json").read_text()).items()
                    if k == "baseline"})
        atomic_write_json(out / "training_log.json", log)


def compare(run: Path, out: Path, baseline_run: Path | None = None) -> dict:
    """What the export changed: max pixel difference of generated images, embedding drift."""
    torch.set_num_threads(1)
    a = ReIDEngine.from_pretrained(run, device="cpu", load_baseline=False)
    b = ReIDEngine.from_pretrained(out, device="cpu")
    rows = list(range(0, a.num_identities, max(1, a.num_identities // 16)))
    ia = np.stack([np.asarray(im) for im in a.generate(a.identity_table[rows], seed=1)]).astype(int)
    ib = np.stack([np.asarray(im) for im in b.generate(a.identity_table[rows], seed=1)]).astype(int)
    imgs = ia.astype(np.uint8)
    ea, eb = a.embed_arrays(imgs), b.embed_arrays(imgs)
    spread = float(np.mean(np.linalg.norm(ea[:, None] - ea[None], axis=-1)))
    res = {"max_pixel_diff": int(np.abs(ia - ib).max()), "mean_pixel_diff": float(np.abs(ia - ib).mean()),
           "embedding_drift": float(np.linalg.norm(ea - eb, axis=1).mean()),
           "embedding_spread": spread}
    from reid_core.weights import has_component, load_component
    if b.baseline is not None and baseline_run is not None and has_component(baseline_run, "baseline"):
        from reid_core.models.baseline_net import classify_images  # the judge: does the cast change its verdicts?
        ref = load_component(baseline_run, "baseline")
        res["baseline_same_class"] = float(np.mean(classify_images(ref, imgs) == classify_images(b.baseline, imgs)))
    return res


STAGE_WHAT = {"joint": "joint stage (generator on the table; Img2ID's head and the table at a low rate)",
              "generator": "generator", "prior": "identity prior", "img2id": "Img2ID", "img2noise": "Img2Noise",
              "pose": "pose guider",
              "distill": "guidance distillation (the guidance scale an input: one pass per guided step)",
              "uncertainty": "uncertainty head (HAVANA)"}


def add_history(out: Path, run: Path, continues: Path) -> list[dict]:
    """The exported training log's `history`: the runs the weights in `continues` came from,
    then this run's stages (it was started from them with --init), so the CPU time behind the
    shipped weights stays on record across sessions."""
    old = json.loads((continues / "training_log.json").read_text()).get("history", [])
    log = json.loads((out / "training_log.json").read_text())
    new = [{"run": str(run), "what": STAGE_WHAT[k] + f" (--init {continues.name})" * (k in COMPONENT_STAGES["generator"]),
            "steps": v["steps"], "minutes": v["minutes"]}
           for k, v in log.items() if k in STAGE_WHAT and isinstance(v, dict) and "minutes" in v]
    if "baseline" in log and not any("baseline" in h["what"] for h in old):
        new.append({"run": "(baseline run)", "what": "baseline", "steps": log["baseline"]["steps"],
                    "minutes": log["baseline"]["minutes"]})
    log["history"] = old + new
    atomic_write_json(out / "training_log.json", log)
    return log["history"]


PRECOMPUTED = tuple(PRECOMPUTED_FROM)  # identity_map, photo_features (before portraits: their best of K reads them), ...


def stale_precomputed(components) -> list[str]:
    """The precomputed parts a new copy of these components invalidates (every part is made
    from the generator and its table; `PRECOMPUTED_FROM` says what else)."""
    return [part for part in PRECOMPUTED if any(c == "generator" or c in PRECOMPUTED_FROM[part] for c in components)]


def add_precomputed(out: Path, seed: int = 0, parts=PRECOMPUTED, data: Path = DEMO_DATA) -> list[Path]:
    """What the apps would otherwise compute at every start, made once with the exported
    weights (as the apps load them) and shipped beside them: Img2ID's vectors of the training
    photos of `data` (what best of K chooses by), every training identity's
    portrait (643 generations, minutes on 2 cores), the identity map (a UMAP fit), the slider
    axes of a wide identity (the directions that most change who the generated person looks
    like) and which sliders change who the person is (the judge over a +-2 sd sweep of every
    axis). `parts`: which of them (new slider axes bring a new ranking)."""
    from tqdm import tqdm

    from reid_core.engine import MAX_AXES
    from reid_core.evaluate import axis_identity_change, sensitive_axes
    from reid_core.explore import IdentityMap
    from reid_core.weights import (SLIDER_RANKING_FILE, save_identity_map, save_keyed_json, save_photo_features,
                                   save_portraits, save_slider_axes)
    engine = ReIDEngine.from_pretrained(out)
    parts = set(parts) | ({"slider_ranking"} if "slider_axes" in parts else set()) \
        | ({"portraits"} if "photo_features" in parts else set())  # drawn best of K by them
    written = []
    if "photo_features" in parts:
        features, rows = photo_features(engine, data)
        written.append(save_photo_features(out, features, rows, engine.cache_key("photo_features"),
                                           photos=len(rows), size=f"{engine.embed_size[0]}x{engine.embed_size[1]}"))
        engine.set_photo_bank(features, rows)
    if "identity_map" in parts:
        imap = IdentityMap(engine.identity_table, seed=seed)
        written.append(save_identity_map(out, imap.method, imap.coords, engine.cache_key("identity_map")))
    if "slider_axes" in parts and not engine.axes_are_dimensions:
        # a wide identity: slide along the directions that most change who Img2ID sees in the picture
        bases = 8
        with tqdm(total=100, desc="slider axes") as bar:
            axes = sensitive_axes(engine, MAX_AXES, bases=bases, seed=seed + 1,
                                  progress=lambda f: bar.update(round(f * 100) - bar.n))
        written.append(save_slider_axes(out, axes, engine.cache_key("slider_axes"), method="sensitive_axes", reader="img2id",
                                        bases=bases, seed=seed + 1))
        engine.reload_axes()
    if "slider_ranking" in parts and engine.baseline is not None:  # the judge: which sliders change who the person is
        with tqdm(total=100, desc="slider ranking") as bar:
            ranking = axis_identity_change(engine, engine.baseline, seed=seed,
                                           progress=lambda f: bar.update(round(f * 100) - bar.n))
        written.append(save_keyed_json(out, SLIDER_RANKING_FILE, engine.cache_key("slider_ranking"), **ranking))
    if "portraits" in parts:
        with tqdm(total=engine.num_identities, desc="portraits") as bar:
            images = engine.explorer.all_portraits(seed, progress=lambda f: bar.update(round(f * bar.total) - bar.n))
        written.append(save_portraits(out, images, engine.cache_key("portraits"), seed))
    return written


def photo_features(engine: ReIDEngine, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Img2ID's vector of every training photo of `data` whose person is a table row, (N, id_dim),
    and that row (N,)."""
    from reid_core.data import load_split
    train = load_split(data, "train", engine.embed_size)
    row_of = {int(p): k for k, p in enumerate(engine.identity_pids)}
    keep = np.array([int(p) in row_of for p in train.pids], bool)
    if not keep.any():
        raise SystemExit(f"no training photo of {data} shows a person of these weights' table")
    rows = np.array([row_of[int(p)] for p in train.pids[keep]], np.int64)
    return engine.embed_arrays(train.images[keep]), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="the training run to export (omit with --portraits-only)")
    ap.add_argument("--baseline-run", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("weights"))
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--continues", type=Path, default=None,
                    help="the weights folder RUN was started from (--init): its training history is kept")
    ap.add_argument("--precomputed-only", nargs="*", default=None, choices=PRECOMPUTED, metavar="PART",
                    help="only (re)make --out's precomputed parts: all, or those named "
                         f"({', '.join(PRECOMPUTED)})")
    ap.add_argument("--only", nargs="+", default=None, choices=COMPONENTS, metavar="COMPONENT",
                    help="add just these components of --run to an existing weights folder (e.g. uncertainty: "
                         "a part the networks' caches do not depend on)")
    ap.add_argument("--data", type=Path, default=DEMO_DATA, help="the dataset the run trained on (its training "
                    "photos' Img2ID vectors are shipped for best of K)")
    a = ap.parse_args()
    if a.precomputed_only is not None:
        print("wrote", *add_precomputed(a.out, parts=a.precomputed_only or PRECOMPUTED, data=a.data))
        return
    if a.run is None:
        ap.error("--run is required (unless --precomputed-only)")
    if a.only:
        export(a.run, a.out, a.fp16, only=a.only, continues=a.continues is not None)
        stale = stale_precomputed(a.only)
        print(f"added {', '.join(a.only)} of {a.run} to {a.out}; "
              + (f"remake what was made from them: --precomputed-only {' '.join(stale)}" if stale
                 else "no precomputed part is made from them"))
        return
    export(a.run, a.out, a.fp16, a.baseline_run)
    if a.continues is not None:
        add_history(a.out, a.run, a.continues)
    add_precomputed(a.out, data=a.data)
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"exported to {a.out}: {size / 2**20:.1f} MiB")
    print(json.dumps(compare(a.run, a.out, a.baseline_run or a.run), indent=2))


if __name__ == "__main__":
    main()

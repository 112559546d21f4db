"""Weights kept at chosen steps of a stage, for the time-to-quality curve.

    OUT/snapshots/<stage>/<step>/{meta.json, <component>/...}

`meta.json` holds the step and the training minutes spent to reach it (the stage's own,
plus those of the stages it builds on, given as `minutes_before`).
"""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json
from ..weights import save_component


def snapshot_writer(out: Path, stage: str, components: dict, minutes_before: float = 0.0):
    """A `TrainLoop.on_snapshot` that saves `components` ({name: module}) at each call."""
    def write(step: int, minutes: float) -> None:
        folder = Path(out) / "snapshots" / stage / f"{step:07d}"
        for name, module in components.items():
            was = module.training
            save_component(module.eval(), folder, name)
            module.train(was)
        atomic_write_json(folder / "meta.json", {"stage": stage, "step": step,
                                                 "minutes": round(minutes_before + minutes, 3)})
    return write


def list_snapshots(out: Path) -> list[Path]:
    """Every snapshot folder of a run, ordered by training minutes."""
    import json
    found = [p.parent for p in Path(out).glob("snapshots/*/*/meta.json")]
    return sorted(found, key=lambda p: json.loads((p / "meta.json").read_text())["minutes"])

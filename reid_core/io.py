"""Atomic checkpoint writes: a reader (or a resumed run) never sees half a file."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to `.NAME.PID.tmp` beside `path`, fsync, then rename over it.

    A run killed mid-write leaves the previous checkpoint intact and a stray
    `.NAME.*.tmp`, which the next run may delete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

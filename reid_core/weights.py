"""The weights-folder layout, in one place: the engine loads it, training writes it,
export and publish copy it.

    preset.json            the resolved training preset
    identities.json        {"pids": [...]}: the raw dataset pid of each table row
    training_log.json      per stage: steps, minutes, losses
    pose_library.json      the representative poses (optional)
    verdict.json           P(same person | distance), fitted on training pairs (optional)
    <component>/config.json + diffusion_pytorch_model.safetensors   (save_pretrained)

Nothing here unpickles: components load from safetensors, strictly.
"""
from __future__ import annotations

from pathlib import Path


PRESET_FILE = "preset.json"
IDENTITIES_FILE = "identities.json"
TRAINING_LOG = "training_log.json"
POSE_LIBRARY_FILE = "pose_library.json"
VERDICT_FILE = "verdict.json"
FILES = (PRESET_FILE, IDENTITIES_FILE, TRAINING_LOG, POSE_LIBRARY_FILE, VERDICT_FILE)
REQUIRED = ("generator", "prior", "img2id", "img2noise")
OPTIONAL = ("baseline", "pose_generator", "pose_encoder")
COMPONENTS = REQUIRED + OPTIONAL


def model_class(component: str):
    from .models import BaselineNet, IdentityEncoder, IdentityPrior, IdentityUNet, NoiseEncoder, PoseEncoder
    return {"generator": IdentityUNet, "pose_generator": IdentityUNet, "prior": IdentityPrior,
            "img2id": IdentityEncoder, "img2noise": NoiseEncoder, "baseline": BaselineNet,
            "pose_encoder": PoseEncoder}[component]


def has_component(root, component: str) -> bool:
    return (Path(root) / component / "config.json").exists()


def missing(root) -> list[str]:
    """What a complete weights folder lacks, in load order."""
    root = Path(root)
    out = [] if (root / PRESET_FILE).exists() else [PRESET_FILE]
    return out + [c for c in REQUIRED if not has_component(root, c)]


WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def load_component(root, component: str):
    """One component as float32 in eval mode; every weight must be present and used (strict)."""
    from safetensors.torch import load_file
    folder = Path(root) / component
    cls = model_class(component)
    model = cls.from_config(cls.load_config(folder))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(folder / WEIGHTS_NAME).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_component(model, root, component: str) -> None:
    model.save_pretrained(Path(root) / component)

"""The weights-folder layout, in one place: the engine loads it, training writes it,
export and publish copy it.

    preset.json            the resolved training preset
    identities.json        {"pids": [...]}: the raw dataset pid of each table row
    training_log.json      per stage: steps, minutes, losses
    pose_library.json      the representative poses (optional)
    verdict.json           P(same person | distance), fitted on training pairs (optional)
    centralization.json    Pose2ID centralization for search: M poses, eta, view steps, chosen on
                           training identities (optional)
    portraits.webp (+ .json)  every training identity generated once (noise seed 0), made at
                           export so that the apps never wait for 643 generations (optional;
                           lossless WebP: 2.1 MB where PNG takes 2.7)
    identity_map.json      the identity table's UMAP coordinates, fitted at export (optional)
    slider_axes.safetensors  the slider axes of a wide identity: the directions that most change
                           who the generated person looks like to Img2ID (`evaluate.sensitive_axes`),
                           found at export (optional; without them the sliders move along the
                           table's principal axes)
    slider_ranking.json    which slider axes change who the person is, judged at export (optional)
    photo_features.safetensors  Img2ID's vector of every training photo and the table row of its
                           person, made at export: best-of-K drawing keeps the candidate most
                           like the identity's own photos (`ReIDEngine.identity_likeness`; optional,
                           without it the candidate nearest the row)
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
CENTRALIZATION_FILE = "centralization.json"
PORTRAITS_FILE = "portraits.webp"
PORTRAITS_META = "portraits.json"
PORTRAITS_COLUMNS = 32
IDENTITY_MAP_FILE = "identity_map.json"
SLIDER_RANKING_FILE = "slider_ranking.json"
SLIDER_AXES_FILE = "slider_axes.safetensors"
PHOTO_FEATURES_FILE = "photo_features.safetensors"
FILES = (PRESET_FILE, IDENTITIES_FILE, TRAINING_LOG, POSE_LIBRARY_FILE, VERDICT_FILE, CENTRALIZATION_FILE)
REQUIRED = ("generator", "prior", "img2id", "img2noise")
OPTIONAL = ("baseline", "pose_generator", "pose_encoder", "uncertainty")
COMPONENTS = REQUIRED + OPTIONAL


def model_class(component: str):
    from .models import (BaselineNet, IdentityEncoder, IdentityPrior, IdentityUNet, NoiseEncoder, PoseEncoder,
                         VariationalIdentityHead)
    return {"generator": IdentityUNet, "pose_generator": IdentityUNet, "prior": IdentityPrior,
            "img2id": IdentityEncoder, "img2noise": NoiseEncoder, "baseline": BaselineNet,
            "pose_encoder": PoseEncoder, "uncertainty": VariationalIdentityHead}[component]


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


def save_portraits(root, images, fingerprint: str, seed: int = 0) -> Path:
    """(N, H, W, 3) uint8 portraits -> one lossless sheet, PORTRAITS_COLUMNS tiles wide, and
    its JSON (the engine fingerprint and the noise seed, so that portraits made by other
    weights are never shown)."""
    import numpy as np
    from PIL import Image

    from .io import atomic_path
    images = np.asarray(images, np.uint8)
    n, h, w, _ = images.shape
    cols = min(PORTRAITS_COLUMNS, n)
    rows = -(-n // cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    path = Path(root) / PORTRAITS_FILE
    with atomic_path(path, ".webp") as tmp:
        Image.fromarray(sheet).save(tmp, "WEBP", lossless=True, method=6)
    save_keyed_json(root, PORTRAITS_META, fingerprint, seed=int(seed), count=int(n), tile=[int(h), int(w)],
                    columns=int(cols))
    return path


def load_portraits(root, fingerprint: str, seed: int = 0):
    """The shipped portraits as (N, H, W, 3) uint8, or None when absent, unreadable, or made
    by other weights (fingerprint) or another noise seed."""
    import numpy as np
    from PIL import Image
    path = Path(root) / PORTRAITS_FILE
    meta = load_keyed_json(root, PORTRAITS_META, fingerprint)
    if meta is None or meta.get("seed") != int(seed) or not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            sheet = np.asarray(im.convert("RGB"))
        (h, w), cols, n = meta["tile"], meta["columns"], meta["count"]
        tiles = [sheet[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] for i in range(n)]
        return np.stack(tiles) if all(t.shape == (h, w, 3) for t in tiles) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_keyed_tensors(root, filename: str, fingerprint: str, tensors: dict, **meta) -> Path:
    """numpy arrays -> one safetensors file, written atomically and keyed by the engine
    fingerprint; `meta` (how they were made) is kept as strings beside them."""
    from safetensors.numpy import save_file

    from .io import atomic_path
    path = Path(root) / filename
    with atomic_path(path, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"fingerprint": fingerprint, **{k: str(v) for k, v in meta.items()}})
    return path


def load_keyed_tensors(root, filename: str, fingerprint: str, names: tuple[str, ...]) -> dict | None:
    """The named arrays of `save_keyed_tensors`, or None when absent, damaged, or made by other weights."""
    import numpy as np
    from safetensors import safe_open
    path = Path(root) / filename
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("fingerprint") != fingerprint:
                return None
            return {n: np.asarray(f.get_tensor(n)) for n in names}
    except Exception:  # a damaged file: whoever asked falls back to computing without it
        return None


def save_slider_axes(root, axes, fingerprint: str, **meta) -> Path:
    """(num_axes, id_dim) slider axes -> safetensors, keyed by the engine fingerprint."""
    import numpy as np
    return save_keyed_tensors(root, SLIDER_AXES_FILE, fingerprint, {"axes": np.ascontiguousarray(axes, np.float32)},
                              **meta)


def load_slider_axes(root, fingerprint: str, shape: tuple[int, int]):
    """The shipped slider axes as a (num_axes, id_dim) float32 array, or None when absent,
    unreadable, made by other weights, of another shape, or not orthonormal (the sliders then
    fall back to the principal axes)."""
    import numpy as np
    got = load_keyed_tensors(root, SLIDER_AXES_FILE, fingerprint, ("axes",))
    if got is None:
        return None
    axes = got["axes"].astype(np.float32)
    if axes.shape != tuple(shape) or not np.allclose(axes @ axes.T, np.eye(len(axes)), atol=1e-4):
        return None
    return axes


def save_photo_features(root, features, rows, fingerprint: str, **meta) -> Path:
    """Img2ID's vectors of the training photos (N, id_dim), kept at fp16 (3.2 MB for 6,272
    photos of 256 dimensions; a nearest-neighbour score moves by under 1e-3), and the table row
    of each photo's person (N,) -> safetensors keyed by the engine fingerprint."""
    import numpy as np
    return save_keyed_tensors(root, PHOTO_FEATURES_FILE, fingerprint,
                              {"features": np.ascontiguousarray(features, np.float16),
                               "rows": np.ascontiguousarray(rows, np.int32)}, **meta)


def load_photo_features(root, fingerprint: str, id_dim: int, num_identities: int):
    """The shipped training-photo vectors as (float32 (N, id_dim) on the unit sphere, int64 (N,)
    rows), or None when absent, unreadable, made by other weights, or not of these shapes (best
    of K then chooses by the rows)."""
    import numpy as np
    got = load_keyed_tensors(root, PHOTO_FEATURES_FILE, fingerprint, ("features", "rows"))
    if got is None:
        return None
    features, rows = got["features"].astype(np.float32), got["rows"].astype(np.int64)
    if features.ndim != 2 or features.shape[1] != id_dim or rows.shape != (len(features),) or not len(rows) \
            or rows.min() < 0 or rows.max() >= num_identities or not np.isfinite(features).all():
        return None
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12), rows


def save_keyed_json(root, filename: str, fingerprint: str, **payload) -> Path:
    """A JSON file of results computed from these weights, keyed by the engine fingerprint."""
    import json

    from .io import atomic_write_text
    path = Path(root) / filename
    atomic_write_text(path, json.dumps({"fingerprint": fingerprint, **payload}))
    return path


def load_keyed_json(root, filename: str, fingerprint: str) -> dict | None:
    """The payload of `save_keyed_json`, or None (absent, unreadable, made by other weights)."""
    import json
    path = Path(root) / filename
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.pop("fingerprint", None) != fingerprint:
        return None
    return meta


def save_identity_map(root, method: str, coords, fingerprint: str) -> Path:
    """The identity map fitted at export: (K, 2) coordinates, keyed by the engine fingerprint."""
    import numpy as np
    return save_keyed_json(root, IDENTITY_MAP_FILE, fingerprint, method=method,
                           coords=np.round(np.asarray(coords, np.float32), 4).tolist())


def load_identity_map(root, fingerprint: str):
    """{"method", "coords" (K, 2)} of the shipped map, or None (absent, unreadable, other weights)."""
    import numpy as np
    meta = load_keyed_json(root, IDENTITY_MAP_FILE, fingerprint)
    try:
        coords = np.asarray(meta["coords"], np.float32)
        ok = meta["method"] in ("umap", "pca") and coords.ndim == 2 and coords.shape[1] == 2
    except (TypeError, KeyError, ValueError):
        return None
    return {"method": meta["method"], "coords": coords} if ok else None

"""Market-1501-layout datasets, image loading with plain errors, and a decoded uint8 cache.

A dataset is a list of `Sample(path, pid, camid)` as in torchreid. Names follow
Market-1501 (`PPPP_cCsS_NNNNNN_NN.jpg`): pid -1 is junk (dropped), pid 0 a
distractor (kept in the gallery), camid is stored 0-based. Train pids are
relabelled 0..K-1 for the classifier heads; query/gallery keep the raw pids.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from .io import atomic_savez, cache_dir

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_NAME = re.compile(r"^([-\d]+)_c(\d+)")
# The dataset the studio is developed and measured on, when it sits beside the project.
DEMO_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cuhk03-pair1"
MIN_SIDE = 8            # smaller than this holds no person
MAX_PIXELS = 64_000_000   # 8,000 x 8,000: more than any camera's photo; larger is refused before decoding


class DatasetError(ValueError):
    """A dataset folder or file name that cannot be read as Market-1501 layout."""


class ImageError(ValueError):
    """Input that is not a usable image; the message says why in plain words."""


@dataclass(frozen=True)
class Sample:
    path: str
    pid: int
    camid: int


def parse_market_name(name: str) -> tuple[int, int]:
    """'0001_c1s1_000000_00.jpg' -> (pid 1, camid 0). Raises DatasetError naming the file."""
    m = _NAME.match(os.path.basename(name))
    if m is None:
        raise DatasetError(f"{name}: not a Market-1501 name (expected PPPP_cC..., e.g. 0001_c1s1_000000_00.jpg)")
    pid, cam = int(m.group(1)), int(m.group(2))
    if pid < -1 or cam < 1:
        raise DatasetError(f"{name}: pid {pid} / camera {cam} out of range (pid >= -1, camera >= 1)")
    return pid, cam - 1


def list_split(root: str | os.PathLike, split: str) -> list[Sample]:
    """Samples of one split ('train', 'query' or 'gallery'), sorted by file name, junk dropped."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    folder = Path(root) / SPLIT_FOLDERS[split]
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing; a Market-1501-layout dataset has "
                           f"{', '.join(SPLIT_FOLDERS.values())}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no .jpg/.png images")
    samples = []
    for p in files:
        pid, camid = parse_market_name(p.name)
        if pid == -1:
            continue  # Market's junk images are ignored, as torchreid does
        if split == "train" and pid == 0:
            continue  # distractors have no identity to learn
        samples.append(Sample(str(p), pid, camid))
    if not samples:
        raise DatasetError(f"{folder}: only junk images (pid -1), nothing to use")
    return samples


def load_image(source) -> Image.Image:
    """A path, bytes, file object, numpy array or PIL image -> an RGB PIL image, upright.

    Transparent images are composited on white, grayscale is repeated to RGB, the
    EXIF orientation is applied. Raises ImageError for anything that is not a
    decodable picture of a usable size.
    """
    if source is None:
        raise ImageError("no image given")
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 255):
                raise ImageError("array pixel values must lie in [0, 255]")
            arr = arr.astype(np.uint8)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ImageError(f"array of shape {arr.shape} is not an image (H, W[, 1|3|4])")
        img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    else:
        try:
            data = source if isinstance(source, (bytes, bytearray)) else None
            fp = io.BytesIO(data) if data is not None else source
            with warnings.catch_warnings():   # our own, lower limit answers below, before decoding
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except FileNotFoundError:
            raise ImageError(f"{source}: file not found") from None
        except Image.DecompressionBombError as e:  # PIL refuses > ~179 Mpixel headers outright
            raise ImageError(f"image too large: {e}") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            if "runcated" in str(e):
                raise ImageError(f"the image is damaged or truncated: {e}") from None
            raise ImageError(f"not an image file (JPEG, PNG, ...): {e}") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"image is {w}x{h} pixels, over the {MAX_PIXELS // 1_000_000} Mpixel limit")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"image is {w}x{h} pixels: too small to hold a person (at least {MIN_SIDE} per side)")
    try:
        if img.format == "JPEG" and w * h > 4_000_000:
            img.draft("RGB", (w // 4, h // 4))  # decode huge JPEGs at reduced scale: far faster
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"the image is damaged or truncated: {e}") from None
    return flatten_alpha(img).convert("RGB")


def flatten_alpha(img: Image.Image) -> Image.Image:
    """A picture with transparency laid on white (what a viewer shows); others unchanged."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def to_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB image -> uint8 (H, W, 3) at `size` = (H, W).

    A picture whose aspect ratio is far from the model's (a landscape photo) is
    padded with its border colour to that ratio first, so the person is not squashed.
    """
    h, w = size
    iw, ih = img.size
    target = w / h
    if abs(iw / ih - target) / target > 0.15:
        arr = np.asarray(img)
        border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).mean(0).astype(np.uint8)
        if iw / ih > target:
            nw, nh = iw, round(iw / target)
        else:
            nw, nh = round(ih * target), ih
        canvas = Image.new("RGB", (nw, nh), tuple(int(c) for c in border))
        canvas.paste(img, ((nw - iw) // 2, (nh - ih) // 2))
        img = canvas
    return np.asarray(img.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0), dtype=np.uint8)


def decode_images(paths, size: tuple[int, int], progress: bool = True) -> np.ndarray:
    """uint8 (N, H, W, 3); an unreadable file raises a DatasetError that names it."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, p in enumerate(tqdm(paths, desc="decoding", unit="img", disable=not progress, leave=False)):
        try:
            out[i] = to_array(load_image(p), size)
        except ImageError as e:
            raise DatasetError(f"{p}: {e}") from None
    return out


@dataclass
class Split:
    """One decoded split: images uint8 (N, H, W, 3), pids/camids int64 (N,), paths."""
    images: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def load_split(root, split: str, size: tuple[int, int], progress: bool = True,
               use_cache: bool = True) -> Split:
    """Decode a split once into a uint8 cache (an .npz, no pickles) and reuse it after."""
    samples = list_split(root, split)
    key = hashlib.sha1(repr((str(Path(root).resolve()), split, tuple(size),
                             [(s.path, os.path.getsize(s.path)) for s in samples])).encode()).hexdigest()[:16]
    path = cache_dir() / f"{split}-{size[0]}x{size[1]}-{key}.npz"
    pids = np.array([s.pid for s in samples], dtype=np.int64)
    camids = np.array([s.camid for s in samples], dtype=np.int64)
    paths = [s.path for s in samples]
    if use_cache and path.exists():
        with np.load(path, allow_pickle=False) as z:
            return Split(z["images"], pids, camids, paths)
    images = decode_images(paths, size, progress)
    if use_cache:
        atomic_savez(path, images=images)
    return Split(images, pids, camids, paths)


def relabel(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw pids -> (labels 0..K-1, the sorted unique raw pids, so raw = uniq[label])."""
    uniq, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int64), uniq


def to_tensor(images_u8: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    import torch
    arr = np.ascontiguousarray(images_u8)
    if not arr.flags.writeable:
        arr = arr.copy()  # torch refuses to wrap read-only memory (np.load'ed caches)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def validation_split(pids: np.ndarray, camids: np.ndarray, num_ids: int = 100, seed: int = 0):
    """Hold out `num_ids` TRAINING identities to choose things on (never the test split).

    Returns index arrays (train, query, gallery) into the training split: the held-out
    identities give one query per camera (their first image there) and the rest as
    gallery, as the test split is built; the others stay for training.
    """
    uniq = np.unique(pids)
    if not 0 < num_ids < len(uniq):
        raise ValueError(f"num_ids must lie in 1..{len(uniq) - 1}")
    held = np.random.default_rng(seed).choice(uniq, num_ids, replace=False)
    is_held = np.isin(pids, held)
    query, seen = [], set()
    for i in np.flatnonzero(is_held):
        if (pids[i], camids[i]) not in seen:
            seen.add((pids[i], camids[i]))
            query.append(i)
    query = np.array(query, dtype=np.int64)
    gallery = np.setdiff1d(np.flatnonzero(is_held), query)
    return np.flatnonzero(~is_held), query, gallery

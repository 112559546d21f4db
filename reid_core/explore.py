"""Helpers the apps share for exploring a trained engine: no UI code, no model code.

Every function takes the `ReIDEngine` first and works through its public facade:

    sens = dimension_sensitivity(engine, identity=0, seed=0)   # (32,) which dims move the picture
    m = IdentityMap.get(engine)                                # UMAP of the identity table, fitted once
    xy = m.transform(engine.embed([photo]))                    # place a photo on the map
    noise_to_image(engine.invert(photo).noise)                 # the noise as a picture (paper Fig. 6)
    grid(images, cols=4, scale=4)                              # crisp, upscaled contact sheet
"""
from __future__ import annotations

import threading
import weakref
from typing import Sequence

import numpy as np
from PIL import Image


NOISE_CLIP = 2.5


# ---------------------------------------------------------------- images
def upscale(img, factor: int = 4) -> Image.Image:
    """Nearest-neighbour enlargement (a PIL image or a uint8 array), so tiny images stay crisp."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    factor = int(factor)
    if factor < 1:
        raise ValueError("factor must be >= 1")
    if factor == 1:
        return img.copy()
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def grid(images: Sequence, cols: int = 4, scale: int = 4, pad: int = 4,
         background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images (PIL or uint8 arrays) upscaled by `scale` and laid out `cols` per row.

    Cells take the size of the largest image; smaller ones are centred. `pad`
    pixels (at output scale) separate cells and frame the sheet.
    """
    imgs = [upscale(im, scale).convert("RGB") for im in images]
    if not imgs:
        raise ValueError("grid needs at least one image")
    cols = max(1, min(int(cols), len(imgs)))
    rows = -(-len(imgs) // cols)
    cw = max(im.width for im in imgs)
    ch = max(im.height for im in imgs)
    sheet = Image.new("RGB", (cols * cw + (cols + 1) * pad, rows * ch + (rows + 1) * pad), background)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        x = pad + c * (cw + pad) + (cw - im.width) // 2
        y = pad + r * (ch + pad) + (ch - im.height) // 2
        sheet.paste(im, (x, y))
    return sheet


def noise_to_image(noise: np.ndarray, clip: float = NOISE_CLIP) -> Image.Image:
    """A (3, H, W) noise (or (H, W, 3)) clipped to [-clip, clip] and mapped to 0..255 RGB."""
    z = np.asarray(noise, dtype=np.float32)
    if z.ndim == 4 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 3:
        raise ValueError(f"noise must have shape (3, H, W), got {z.shape}")
    if z.shape[0] == 3 and z.shape[-1] != 3:
        z = z.transpose(1, 2, 0)
    z = np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip)
    u8 = np.round((np.clip(z, -clip, clip) + clip) / (2 * clip) * 255).astype(np.uint8)
    return Image.fromarray(u8, "RGB")


# ---------------------------------------------------------------- sensitivity
_sensitivity_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_sensitivity_lock = threading.Lock()
_SENSITIVITY_CACHE_SIZE = 128
_sensitivity_inflight: dict = {}


def _sensitivity_key(engine, identity, seed, delta, steps):
    base = engine.resolve_identity(identity)
    if len(base) != 1:
        raise ValueError("dimension_sensitivity takes one identity")
    base = base.astype(np.float32)
    return base, (base.tobytes(), int(seed), None if delta is None else float(delta), steps)


def axis_steps(engine, delta: float | None) -> np.ndarray:
    """(num_axes,) how far each axis is moved: `delta`, or one standard deviation of the
    trained identities along that axis (None), the unit the sliders are drawn in."""
    k = len(engine.latent_axes)
    return engine.axis_spread.astype(np.float32) if delta is None else np.full(k, float(delta), np.float32)


def slider_ranges(engine, sds: float = 3.0) -> np.ndarray:
    """(num_axes, 2) a slider range per axis: the trained identities' mean +- `sds` standard
    deviations along it, widened to hold every trained identity and 64 prior samples."""
    coords = engine.identity_table @ engine.latent_axes.T
    try:
        coords = np.concatenate([coords, engine.sample_identities(64, seed=12345) @ engine.latent_axes.T])
    except Exception:  # noqa: BLE001 - a prior that cannot sample leaves the table's range
        pass
    mean, sd = coords.mean(0), coords.std(0)
    lo = np.floor(np.minimum(mean - sds * sd, coords.min(0)) * 1000) / 1000  # round numbers, outward
    hi = np.ceil(np.maximum(mean + sds * sd, coords.max(0)) * 1000) / 1000
    return np.stack([lo, hi], 1).astype(np.float64)


def cached_sensitivity(engine, identity, seed: int = 0, delta: float | None = None,
                       steps: int | None = None) -> np.ndarray | None:
    """The cached result of `dimension_sensitivity` for these arguments, or None (never computes)."""
    _, key = _sensitivity_key(engine, identity, seed, delta, steps)
    with _sensitivity_lock:
        hit = _sensitivity_cache.get(engine, {}).get(key)
    return None if hit is None else hit.copy()


def dimension_sensitivity(engine, identity, seed: int = 0, delta: float | None = None,
                          steps: int | None = None, progress=None, batch: int = 17) -> np.ndarray:
    """How much each latent axis moves the picture: (num_axes,) float array.

    Along every axis (`engine.latent_axes`: the identity's dimensions, or its principal
    axes when it is wider than 32) the identity is moved by +-delta (default: one standard
    deviation of the trained identities along that axis, as the sliders are scaled) with
    the noise of `seed` fixed; the value is the mean absolute pixel change (0..255 scale)
    against the unmoved picture, averaged over both directions.
    That is 2 * num_axes + 1 generations (seconds on a CPU for the 64x32 model):
    results are cached per engine (identity, seed, delta, steps), and
    `progress(fraction)` is called after each batch of `batch` images.
    """
    base, key = _sensitivity_key(engine, identity, seed, delta, steps)
    hit = cached_sensitivity(engine, identity, seed, delta, steps)
    if hit is not None:
        return hit
    with _sensitivity_lock:  # concurrent callers of the same key wait for one computation
        key_lock = _sensitivity_inflight.setdefault((id(engine), key), threading.Lock())
    with key_lock:
        hit = cached_sensitivity(engine, identity, seed, delta, steps)
        if hit is not None:
            return hit
        try:
            return _compute_sensitivity(engine, base, key, seed, delta, steps, progress, batch)
        finally:
            with _sensitivity_lock:
                _sensitivity_inflight.pop((id(engine), key), None)


def _compute_sensitivity(engine, base, key, seed, delta, steps, progress, batch) -> np.ndarray:
    axes, move = engine.latent_axes, axis_steps(engine, delta)
    dim = len(axes)
    ids = np.repeat(base, 1 + 2 * dim, 0)
    for d in range(dim):
        ids[1 + 2 * d] += move[d] * axes[d]
        ids[2 + 2 * d] -= move[d] * axes[d]
    z = engine.noise(int(seed))
    arrs = []
    batch = max(1, int(batch))
    for i in range(0, len(ids), batch):
        arrs += [np.asarray(im, dtype=np.float32) for im in engine.generate(ids[i:i + batch], noise=z, steps=steps)]
        if progress is not None:
            progress(len(arrs) / len(ids))
    arr = np.stack(arrs)
    change = np.abs(arr[1:] - arr[0]).reshape(dim, 2, -1).mean(axis=(1, 2))
    with _sensitivity_lock:
        per_engine = _sensitivity_cache.setdefault(engine, {})
        if len(per_engine) >= _SENSITIVITY_CACHE_SIZE:
            per_engine.pop(next(iter(per_engine)))
        per_engine[key] = change
    return change.copy()


# ---------------------------------------------------------------- retrieval over several galleries
# ---------------------------------------------------------------- identity map
class IdentityMap:
    """A 2-D map of the identity space: UMAP fitted on `engine.identity_table`.

    `coords` (K, 2) holds the training identities; `transform(vectors)` places
    new identity vectors (an uploaded photo's Img2ID, gallery features) on it.
    Tables too small for UMAP (fewer than `min_umap_points` rows) use a PCA
    projection instead (`method` says which). `IdentityMap.get(engine)` fits
    once per engine, thread-safe; `IdentityMap.warm_up(engine)` does it in a
    background thread so that an app starts without waiting for it.
    """

    min_umap_points = 10

    def __init__(self, table: np.ndarray, n_neighbors: int = 15, seed: int = 0, min_dist: float = 0.1,
                 method: str = "auto"):
        table = np.asarray(table, dtype=np.float32)
        if table.ndim != 2 or len(table) < 2:
            raise ValueError("an identity map needs a (K >= 2, dim) table")
        if method == "auto":
            method = "umap" if len(table) >= self.min_umap_points else "pca"
        if method not in ("umap", "pca"):
            raise ValueError("method must be 'auto', 'umap' or 'pca'")
        self.method = method
        self.dim = table.shape[1]
        self._lock = threading.Lock()  # umap's transform is not thread-safe
        if method == "umap":
            import umap  # heavy import (numba): only here
            self._umap = umap.UMAP(n_neighbors=max(2, min(n_neighbors, len(table) - 1)), n_components=2,
                                   min_dist=min_dist, random_state=seed, n_jobs=1)
            self.coords = np.asarray(self._umap.fit_transform(table), dtype=np.float32)
        else:
            self._mean = table.mean(0)
            _, _, vt = np.linalg.svd(table - self._mean, full_matrices=False)
            self._axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(self.dim, 2, dtype=np.float32)
            self.coords = ((table - self._mean) @ self._axes).astype(np.float32)

    def transform(self, vectors) -> np.ndarray:
        """(N, dim) or (dim,) identity vectors -> (N, 2) map coordinates."""
        v = np.asarray(vectors, dtype=np.float32)
        v = v[None] if v.ndim == 1 else v
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"vectors must have size {self.dim}, got shape {v.shape}")
        if len(v) == 0:
            return np.zeros((0, 2), np.float32)
        if self.method == "pca":
            return ((v - self._mean) @ self._axes).astype(np.float32)
        with self._lock:
            return np.asarray(self._umap.transform(v), dtype=np.float32)

    # ---- one map per engine, fitted once
    _maps: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    _locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    @classmethod
    def get(cls, engine, **kwargs) -> "IdentityMap":
        """The engine's map, fitting it on first use (concurrent callers wait for one fit)."""
        with cls._registry_lock:
            m = cls._maps.get(engine)
            if m is not None:
                return m
            lock = cls._locks.setdefault(engine, threading.Lock())
        with lock:
            with cls._registry_lock:
                m = cls._maps.get(engine)
            if m is None:
                m = cls(engine.identity_table, **kwargs)
                if m.method == "umap":
                    m.transform(engine.identity_table[:1])  # compile umap's transform now, not on a click
                with cls._registry_lock:
                    cls._maps[engine] = m
        return m

    @classmethod
    def ready(cls, engine) -> bool:
        with cls._registry_lock:
            return engine in cls._maps

    @classmethod
    def warm_up(cls, engine, **kwargs) -> threading.Thread:
        """Fit the engine's map in a daemon thread; returns the thread."""
        def run():
            try:
                cls.get(engine, **kwargs)
            except Exception:  # the tab reports it when it asks again
                pass
        t = threading.Thread(target=run, name="identity-map", daemon=True)
        t.start()
        return t

"""Helpers the apps share for exploring a trained engine: no UI code, no model code.

Every function takes the `ReIDEngine` first and works through its public facade:

    ex = engine.explorer                                       # the engine's remembered results
    sens = ex.sensitivity(identity=0, seed=0)                  # (32,) which axes move the picture
    m = ex.identity_map()                                      # UMAP of the identity table, fitted once
    xy = m.transform(engine.embed([photo]))                    # place a photo on the map
    noise_to_image(engine.invert(photo).noise)                 # the noise as a picture (paper Fig. 6)
    grid(images, cols=4, scale=4)                              # crisp, upscaled contact sheet
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from typing import Sequence

import numpy as np
from PIL import Image

from .io import atomic_savez, cache_dir


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


# ---------------------------------------------------------------- memo
class Memo:
    """A thread-safe mapping that keeps the `size` most recently used entries.

    `get_or_compute(key, compute)` runs `compute()` once when several threads ask for the
    same missing key at the same time; the others wait for its result.
    """

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get_or_compute(self, key, compute):
        missing = object()
        hit = self.get(key, missing)
        if hit is not missing:
            return hit
        with self._lock:
            key_lock = self._inflight.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.get(key, missing)
            if hit is not missing:
                return hit
            try:
                value = compute()
                self.put(key, value)
                return value
            finally:
                with self._lock:
                    self._inflight.pop(key, None)


# ---------------------------------------------------------------- sliders
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
    coords = coords.astype(np.float64)  # float32 would show -0.27399999... on a slider
    mean, sd = coords.mean(0), coords.std(0)
    lo = np.round(np.floor(np.minimum(mean - sds * sd, coords.min(0)) * 1000) / 1000, 3)  # round numbers, outward
    hi = np.round(np.ceil(np.maximum(mean + sds * sd, coords.max(0)) * 1000) / 1000, 3)
    return np.stack([lo, hi], 1)


# ---------------------------------------------------------------- one engine's remembered results
class Explorer:
    """Everything the apps remember about one engine, in one place (`engine.explorer`):
    generated pictures, inversions, training identities' portraits, slider sensitivities
    and the identity map. Every cache is bounded and thread-safe; visitors share it (the
    results depend only on the weights and the arguments). Per-visitor data (a visitor's
    uploads) stays in the app's session state.
    """

    def __init__(self, engine):
        self._engine = weakref.ref(engine)  # the engine owns its explorer, not the other way round
        self.generated = Memo(64)           # (vector bytes, seeds, steps, candidates) -> [PIL images]
        self.inversions = Memo(32)          # (sha1 of the prepared photo, method) -> Inversion
        self.portraits = Memo(max(2048, engine.num_identities + 64))  # (index, seed) -> PIL image
        self.sensitivities = Memo(128)      # (vector bytes, seed, delta, steps) -> (num_axes,)
        self._map = Memo(1)
        self._slider_order = Memo(1)

    @property
    def engine(self):
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the engine of this explorer is gone")
        return engine

    # ---- generation and inversion
    def _generation_key(self, identity, seeds, steps, candidates=None):
        vector = self.engine.resolve_identity(identity)
        return vector, (vector.astype(np.float32).tobytes(), tuple(int(s) for s in seeds), steps,
                        self.engine.candidate_count(candidates))

    def _inversion_key(self, photo, method):
        arr = self.engine.prepare(photo)  # raises ImageError for a bad upload
        return arr, (hashlib.sha1(arr.tobytes()).hexdigest(), method)

    def generate(self, identity, seeds: Sequence[int], steps: int | None = None,
                 candidates: int | None = None) -> list[Image.Image]:
        """`engine.generate(identity, seed=seeds, steps=steps, candidates=candidates)`, remembered."""
        vector, key = self._generation_key(identity, seeds, steps, candidates)
        return list(self.generated.get_or_compute(
            key, lambda: self.engine.generate(vector, seed=list(key[1]), steps=steps, candidates=key[3])))

    def invert(self, photo, method: str = "img2noise"):
        """`engine.invert(photo, method)`, remembered by the prepared photo's content."""
        arr, key = self._inversion_key(photo, method)
        return self.inversions.get_or_compute(key, lambda: self.engine.invert(arr, method=method))

    def remember(self, *, generated=None, inversion=None) -> None:
        """Put results computed elsewhere (e.g. read from disk) where `generate` / `invert`
        will find them: generated=(identity, seeds, steps, images), inversion=(photo, method,
        Inversion)."""
        if generated is not None:
            identity, seeds, steps, images = generated
            self.generated.put(self._generation_key(identity, seeds, steps)[1], list(images))
        if inversion is not None:
            photo, method, inv = inversion
            self.inversions.put(self._inversion_key(photo, method)[1], inv)

    def portrait_images(self, indices, seed: int = 0) -> list[Image.Image]:
        """Generated portraits of training identities (model size): the table never changes."""
        keys = [(int(i), int(seed)) for i in indices]
        missing = sorted({k for k in keys if k not in self.portraits})
        if missing:
            images = self.engine.generate(self.engine.identity_table[[i for i, _ in missing]], seed=seed)
            for key, im in zip(missing, images):
                self.portraits.put(key, im)
        return [self.portraits.get(k) or self.engine.generate(k[0], seed=k[1])[0] for k in keys]

    def all_portraits(self, seed: int = 0, batch: int = 64, progress=None) -> np.ndarray:
        """(N, H, W, 3) uint8: every training identity under the noise of `seed`, generated
        in batches of `batch` (`progress(fraction)` after each)."""
        engine, n = self.engine, self.engine.num_identities
        out = []
        for i in range(0, n, batch):
            out += [np.asarray(im) for im in engine.generate(engine.identity_table[i:i + batch], seed=seed)]
            if progress is not None:
                progress(len(out) / n)
        return np.stack(out)

    def warm_portraits(self, seed: int = 0, batch: int = 64) -> str:
        """Every training identity's portrait in memory (re-identify then never waits on the
        generator): from the weights folder (made at export), else the disk cache, else
        generated once and cached on disk keyed by the weights. Returns where they came from."""
        from .weights import load_portraits
        engine, n = self.engine, self.engine.num_identities
        arrays = load_portraits(engine.weights_dir, engine.cache_key("portraits"), seed) if engine.weights_dir else None
        source = "weights"
        path = cache_dir() / f"portraits-{engine.cache_key('portraits')}-{seed}.npz"
        if arrays is None and path.exists():
            source = "cache"
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = z["images"]
            except (OSError, KeyError, ValueError):
                path.unlink(missing_ok=True)
        if arrays is None or len(arrays) != n:
            source = "generated"
            arrays = self.all_portraits(seed, batch)
            atomic_savez(path, images=arrays)
        for i, a in enumerate(arrays):
            self.portraits.put((i, int(seed)), Image.fromarray(a))
        return source

    # ---- slider sensitivity
    def _sensitivity_key(self, identity, seed, delta, steps):
        base = self.engine.resolve_identity(identity)
        if len(base) != 1:
            raise ValueError("dimension sensitivity takes one identity")
        base = base.astype(np.float32)
        return base, (base.tobytes(), int(seed), None if delta is None else float(delta), steps)

    def cached_sensitivity(self, identity, seed: int = 0, delta: float | None = None,
                           steps: int | None = None) -> np.ndarray | None:
        """The remembered result of `sensitivity` for these arguments, or None (never computes)."""
        hit = self.sensitivities.get(self._sensitivity_key(identity, seed, delta, steps)[1])
        return None if hit is None else hit.copy()

    def sensitivity(self, identity, seed: int = 0, delta: float | None = None, steps: int | None = None,
                    progress=None, batch: int = 17) -> np.ndarray:
        """How much each latent axis moves the picture: (num_axes,) float array.

        Along every axis (`engine.latent_axes`: the identity's dimensions, or its principal
        axes when it is wider than 32) the identity is moved by +-delta (default: one standard
        deviation of the trained identities along that axis, as the sliders are scaled) with
        the noise of `seed` fixed; the value is the mean absolute pixel change (0..255 scale)
        against the unmoved picture, averaged over both directions. That is 2 * num_axes + 1
        generations (seconds on a CPU), remembered per (identity, seed, delta, steps);
        `progress(fraction)` is called after each batch of `batch` images.
        """
        base, key = self._sensitivity_key(identity, seed, delta, steps)
        change = self.sensitivities.get_or_compute(
            key, lambda: self._compute_sensitivity(base, seed, delta, steps, progress, batch))
        return change.copy()

    def _compute_sensitivity(self, base, seed, delta, steps, progress, batch) -> np.ndarray:
        engine = self.engine
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
        return np.abs(arr[1:] - arr[0]).reshape(dim, 2, -1).mean(axis=(1, 2))

    # ---- which sliders change who the person is
    def slider_order(self) -> tuple[list[int], list[float] | None]:
        """Slider axes in the order to show them, and per axis the share of identities whose
        judged person changes when it moves +-2 sd (`evaluate.axis_identity_change`, run at
        export and shipped with the weights); natural order and None when not shipped."""
        return self._slider_order.get_or_compute("order", self._read_slider_order)  # once: every rerun asks

    def shipped_slider_ranking(self) -> dict | None:
        """`evaluate.axis_identity_change`'s result shipped with these weights for these axes,
        or None (absent, unreadable, other weights, or a ranking of other axes: one made
        before the weights carried their identity axes)."""
        from .weights import SLIDER_RANKING_FILE, load_keyed_json
        engine = self.engine
        k = len(engine.latent_axes)
        meta = load_keyed_json(engine.weights_dir, SLIDER_RANKING_FILE, engine.cache_key("slider_ranking")) \
            if engine.weights_dir else None
        try:
            order, rate = [int(d) for d in meta["order"]], [float(r) for r in meta["rate"]]
            same_axes = meta.get("axes_kind", "principal axes") == engine.axes_kind or engine.axes_are_dimensions
            if sorted(order) == list(range(k)) and len(rate) == k and same_axes:
                return meta
        except (TypeError, KeyError, ValueError):
            pass
        return None

    def _read_slider_order(self) -> tuple[list[int], list[float] | None]:
        meta = self.shipped_slider_ranking()
        if meta is None:
            return list(range(len(self.engine.latent_axes))), None
        return [int(d) for d in meta["order"]], [float(r) for r in meta["rate"]]

    # ---- identity map
    def identity_map(self, **kwargs) -> "IdentityMap":
        """The UMAP of the engine's identity table: the one fitted at export (weights folder),
        else fitted on first use (concurrent callers wait for one fit)."""
        def fit():
            from .weights import load_identity_map
            engine = self.engine
            shipped = load_identity_map(engine.weights_dir, engine.cache_key("identity_map")) if engine.weights_dir else None
            if shipped is not None:
                return IdentityMap(engine.identity_table, method=shipped["method"], coords=shipped["coords"])
            return IdentityMap(engine.identity_table, **kwargs)
        return self._map.get_or_compute("map", fit)

    def map_ready(self) -> bool:
        return "map" in self._map

    def warm_up_map(self, **kwargs) -> threading.Thread:
        """Fit the identity map in a daemon thread; returns the thread."""
        def run():
            try:
                self.identity_map(**kwargs)
            except Exception:  # noqa: BLE001 - the tab reports it when it asks again
                pass
        t = threading.Thread(target=run, name="identity-map", daemon=True)
        t.start()
        return t


# ---------------------------------------------------------------- identity map
class IdentityMap:
    """A 2-D map of the identity space: UMAP fitted on `engine.identity_table`.

    `coords` (K, 2) holds the training identities; `transform(vectors)` places new
    identity vectors (an uploaded photo's Img2ID, gallery features) at the inverse-distance
    weighted mean of their `place_neighbors` nearest training identities' positions (the
    start UMAP's own transform refines; measured, it needs a numba compile and a lock
    and changes nothing a person reads off the map). Tables too small for UMAP (fewer
    than `min_umap_points` rows) use a PCA projection (`method` says which). A map
    fitted once (at export) is rebuilt from its `coords` without refitting.
    """

    min_umap_points = 10
    place_neighbors = 5

    def __init__(self, table: np.ndarray, n_neighbors: int = 15, seed: int = 0, min_dist: float = 0.1,
                 method: str = "auto", coords: np.ndarray | None = None):
        table = np.asarray(table, dtype=np.float32)
        if table.ndim != 2 or len(table) < 2:
            raise ValueError("an identity map needs a (K >= 2, dim) table")
        if method == "auto":
            method = "umap" if len(table) >= self.min_umap_points else "pca"
        if method not in ("umap", "pca"):
            raise ValueError("method must be 'auto', 'umap' or 'pca'")
        self.method, self.dim, self._table = method, table.shape[1], table
        self._mean = table.mean(0)
        _, _, vt = np.linalg.svd(table - self._mean, full_matrices=False)
        self._axes = vt[:2].T if vt.shape[0] >= 2 else np.eye(self.dim, 2, dtype=np.float32)
        if coords is not None:
            coords = np.asarray(coords, dtype=np.float32)
            if coords.shape != (len(table), 2):
                raise ValueError(f"coords must have shape ({len(table)}, 2), got {coords.shape}")
            self.coords = coords
        elif method == "umap":
            import umap  # heavy import (numba): only here
            fit = umap.UMAP(n_neighbors=max(2, min(n_neighbors, len(table) - 1)), n_components=2,
                            min_dist=min_dist, random_state=seed, n_jobs=1)
            self.coords = np.asarray(fit.fit_transform(table), dtype=np.float32)
        else:
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
        k = min(self.place_neighbors, len(self._table))
        d = np.sqrt(np.maximum(((v[:, None, :] - self._table[None]) ** 2).sum(-1), 0.0))
        near = np.argsort(d, axis=1)[:, :k]
        w = 1.0 / (np.take_along_axis(d, near, 1) + 1e-6)
        return ((w[..., None] * self.coords[near]).sum(1) / w.sum(1, keepdims=True)).astype(np.float32)

"""Gradio app over `ReIDEngine`: generate, invert, latent sliders, re-identify, identity map.

    python -m app [--weights W] [--gallery DIR] [--port P] [--host H]

`build_demo(engine, gallery)` makes the Blocks; the handlers are the methods of
`ReIDApp` and can be called directly (tests do). Bad input raises `gr.Error`
with a plain message; the server keeps serving.
"""
from __future__ import annotations

import functools
import re
import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from reid_core.data import DatasetError, ImageError, cache_dir
from reid_core.io import atomic_savez
from reid_core.engine import SWAP_KEEP, Certainty, Inversion
from reid_core.explore import IdentityMap, grid, noise_to_image, slider_ranges, upscale

from . import common
from .common import IDENTITY_SOURCES, METHODS, METHODS_HELP, SWAP_KEEP_LABEL, TRAINING

TITLE = "Generative person re-identification"
CONCURRENCY = 2  # simultaneous model calls: one per core of a 2-core CPU
ERROR_SECONDS = 10  # how long an error message stays on screen
_PATH = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][^\s'"\\/]+)+[\\/]([^\s'"\\/]+)""")


def plain(message: str) -> str:
    """A message fit for a visitor: every file path shortened to its file name."""
    return _PATH.sub(r"\1", str(message))


def user_error(message: str) -> gr.Error:
    """An error shown to the visitor; the server log gets one line, no traceback, no path."""
    message = plain(message)
    print(f"handled: {message}", flush=True)
    return gr.Error(message, duration=ERROR_SECONDS, print_exception=False)


def user_warning(message: str) -> None:
    gr.Warning(plain(message))
# Every event that runs a network shares one queue of CONCURRENCY workers (one per core);
# the identity map (which may wait for the UMAP fit) and the slow jobs have their own.
MODEL = dict(concurrency_id="model")
MAP = dict(concurrency_id="map")

CSS = """
.pixelated img, .pixelated canvas, img.pixelated { image-rendering: pixelated; }
#title-row h1 { margin-bottom: 0.2em; }
.small-note { font-size: 0.9em; opacity: 0.85; }
/* person crops are tall: tall thumbnails, the caption under the picture, no empty fixed height */
.person-gallery .grid-wrap { height: auto !important; max-height: none !important; min-height: 0 !important; }
.person-gallery .thumbnail-item { aspect-ratio: 1 / 2.3 !important; height: auto !important; }
.person-gallery .thumbnail-item img { object-fit: contain !important; padding-bottom: 44px; background: #f3f4f6; }
.person-gallery .caption-label { font-size: 12px; line-height: 1.25; max-width: 100% !important; bottom: 2px !important;
  white-space: normal !important; overflow: hidden; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; }
"""

# Clicking a point of the identity map writes its index into the "Identity index" box.
JS = """
() => {
  const bind = () => {
    document.querySelectorAll('#idmap-plot .js-plotly-plot').forEach((gd) => {
      if (gd.__reidBound || !gd.on) return;
      gd.__reidBound = true;
      gd.on('plotly_click', (ev) => {
        const p = ev && ev.points && ev.points[0];
        if (!p || !p.customdata || p.data.name !== 'training identities') return;
        const input = document.querySelector('#idmap-pick input');
        if (!input) return;
        input.value = String(p.customdata[0]);
        input.dispatchEvent(new Event('input', { bubbles: true }));
        input.dispatchEvent(new Event('change', { bubbles: true }));
        input.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', bubbles: true }));
      });
    });
  };
  new MutationObserver(bind).observe(document.body, { childList: true, subtree: true });
  bind();
}
"""


def _safe_preprocess(image: gr.Image, payload):
    """gr.Image opens every upload with PIL before the handler runs; a file that is not an
    image would fail there with a raw PIL error naming a temp path. Say it plainly instead."""
    try:
        return gr.Image.preprocess(image, payload)
    except gr.Error:
        raise
    except Exception as e:  # UnidentifiedImageError, DecompressionBombError, OSError ...
        if "DecompressionBomb" in type(e).__name__:
            raise user_error(common.TOO_LARGE) from None
        raise user_error("That file is not an image (JPEG, PNG, BMP, WebP ...) or it is damaged.") from None


def photo_input(**kwargs) -> gr.Image:
    """An upload box handing the handler the file's path (the engine reads it: RGBA, grayscale, EXIF).

    (Not a gr.Image subclass: Gradio writes a .pyi stub beside any module defining one.)
    """
    kwargs.setdefault("type", "filepath")
    kwargs.setdefault("image_mode", None)  # keep RGBA/grayscale as sent: the engine converts them
    kwargs.setdefault("sources", ["upload", "clipboard"])
    kwargs.setdefault("elem_classes", ["pixelated"])
    image = gr.Image(**kwargs)
    image.preprocess = functools.partial(_safe_preprocess, image)
    return image


def _unique(value):
    """Tag output images with a nonce (a PNG text chunk).

    Gradio caches an output image under the hash of its bytes and writes that file in
    place; two sessions returning the same picture at once (the same portrait, the same
    gallery image) would rewrite a file while it is being served ("Response content
    shorter than Content-Length"). Distinct bytes give each output its own file.
    """
    if isinstance(value, Image.Image):
        value.info["reid-output"] = uuid.uuid4().hex
    elif isinstance(value, (list, tuple)) and not isinstance(value, str):
        for v in value:
            _unique(v)
    return value


def _plain_errors(fn):
    """Turn the engine's plain errors (ImageError, ValueError, DatasetError) into gr.Error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return _unique(fn(*args, **kwargs))
        except gr.Error:
            raise
        except ImageError as e:
            raise user_error(f"That photo cannot be used: {e}") from None
        except Image.DecompressionBombError:  # beyond PIL's own limit, before the engine's check
            raise user_error(common.TOO_LARGE) from None
        except (ValueError, DatasetError, FileNotFoundError) as e:
            raise user_error(str(e)) from None
    return wrapper


NO_POSE, LIBRARY_POSE, PHOTO_POSE = "None", "Library pose", "From a photo"
POSE_MODES = (NO_POSE, LIBRARY_POSE, PHOTO_POSE)


def _library_skeleton(engine, k) -> Image.Image | None:
    if not engine.has_pose_model or not engine.pose_library():
        return None
    h, w = engine.image_size
    return engine.render_pose(int(k or 0), (3 * h, 3 * w))


def _need_photo(photo) -> None:
    if photo is None:
        raise user_error("Upload a photo first (or click one of the example photos).")


class ReIDApp:
    """The handlers, one method per event. Remembered results live in `engine.explorer`
    (`self.memory`); a visitor's own uploads live in gr.State."""

    def __init__(self, engine, gallery: str | None = None):
        self.engine = engine
        self.gallery_folders = common.gallery_choices(gallery)
        self.startup_gallery = self.gallery_folders[0] if gallery else None
        self.indexed_folder: str | None = None
        self._index_lock = threading.Lock()
        self.memory = engine.explorer   # every remembered result (pictures, inversions, maps) lives there
        self._gallery_xy: tuple | None = None
        self.warm_done = threading.Event()  # set when the launch-time background work has finished
        self.ranges = slider_ranges(engine)  # (num_axes, 2)
        self.scale = common.display_scale(engine)

    # ------------------------------------------------------------ generate
    @_plain_errors
    def generate(self, source: str, index, prior_seed, photo, seeds, steps=None, pose_mode=NO_POSE,
                 pose_index=0, pose_photo=None, draw=None):
        """Identity (training index / prior sample / photo) x seeds [x pose] -> (grid image, caption).

        pose_mode: NO_POSE, LIBRARY_POSE (pose_index into the engine's pose library) or
        PHOTO_POSE (the pose of the person in pose_photo). draw: a `common.draw_choices` label
        (None: the engine's best of K).
        """
        vector, what = common.choose_identity(self.engine, source, index, prior_seed, photo)
        seed_list = common.parse_seeds(seeds)
        steps = int(steps) if steps else None
        k = common.draw_candidates(self.engine, draw)
        pose = None
        if pose_mode == LIBRARY_POSE:
            pose = int(pose_index or 0)
        elif pose_mode == PHOTO_POSE:
            if pose_photo is None:
                raise user_error("Upload the photo whose pose to follow.")
            pose = pose_photo
        if pose is not None and not self.engine.has_pose_model:
            raise user_error("These weights have no pose-conditioned generator.")
        if pose is None:
            images = self.memory.generate(vector, seed_list, steps, k)
        else:
            images = self.engine.generate(vector, seed=seed_list, steps=steps, pose=pose, candidates=k)
        cols = min(8, len(images))
        caption = (f"**{len(images)} image(s)** of {what}, seeds {', '.join(map(str, seed_list))}"
                   f" · {steps or self.engine.preset.sample_steps} DDIM steps · {common.draw_words(self.engine, k)}")
        return grid(images, cols=cols, scale=self.scale), caption

    def initial_outputs(self, photo):
        """The results the page opens with (Generate: training identity #0, seeds 0-3; Invert: the
        first example). Cached on disk per weights, so that a restart does not recompute them."""
        fp = self.engine.fingerprint
        tag = hashlib.sha1(Path(photo).read_bytes()).hexdigest()[:12] if photo else "none"
        path = cache_dir() / f"initial-{fp}-{tag}.npz"
        vector = self.engine.identity_table[0]
        steps = None
        seeds = (0, 1, 2, 3)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.memory.remember(generated=(vector, seeds, steps, [Image.fromarray(a) for a in z["generated"]]))
                    if photo:
                        sure = Certainty(float(z["sigma"]), float(z["certainty"])) if "sigma" in z else None
                        self.memory.remember(inversion=(photo, "img2noise", Inversion(
                            z["identity"], z["noise"], Image.fromarray(z["input"]),
                            Image.fromarray(z["reconstruction"]), float(z["psnr"]), sure)))
            except (OSError, KeyError, ValueError):
                path.unlink(missing_ok=True)
        gen = self.generate(TRAINING, 0, 0, None, "0-3")
        inv = self.invert(photo, "img2noise") if photo else (None,) * 4 + ("",)
        if not path.exists():
            try:
                arrays = {"generated": np.stack([np.asarray(im) for im in self.memory.generate(vector, seeds, steps)])}
                if photo:
                    iv = self._inversion(photo, "img2noise")
                    arrays.update(identity=iv.identity, noise=iv.noise, input=np.asarray(iv.input),
                                  reconstruction=np.asarray(iv.reconstruction), psnr=np.float64(iv.psnr))
                    if iv.certainty is not None:
                        arrays.update(sigma=np.float64(iv.certainty.sigma), certainty=np.float64(iv.certainty.certainty))
                atomic_savez(path, **arrays)
            except OSError:
                pass
        return gen, inv

    # ------------------------------------------------------------ invert
    def _inversion(self, photo, method: str):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        return self.memory.invert(photo, method)  # raises ImageError for a bad upload

    @_plain_errors
    def invert(self, photo, method: str = "img2noise"):
        """Photo -> (input, reconstruction, noise image, identity bar chart, caption)."""
        _need_photo(photo)
        inv = self._inversion(photo, method)
        near = self.engine.nearest_identities(inv.identity, k=1)[0]
        fig = common.identity_figure(inv.identity, compare=self.engine.identity_table[near.index],
                                     compare_name=f"nearest training identity #{near.index}")
        caption = (f"**PSNR {inv.psnr:.2f} dB** (reconstruction vs. the {self.engine.image_size[0]}x"
                   f"{self.engine.image_size[1]} input) · method `{method}` · nearest training identity "
                   f"**#{near.index}** (pid {near.pid}, distance {near.distance:.3f}){common.certainty_note(inv.certainty)}"
                   f" · noise shown clipped to [-2.5, 2.5]")
        return (upscale(inv.input, self.scale), upscale(inv.reconstruction, self.scale),
                upscale(noise_to_image(inv.noise), self.scale), fig, caption)

    @_plain_errors
    def swap(self, photo, method: str, source: str, index, prior_seed, keep=SWAP_KEEP, identity_photo=None):
        """Another identity (a training row, a prior sample, or the person of `identity_photo`)
        rendered on this photo's noise -> (sheet: input | reconstruction | swap, caption)."""
        _need_photo(photo)
        keep = float(SWAP_KEEP if keep is None else keep)
        vector, what = common.choose_identity(self.engine, source, index, prior_seed, identity_photo)
        inv = self._inversion(photo, method)
        swapped = self.engine.swap(vector, inv, keep=keep)
        sheet = grid([inv.input, inv.reconstruction, swapped], cols=3, scale=self.scale)
        return sheet, (f"left: the photo · middle: its reconstruction · right: **{what}** on the photo's noise "
                       f"({keep:.0%} of it kept)")

    # ------------------------------------------------------------ latent sliders
    def _coords(self, vector: np.ndarray) -> list[float]:
        """An identity's slider positions: its coordinates along the latent axes, in range."""
        c = np.clip(np.round(self.engine.to_axes(vector).astype(np.float64), 4), self.ranges[:, 0], self.ranges[:, 1])
        return [float(x) for x in c]

    def _loaded(self, noise_seed, vector, caption: str):
        base = [float(x) for x in np.asarray(vector, np.float32)]
        values = self._coords(vector)
        return (*values, self.latent_render(noise_seed, base, *values), base, caption)

    @_plain_errors
    def latent_load(self, source: str, index, prior_seed, photo, noise_seed):
        """Set the sliders to an identity -> (*slider values, image, identity state, caption)."""
        vector, what = common.choose_identity(self.engine, source, index, prior_seed, photo)
        return self._loaded(noise_seed, vector, f"Loaded {what}. Move a slider to move it along one axis.")

    @_plain_errors
    def latent_random(self, noise_seed, seed=None):
        """A new identity from the prior (random seed unless given)."""
        s = int(np.random.default_rng().integers(0, 2 ** 31 - 1)) if seed is None else common.check_seed(seed)
        vector = self.engine.sample_identities(1, seed=s)[0]
        return self._loaded(noise_seed, vector, f"A new identity sampled from the prior (seed {s}).")

    @_plain_errors
    def latent_reset(self, noise_seed, base):
        """Back to the last loaded identity."""
        vector = np.asarray(base, np.float32) if base else self.engine.identity_table[0]
        return self._loaded(noise_seed, vector, "Reset to the loaded identity.")

    @_plain_errors
    def latent_render(self, noise_seed, base, *values):
        """Slider values (coordinates along the latent axes) on the loaded identity, fixed noise
        -> the image (upscaled)."""
        v = self._vector(base, values)
        return upscale(self.engine.generate(v, seed=common.check_seed(noise_seed))[0], 2 * self.scale)

    def _vector(self, base, values) -> np.ndarray:
        k = len(self.ranges)
        if len(values) != k:
            raise ValueError(f"need {k} slider values, got {len(values)}")
        try:
            coords = np.asarray([float(x) for x in values], dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("slider values must be numbers") from None
        base = self.engine.identity_table[0] if not base else np.asarray(base, np.float32)
        return self.engine.from_axes(coords, base)

    @_plain_errors
    def latent_sensitivity(self, noise_seed, base, *values):
        """Per-axis sensitivity of the current identity -> (bar chart, caption). Cached.

        It takes 2 x num_axes + 1 generations: seconds on a CPU for the real model.
        """
        v = self._vector(base, values)
        sens = self.memory.sensitivity(v, seed=common.check_seed(noise_seed))
        return self._sensitivity_outputs(sens)

    def _sensitivity_outputs(self, sens):
        top = np.argsort(-sens)[:5]
        return (common.sensitivity_figure(sens, self.engine.axes_kind),
                f"{common.axes_title(self.engine)} that move this picture most: "
                + ", ".join(f"**{d}** ({sens[d]:.1f})" for d in top))

    @_plain_errors
    def latent_sensitivity_cached(self, noise_seed, base, *values):
        """The sensitivity chart if already computed for this identity and noise; else a hint."""
        sens = self.memory.cached_sensitivity(self._vector(base, values), seed=common.check_seed(noise_seed))
        if sens is None:
            k = len(self.ranges)
            # None clears the chart: another identity's chart must not stay beside these sliders
            return None, (f"Which {common.axes_title(self.engine).lower()} move this picture most? Click "
                               f"**{common.sensitivity_button(self.engine)}** ({2 * k + 1} generations, then cached).")
        return self._sensitivity_outputs(sens)

    # ------------------------------------------------------------ re-identify
    def gallery_status(self, uploads=None) -> str:
        g = self.engine.gallery
        parts = []
        if g is not None and self.indexed_folder:
            parts.append(f"{len(g)} images indexed from `{Path(self.indexed_folder).name}`")
        if uploads is not None and len(uploads):
            parts.append(f"{len(uploads)} of your own photos (kept in your session only)")
        return "**Gallery:** " + (" + ".join(parts) if parts else "empty. Index a folder or add photos below.")

    @_plain_errors
    def index_folder(self, folder, uploads=None, progress=gr.Progress()):
        """Index one of the offered gallery folders (features cached on disk) -> status."""
        if not folder:
            raise ValueError("choose a gallery folder to index")
        if str(folder) not in self.gallery_folders:
            raise ValueError("that folder is not one of the galleries offered by this server")
        with self._index_lock:
            if self.indexed_folder != folder:
                progress(0.0, desc="reading the folder")
                self.engine.index_gallery(folder, progress=lambda f, msg: progress(f, desc=msg))
                self.indexed_folder = folder
                self._gallery_xy = None
        return self.gallery_status(uploads)

    def warm_up(self) -> None:
        """Background work at launch, one thing after another (the CPU is small): index the
        --gallery folder, fit the identity map, compute the sliders' default sensitivity."""
        try:
            self._warm_up_steps()
        finally:
            self.warm_done.set()

    def _warm_up_steps(self) -> None:
        # in the order a visitor needs them: the map (shipped with the weights: instant), the
        # gallery (cached after the first launch), the portraits (shipped), the sliders' chart
        for step in (self.memory.identity_map, self.index_startup_gallery, self.memory.warm_portraits,
                     lambda: self.memory.sensitivity(self.engine.identity_table[0], seed=0)):
            try:
                step()
            except Exception as e:  # the tab reports it when asked again
                print(f"warm-up: {e}")

    def index_startup_gallery(self) -> None:
        """Index the --gallery folder (background thread at launch)."""
        if self.startup_gallery:
            try:
                self.index_folder(self.startup_gallery)
            except Exception as e:  # reported on the page when the visitor indexes it
                print(f"gallery {self.startup_gallery}: {e}")

    @_plain_errors
    def add_uploads(self, files, uploads=None):
        """Add uploaded photos to THIS visitor's gallery -> (new state, status)."""
        files = [files] if isinstance(files, (str, Path)) else list(files or [])
        if not files:
            raise ValueError("choose one or more photos to add")
        paths = [getattr(f, "name", f) for f in files]
        new, problems = common.add_uploads(self.engine, uploads, paths, [Path(p).name for p in paths])
        for p in problems:
            user_warning(p)
        if len(new) == (len(uploads) if uploads is not None else 0):
            raise ImageError("none of those files could be used: " + "; ".join(problems))
        return new, self.gallery_status(new)

    def clear_uploads(self):
        return None, self.gallery_status(None)

    @_plain_errors
    def reidentify(self, photo, k, uploads=None, other_cameras: bool = True, centralize: bool = False,
                   progress=gr.Progress()):
        """Photo -> (nearest training identities with portraits, nearest gallery images, caption).
        A dataset crop's name gives its person and camera: matches are marked right or wrong, and
        with `other_cameras` its own camera's images are left out (the Market protocol).
        `centralize` ranks the gallery by Pose2ID-centralized features (the gallery's are
        computed on first use, with progress, and cached)."""
        _need_photo(photo)
        centralize = bool(centralize) and self.engine.centralization is not None
        qpid, qcam = common.name_identity(photo)
        k = max(1, min(int(k or 5), 20))
        v = self.engine.embed([photo])[0]
        ids = self.engine.nearest_identities(v, k=k)
        portraits = self.memory.portrait_images([m.index for m in ids], seed=0)
        # gallery thumbnails go out at half the display scale: the browser enlarges them (pixelated CSS)
        small = max(1, self.scale // 2)
        id_items = [(upscale(im, small), f"{m.distance:.3f} · #{m.index} (pid {m.pid})")
                    for im, m in zip(portraits, ids)]
        gal_items, note = [], ""
        if (self.indexed_folder and self.engine.gallery is not None) or (uploads is not None and len(uploads)):
            if centralize and self.indexed_folder and self.engine.gallery is not None:
                with self._index_lock:
                    self.engine.centralize_gallery(progress=lambda f, msg: progress(f, desc=msg))
            hits = self.engine.search(photo if centralize else v, k=k, uploads=uploads, with_images=True,
                                      skip_camera=qcam if other_cameras else None, centralize=centralize)
            gal_items = [(upscale(m.image, small), common.match_label(m, qpid)) for m in hits]
            if qpid >= 0:
                right = sum(m.pid == qpid for m in hits)
                note = (f" The query is a dataset crop (pid {qpid}, camera {qcam + 1}): {right} of {len(hits)} "
                        f"matches (✅) are that person" + (f", camera {qcam + 1} left out." if other_cameras else "."))
        else:
            note = " No gallery yet: index a folder or add photos below to search images too."
        caption = (f"Query photo{common.certainty_note(self.engine.certainty_or_none(photo))}. "
                   f"Nearest **training identities** (their generated portraits) and nearest **gallery images**, "
                   f"by Euclidean distance between Img2ID vectors (the number on each image; smaller is more "
                   f"alike){common.verdict_note(self.engine)}.{note}{common.centralize_note(self.engine, centralize)}")
        return id_items, gal_items, caption

    # ------------------------------------------------------------ identity map
    def _gallery_coords(self, imap: IdentityMap):
        g = self.engine.gallery if self.indexed_folder else None
        if g is None or not len(g):
            return None, None
        cached = self._gallery_xy
        if cached is not None and cached[0] is g:
            return cached[1], g.pids
        xy = imap.transform(g.features)
        self._gallery_xy = (g, xy)
        return xy, g.pids

    @_plain_errors
    def identity_map(self, photo=None, index=None, uploads=None):
        """The UMAP of identities (fitted once) with the photo placed on it -> (figure, caption)."""
        imap = self.memory.identity_map()
        photo_xy, note = None, ""
        if photo is not None:
            v = self.engine.embed([photo])[0]
            photo_xy = imap.transform(v)[0]
            near = self.engine.nearest_identities(v, k=1)[0]
            note = f" Your photo (star) is nearest to training identity **#{near.index}** (pid {near.pid})."
        gxy, gpids = self._gallery_coords(imap)
        uxy = imap.transform(uploads.features) if uploads is not None and len(uploads) else None
        hl = int(index) if index is not None and 0 <= int(index) < self.engine.num_identities else None
        fig = common.map_figure(self.engine, imap, highlight=hl, photo_xy=photo_xy, gallery_xy=gxy,
                                gallery_pids=gpids, uploads_xy=uxy)
        return fig, (f"{self.engine.num_identities} training identities"
                     + (f", {len(gxy)} gallery images" if gxy is not None else "")
                     + f". Click a grey point (or type its index) to see that identity.{note}")

    @_plain_errors
    def show_identity(self, index):
        """A training identity's generated portraits -> (sheet, caption)."""
        i = common.check_index(self.engine, index)
        sheet = common.portrait(self.engine, i, scale=self.scale)
        return (sheet,
                f"Training identity **#{i}** (dataset pid {self.engine.identity_pids[i]}), 4 noises")


# ---------------------------------------------------------------- layout
def _identity_picker(engine, prefix: str):
    """Radio + index + prior seed controls; returns the components."""
    source = gr.Radio(list(IDENTITY_SOURCES), value=TRAINING, label="Identity", elem_id=f"{prefix}-source")
    with gr.Row():
        index = gr.Number(value=0, precision=0, minimum=0, maximum=engine.num_identities - 1,
                          label=f"Training identity index (0-{engine.num_identities - 1})", elem_id=f"{prefix}-index")
        prior_seed = gr.Number(value=0, precision=0, minimum=0, label="Prior seed (new identity)",
                               elem_id=f"{prefix}-prior-seed")
    return source, index, prior_seed


def build_demo(engine, gallery: str | None = None) -> gr.Blocks:
    """The Gradio Blocks over one engine; `gallery` is a folder offered for indexing (and
    indexed in the background by `launch`)."""
    app = ReIDApp(engine, gallery)
    examples = common.example_photos(engine)
    first = examples[0] if examples else None
    # the first visit is never empty: the Generate and Invert tabs open with results
    g_init, i_init = app.initial_outputs(first)
    h, w = engine.image_size

    with gr.Blocks(title=TITLE, fill_width=False, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        demo.reid_app = app  # for launch() and tests

        def warm_status() -> bool:
            """True once the launch-time background work (gallery, portraits, map) is done."""
            return app.warm_done.is_set()

        gr.api(warm_status, api_name="warm_status")
        gr.Markdown(f"# {TITLE}\nAn identity is the {engine.preset.id_dim}-d conditioning vector of a diffusion "
                    f"generator (Asperti et al. 2024). Weights: preset `{engine.preset.name}`, {h}x{w} images, "
                    f"{engine.num_identities} training identities.", elem_id="title-row")
        uploads = gr.State(None)   # this visitor's own photos: an engine Gallery, never shared

        # ---------------------------------------------------------- Generate
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    g_source, g_index, g_prior = _identity_picker(engine, "gen")
                    g_photo = photo_input(label="Photo (for 'From a photo')", height=220, elem_id="gen-photo")
                    g_seeds = gr.Textbox(value="0-3", label="Noise seeds (e.g. 0-7 or 1, 5, 9; at most 16)",
                                         elem_id="gen-seeds")
                    with gr.Accordion("Options", open=False):
                        g_steps = gr.Slider(1, 50, value=engine.preset.sample_steps, step=1, label="DDIM steps")
                        draws = common.draw_choices(engine)
                        g_draw = gr.Radio(draws, value=draws[0], label="Drawing", info=common.DRAW_HELP,
                                          visible=len(draws) > 1, elem_id="gen-draw")
                    with gr.Accordion("Pose", open=engine.has_pose_model, visible=engine.has_pose_model):
                        g_pose_mode = gr.Radio(list(POSE_MODES), value=NO_POSE, label="Pose",
                                               info="None: the pose lives in the noise (the paper's way)",
                                               elem_id="gen-pose-mode")
                        n_lib = max(1, len(engine.pose_library()))
                        g_pose_index = gr.Slider(0, n_lib - 1, value=0, step=1, label="Library pose",
                                                 elem_id="gen-pose-index")
                        g_pose_view = gr.Image(_library_skeleton(engine, 0), label="Skeleton", format="png",
                                               interactive=False, height=160, elem_id="gen-pose-view")
                        g_pose_photo = photo_input(label="Photo whose pose to follow", height=160,
                                                   elem_id="gen-pose-photo")
                        g_pose_index.change(lambda k: _library_skeleton(engine, k), [g_pose_index], [g_pose_view],
                                            api_name="pose_skeleton", queue=False)
                    g_btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
                with gr.Column(scale=2):
                    g_out = gr.Image(label="Generated", format="png", elem_classes=["pixelated"],
                                     interactive=False, elem_id="gen-out", height=420, value=g_init[0])
                    g_caption = gr.Markdown(g_init[1], elem_id="gen-caption")
            gr.Examples([[p] for p in examples], inputs=[g_photo], label="Example photos (click, then "
                        "choose 'From a photo')", examples_per_page=12)
            g_btn.click(app.generate, [g_source, g_index, g_prior, g_photo, g_seeds, g_steps,
                                       g_pose_mode, g_pose_index, g_pose_photo, g_draw],
                        [g_out, g_caption], api_name="generate", **MODEL)

        # ---------------------------------------------------------- Invert
        with gr.Tab("Invert", id="invert"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    i_photo = photo_input(label="Photo of a person", height=260, elem_id="inv-photo", value=first)
                    i_method = gr.Radio(list(METHODS), value="img2noise", label="Noise inversion",
                                        info=METHODS_HELP)
                    i_btn = gr.Button("Invert", variant="primary", elem_id="inv-btn")
                    gr.Examples([[p] for p in examples], inputs=[i_photo], label="Example photos",
                                examples_per_page=12)
                with gr.Column(scale=2):
                    with gr.Row():
                        i_input = gr.Image(i_init[0], label=f"Input ({h}x{w})", format="png", interactive=False,
                                           elem_classes=["pixelated"], height=280, elem_id="inv-input")
                        i_rec = gr.Image(i_init[1], label="Reconstruction", format="png", interactive=False,
                                         elem_classes=["pixelated"], height=280, elem_id="inv-rec")
                        i_noise = gr.Image(i_init[2], label="Noise", format="png",
                                           interactive=False, elem_classes=["pixelated"], height=280,
                                           elem_id="inv-noise")
                    i_caption = gr.Markdown(i_init[4], elem_id="inv-caption")
            i_plot = gr.Plot(i_init[3], label="Identity vector", elem_id="inv-plot")
            with gr.Accordion("Swap: another identity on this photo's noise", open=True):
                with gr.Row():
                    with gr.Column(scale=1, min_width=300):
                        s_source = gr.Radio(list(IDENTITY_SOURCES), value=TRAINING, label="Identity to put on the noise",
                                            elem_id="swap-source")
                        with gr.Row():
                            s_index = gr.Number(value=1, precision=0, minimum=0,
                                                maximum=engine.num_identities - 1, label="Training identity index")
                            s_prior = gr.Number(value=0, precision=0, minimum=0, label="Prior seed")
                        s_photo = photo_input(label="Photo of the person to put on it (for 'From a photo')",
                                              height=200, elem_id="swap-photo")
                        s_keep = gr.Slider(0.0, 1.0, value=SWAP_KEEP, step=0.05, label=SWAP_KEEP_LABEL)
                        s_btn = gr.Button("Swap identity", elem_id="swap-btn")
                    with gr.Column(scale=2):
                        s_out = gr.Image(label="Photo · reconstruction · swapped", format="png",
                                         interactive=False, elem_classes=["pixelated"], height=280)
                        s_caption = gr.Markdown()
            i_btn.click(app.invert, [i_photo, i_method], [i_input, i_rec, i_noise, i_plot, i_caption],
                        api_name="invert", **MODEL)
            s_btn.click(app.swap, [i_photo, i_method, s_source, s_index, s_prior, s_keep, s_photo], [s_out, s_caption],
                        api_name="swap", **MODEL)

        # ---------------------------------------------------------- Latent sliders
        with gr.Tab("Latent sliders", id="sliders") as sliders_tab:
            base = gr.State([])
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    l_out = gr.Image(label="Fixed noise, your identity", format="png", interactive=False,
                                     elem_classes=["pixelated"], height=560, elem_id="lat-out")
                    l_noise = gr.Number(value=0, precision=0, minimum=0, label="Noise seed", elem_id="lat-noise")
                    with gr.Row():
                        l_reset = gr.Button("Reset", elem_id="lat-reset")
                        l_random = gr.Button("Randomise", variant="primary", elem_id="lat-random")
                    with gr.Accordion("Start from ...", open=False):
                        l_source, l_index, l_prior = _identity_picker(engine, "lat")
                        l_photo = photo_input(label="Photo (for 'From a photo')", height=180)
                        l_load = gr.Button("Load identity", elem_id="lat-load")
                    l_caption = gr.Markdown(elem_id="lat-caption")
                with gr.Column(scale=3):
                    order, labels, order_note = common.slider_layout(engine)
                    if order_note:
                        gr.Markdown(order_note, elem_classes=["small-note"])
                    by_axis = {}
                    for row in range(0, len(order), 4):
                        with gr.Row():
                            for d in order[row:row + 4]:
                                lo, hi = (float(x) for x in app.ranges[d])
                                by_axis[d] = gr.Slider(lo, hi, value=round((lo + hi) / 2, 4), step=(hi - lo) / 200,
                                                       label=labels[d], min_width=120, elem_id=f"lat-dim-{d}")
                    sliders = [by_axis[d] for d in range(len(order))]  # handlers take them in axis order
            with gr.Row():
                l_sens_btn = gr.Button(common.sensitivity_button(engine), elem_id="lat-sens-btn", scale=0, min_width=260)
                l_sens_caption = gr.Markdown(elem_id="lat-sens-caption")
            l_sens = gr.Plot(label="Sensitivity", elem_id="lat-sens")
            state_out = [*sliders, l_out, base, l_caption]
            sens_in = [l_noise, base, *sliders]
            sens_out = [l_sens, l_sens_caption]
            l_load.click(app.latent_load, [l_source, l_index, l_prior, l_photo, l_noise], state_out,
                         api_name="latent_load", **MODEL).then(
                app.latent_sensitivity_cached, sens_in, sens_out, api_name="latent_sensitivity_after_load")
            l_random.click(app.latent_random, [l_noise], state_out, api_name="latent_random", **MODEL).then(
                app.latent_sensitivity_cached, sens_in, sens_out, api_name="latent_sensitivity_after_random")
            l_reset.click(app.latent_reset, [l_noise, base], state_out, api_name="latent_reset", **MODEL).then(
                app.latent_sensitivity_cached, sens_in, sens_out, api_name="latent_sensitivity_after_reset")
            l_sens_btn.click(app.latent_sensitivity, sens_in, sens_out, api_name="latent_sensitivity",
                             concurrency_limit=1, concurrency_id="sensitivity")
            gr.on([s.input for s in sliders] + [l_noise.submit], app.latent_render, sens_in, [l_out],
                  trigger_mode="always_last", show_progress="hidden", api_name="latent_render", **MODEL).then(
                app.latent_sensitivity_cached, sens_in, sens_out, show_progress="hidden",
                api_name="latent_sensitivity_after_move")  # the chart follows the sliders
            sliders_tab.select(
                lambda noise, b, *vals: app.latent_load(TRAINING, 0, 0, None, noise) if not b else
                (*vals, gr.skip(), b, gr.skip()),
                [l_noise, base, *sliders], state_out, api_name="latent_open", **MODEL).then(
                app.latent_sensitivity_cached, sens_in, sens_out, api_name="latent_sensitivity_on_open")

        # ---------------------------------------------------------- Re-identify
        with gr.Tab("Re-identify", id="reid"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    q_photo = photo_input(label="Query photo", height=260, elem_id="reid-photo", value=first)
                    q_k = gr.Slider(1, 20, value=5, step=1, label="k (matches to show)")
                    q_other = gr.Checkbox(True, label="Other cameras only (Market protocol)", elem_id="reid-other",
                                          info="leave out gallery images from the query's own camera "
                                               "(known when its file name is a dataset name)")
                    q_central = gr.Checkbox(False, label=common.centralize_label(engine), elem_id="reid-central",
                                            visible=engine.centralization is not None,
                                            info="Pose2ID: each photo redrawn in several poses, its feature pulled "
                                                 "towards theirs; the first search redraws the whole gallery "
                                                 "(minutes), later ones take about a second")
                    q_btn = gr.Button("Re-identify", variant="primary", elem_id="reid-btn")
                    gr.Examples([[p] for p in examples], inputs=[q_photo], label="Example photos",
                                examples_per_page=12)
                with gr.Column(scale=3):
                    q_ids = gr.Gallery(label="Nearest training identities (generated portraits)", columns=6,
                                       format="png", object_fit="contain", fit_columns=False,
                                       elem_classes=["pixelated", "person-gallery"], elem_id="reid-ids")
                    q_gal = gr.Gallery(label="Nearest gallery images", columns=6, format="png", object_fit="contain",
                                       fit_columns=False, elem_classes=["pixelated", "person-gallery"],
                                       elem_id="reid-gallery")
                    q_caption = gr.Markdown()
            with gr.Accordion("Gallery", open=True):
                status = gr.Markdown(app.gallery_status(), elem_id="gallery-status")
                with gr.Row():
                    with gr.Column():
                        folder = gr.Dropdown([(Path(f).name, f) for f in app.gallery_folders],
                                             value=app.startup_gallery or
                                             (app.gallery_folders[0] if app.gallery_folders else None),
                                             label="Gallery folder offered by this server", elem_id="gallery-folder",
                                             info="Market-1501 layout (bounding_box_test) or a folder of images")
                        idx_btn = gr.Button("Index folder", elem_id="index-btn",
                                            interactive=bool(app.gallery_folders))
                    with gr.Column():
                        up_files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                           label="Add your own photos to your gallery",
                                           elem_id="gallery-files")
                        with gr.Row():
                            up_btn = gr.Button("Add to my gallery", elem_id="add-btn")
                            clr_btn = gr.Button("Clear my photos")
            q_btn.click(app.reidentify, [q_photo, q_k, uploads, q_other, q_central], [q_ids, q_gal, q_caption],
                        api_name="reidentify",
                        **MODEL)
            idx_btn.click(app.index_folder, [folder, uploads], [status], api_name="index_folder",
                          concurrency_limit=1)
            up_btn.click(app.add_uploads, [up_files, uploads], [uploads, status], api_name="add_to_gallery",
                         **MODEL)
            clr_btn.click(app.clear_uploads, None, [uploads, status], api_name="clear_gallery")

        # ---------------------------------------------------------- Identity map
        with gr.Tab("Identity map", id="map") as map_tab:
            with gr.Row():
                with gr.Column(scale=3):
                    m_plot = gr.Plot(label="Identity map", elem_id="idmap-plot")
                    m_caption = gr.Markdown("The map is computed the first time this tab opens (UMAP).",
                                            elem_id="idmap-caption")
                with gr.Column(scale=1, min_width=280):
                    m_index = gr.Number(value=0, precision=0, minimum=0, maximum=engine.num_identities - 1,
                                        label="Identity index (or click a grey point)", elem_id="idmap-pick")
                    m_portrait = gr.Image(label="That identity, generated", format="png", interactive=False,
                                          elem_classes=["pixelated"], elem_id="idmap-portrait", height=200)
                    m_who = gr.Markdown()
                    m_photo = photo_input(label="Place a photo on the map", height=200, elem_id="idmap-photo",
                                          value=first)
                    m_btn = gr.Button("Place photo", variant="primary", elem_id="idmap-btn")
            gr.Examples([[p] for p in examples], inputs=[m_photo], label="Example photos (then 'Place photo')",
                        examples_per_page=12)
            map_in, map_out = [m_photo, m_index, uploads], [m_plot, m_caption]
            map_tab.select(app.identity_map, map_in, map_out, api_name="identity_map", **MAP)
            m_btn.click(app.identity_map, map_in, map_out, api_name="place_photo", **MAP)
            m_index.change(app.show_identity, [m_index], [m_portrait, m_who], api_name="show_identity", **MODEL,
                           trigger_mode="always_last")
            map_tab.select(app.show_identity, [m_index], [m_portrait, m_who], api_name="show_identity_on_open",
                           **MODEL)

        gr.Markdown("Images are tiny (the model works at %dx%d) and shown enlarged without smoothing. "
                    "Photos you upload stay in your session and are not stored." % (h, w),
                    elem_classes=["small-note"])
    return demo


LAUNCH_KWARGS = dict(css=CSS, js=JS, theme=gr.themes.Soft(), show_error=True, max_file_size="25mb")


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
          concurrency: int = CONCURRENCY, **kwargs):
    """Queue and launch; `block=False` returns at once (tests)."""
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block,
                       **{**LAUNCH_KWARGS, **kwargs})


def launch(weights: str | None = None, gallery: str | None = None, host: str = "127.0.0.1",
           port: int | None = 7860, concurrency: int = CONCURRENCY, warm_up: bool = True, block: bool = True):
    """Load the engine, build the demo, start background warm-ups and serve."""
    from reid_core.engine import ReIDEngine
    engine = ReIDEngine.from_pretrained(common.weights_arg(weights), **common.engine_options(),
                                        threads=max(1, (os.cpu_count() or 1) // max(1, concurrency)))
    demo = build_demo(engine, gallery)
    result = serve(demo, host, port, block=False, concurrency=concurrency)
    print(f"Serving the demo at {result[1]}", flush=True)
    if warm_up:  # after the server is up: the page is served at once, the rest fills in
        def warm():
            t0 = time.perf_counter()
            demo.reid_app.warm_up()
            print(f"ready: every tab warmed up in {time.perf_counter() - t0:.0f} s", flush=True)
        threading.Thread(target=warm, name="warm-up", daemon=True).start()
    else:
        print("ready", flush=True)
    if block:
        demo.block_thread()
    return demo, result


if __name__ == "__main__":
    launch()

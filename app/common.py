"""What both apps share: weights/gallery resolution, identity choice, figures, examples.

UI-framework free (no gradio, no streamlit); the model logic stays in `reid_core`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from reid_core.data import DEMO_DATA, DatasetError, ImageError, cache_dir, parse_market_name
from reid_core.engine import INVERSION_METHODS, REFINE_STEPS
from reid_core.explore import IdentityMap, grid, noise_to_image, upscale  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DEFAULT_WEIGHTS = "weights"

TRAINING, PRIOR, PHOTO = "Training identity", "New identity (prior)", "From a photo"
IDENTITY_SOURCES = (TRAINING, PRIOR, PHOTO)
SWAP_KEEP_LABEL = "How much of the photo's noise to keep (1: all, its colours win; 0: none, a fresh pose)"
METHODS = INVERSION_METHODS
METHODS_HELP = ("img2noise: the trained network (one pass); refined: its noise after "
                f"{REFINE_STEPS} gradient steps through the sampling chain; ddim: DDIM inversion")
MAX_SEEDS = 16
SCALE = 4            # display upscaling of model-size images (64x32 -> 256x128)
MAX_UPLOADS = 200    # photos one visitor may add to their own gallery
TOO_LARGE = "That photo cannot be used: it is far too large (over 179 Mpixels); send one under 64 Mpixels."
BAD_IMAGE = (ImageError, Image.DecompressionBombError)  # what reading an upload can raise


QUICK_DRAW = "Quick: one draw"
DRAW_HELP = ("Best of K draws each picture under K noises and keeps the one Img2ID finds likeliest to be "
             "the identity; one draw is several times faster and a little less sure of the identity")


def best_draw(k: int) -> str:
    return f"Best of {k}: truest to the identity"


def draw_choices(engine) -> list[str]:
    """How Generate may draw a picture: best of the engine's K (its default), or once."""
    k = engine.identity_candidates
    return [best_draw(k), QUICK_DRAW] if k > 1 else [QUICK_DRAW]


def draw_candidates(engine, choice) -> int | None:
    """A `draw_choices` label -> `engine.generate`'s `candidates` (None: the engine's own)."""
    if not choice or choice == best_draw(engine.identity_candidates):
        return None
    if choice == QUICK_DRAW:
        return 1
    raise ValueError(f"choose how to draw: {' or '.join(draw_choices(engine))}")


def draw_words(engine, candidates: int | None) -> str:
    """For a caption: 'best of 6' or 'one draw'."""
    k = engine.candidate_count(candidates)
    return f"best of {k}" if k > 1 else "one draw"


def display_scale(engine) -> int:
    """Nearest-neighbour enlargement for display: x4 at 64x32, more for smaller models."""
    return max(SCALE, 128 // max(1, engine.image_size[1]))


def weights_arg(cli_value: str | None = None) -> str:
    """--weights, else $REID_WEIGHTS, else `weights/` at the repository root."""
    if cli_value:
        return cli_value
    env = os.environ.get("REID_WEIGHTS")
    if env:
        return env
    return str(ROOT / DEFAULT_WEIGHTS)


def engine_options() -> dict:
    """Engine settings an operator sets in the environment: $REID_PRECISION (fp32 | bf16) and
    $REID_POSE_BACKEND (mediapipe). Read here, at the apps' entry, never inside the engine."""
    return {"precision": os.environ.get("REID_PRECISION", "fp32"),
            "pose_backend": os.environ.get("REID_POSE_BACKEND", "mediapipe")}


def gallery_choices(cli_gallery: str | None = None) -> list[str]:
    """The folders a visitor may index: the one given at start-up and the demo dataset if present.

    Visitors choose among these only: a free-text path would let anyone browse the server's files.
    """
    out = []
    if cli_gallery:
        out.append(str(Path(cli_gallery).expanduser().resolve()))
    if DEMO_DATA.is_dir() and str(DEMO_DATA.resolve()) not in out:
        out.append(str(DEMO_DATA.resolve()))
    return out


def parse_seeds(text, limit: int = MAX_SEEDS) -> list[int]:
    """'0-3, 7' -> [0, 1, 2, 3, 7]; an int -> [it]. Plain ValueError messages."""
    if isinstance(text, (int, np.integer)):
        return [int(text)]
    text = str(text or "").strip()
    if not text:
        raise ValueError("give at least one seed, e.g. 0 or 0-3 or 1, 5, 9")
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise ValueError(f"seed {part!r} is not a whole number or a range like 0-3")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise ValueError(f"range {part!r} runs backwards")
        if b - a + 1 + len(seeds) > limit:
            raise ValueError(f"at most {limit} seeds at once")
        seeds.extend(range(a, b + 1))
    if any(s >= 2 ** 31 for s in seeds):
        raise ValueError("seeds must be below 2**31")
    return seeds


def check_index(engine, index) -> int:
    if index is None or (isinstance(index, float) and not np.isfinite(index)):
        raise ValueError("choose a training identity index")
    i = int(index)
    if i != index or not 0 <= i < engine.num_identities:
        raise ValueError(f"training identity index must be a whole number in 0..{engine.num_identities - 1}")
    return i


def check_seed(seed) -> int:
    if seed is None:
        return 0
    s = int(seed)
    if s != seed or not 0 <= s < 2 ** 31:
        raise ValueError("a seed must be a whole number in 0..2147483647")
    return s


def choose_identity(engine, source: str, index=0, prior_seed=0, photo=None) -> tuple[np.ndarray, str]:
    """The identity vector (id_dim,) the visitor picked and a short description of it."""
    if source == TRAINING:
        i = check_index(engine, index)
        return engine.identity_table[i].copy(), f"training identity #{i} (dataset pid {engine.identity_pids[i]})"
    if source == PRIOR:
        s = check_seed(prior_seed)
        return engine.sample_identities(1, seed=s)[0], f"a new identity sampled from the prior (seed {s})"
    if source == PHOTO:
        if photo is None:
            raise ValueError("Upload a photo first (or click one of the example photos), "
                             "or choose another identity source.")
        vector, known = engine.photo_identity(photo)
        if known is not None:
            return vector, (f"the person of the uploaded photo, recognised as training identity #{known} "
                            f"(dataset pid {engine.identity_pids[known]}) and drawn under their learned identity")
        return vector, "the identity of the uploaded photo (Img2ID)"
    raise ValueError(f"identity source must be one of {', '.join(IDENTITY_SOURCES)}")


def axis_word(engine) -> str:
    """What a slider moves: one of the identity's dimensions, or one of its axes."""
    return "dim" if engine.axes_are_dimensions else "axis"


def slider_layout(engine) -> tuple[list[int], list[str], str]:
    """(axes in display order, each axis's label, a note on the order): the axes that most often
    change who the person is come first when the weights carry that ranking (judged at export)."""
    order, rate = engine.explorer.slider_order()
    word = axis_word(engine)
    labels = [f"{word} {d}" + (f" · changes who {rate[d]:.0%}" if rate is not None else "") for d in range(len(order))]
    note = ("Sliders are ordered by how often moving them ±2 sd changes who the judge (the baseline "
            "re-ID network) sees, over 16 training identities: the paper's Fig. 11, measured."
            if rate is not None else "")
    return order, labels, note


def sensitivity_button(engine) -> str:
    """The label of the button that measures which sliders move the picture."""
    return f"Which {engine.axes_kind} matter?"


def axes_title(engine) -> str:
    """The sliders' kind, plural, for captions: dimensions, identity axes (the directions that
    most change who the generated person looks like) or principal axes."""
    return engine.axes_kind.capitalize()


# ---------------------------------------------------------------- per-visitor gallery
def add_uploads(engine, uploads, photos: Sequence, names: Sequence[str]):
    """A visitor's gallery with their readable photos added (an engine `Gallery`, held in their
    session only) and the problems met."""
    return engine.gallery_from_photos(photos, names, base=uploads, limit=MAX_UPLOADS)


def verdict_note(engine) -> str:
    """What "same person NN%" means, when the weights carry a verdict."""
    v = engine.verdict
    if v is None:
        return ""
    return (f"; \"same person\" is the probability that a gallery image shows the query's person, "
            f"calibrated on training-identity pairs ({v.threshold:.2f} is even odds)")


def certainty_note(certainty) -> str:
    """HAVANA's "how sure is this identity", for a caption ("" when the weights lack the head)."""
    if certainty is None:
        return ""
    return (f" · identity certainty: **{certainty.label}**, mean σ {certainty.sigma:.3f} (HAVANA's spread of "
            f"the identity estimate; measured, it does not tell right from wrong matches: read it as how "
            f"typical the photo is, not as a guarantee)")


def centralize_label(engine) -> str:
    c = engine.centralization
    if not c:
        return "Pose2ID centralization"
    return f"Pose2ID centralization ({c['poses']} pose{'s' if c['poses'] != 1 else ''})"


def centralize_note(engine, used: bool) -> str:
    """Says how the gallery was ranked when centralization was on."""
    if not used:
        return ""
    c = engine.centralization
    return (f" Ranked with **Pose2ID centralization**: the query and every gallery photo redrawn in {c['poses']} "
            f"pose{'s' if c['poses'] != 1 else ''}, each feature pulled towards its views' (η = {c['eta']:g}); the "
            f"numbers shown stay the raw Img2ID distances.")


def name_identity(photo) -> tuple[int, int]:
    """(pid, camera) when a photo's file name follows Market-1501 (a dataset crop), else (-1, -1)."""
    name = getattr(photo, "filename", None) or (photo if isinstance(photo, (str, Path)) else "")
    try:
        return parse_market_name(Path(str(name)).name)
    except DatasetError:
        return -1, -1


def match_label(m, query_pid: int = -1) -> str:
    """What a person reads first comes first (tiles are narrow): whether it is truly the query's
    person when both names carry ids (✅/❌), the distance, how likely the calibrated verdict
    finds it the same person, then who and which camera when the name says, else the file name
    (an upload's name as the visitor gave it: it may hold a slash)."""
    parts = []
    if m.pid >= 0 and query_pid >= 0:
        parts.append("✅" if m.pid == query_pid else "❌")
    parts.append(f"{m.distance:.3f}")
    if m.same_probability is not None:
        parts[-1] += f" · {m.same_probability:.0%} same"
    if m.pid >= 0:
        parts.append(f"· pid {m.pid}" + (f" · cam {m.camid + 1}" if m.camid >= 0 else ""))
    else:
        parts.append(f"· {m.path if m.source == 'uploads' else Path(m.path).name}")
    return " ".join(parts)


# ---------------------------------------------------------------- examples
def example_photos(engine, n_real: int = 5) -> list[str]:
    """Example photo paths: files in app/examples/, real query crops from the demo dataset
    (read in place, never copied), and generated persons made from the loaded weights."""
    out = sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    q = DEMO_DATA / "query"
    if q.is_dir():
        files = sorted(p for p in q.iterdir() if p.suffix.lower() == ".jpg")
        if files:
            step = max(1, len(files) // n_real)
            out += [str(p) for p in files[::step][:n_real]]
    out += generated_examples(engine)
    return out


def generated_examples(engine, n: int = 3) -> list[str]:
    """A few generated persons saved (once per weights) in the cache folder."""
    folder = cache_dir() / f"examples-{engine.fingerprint}"
    paths = [folder / f"generated-{i}.png" for i in range(n)]
    if not all(p.exists() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        idx = [0, engine.num_identities // 2, engine.num_identities - 1][:n]
        images = engine.generate(engine.identity_table[idx], seed=list(range(len(idx))))
        for p, im in zip(paths, images):
            upscale(im, 2).save(p)
    return [str(p) for p in paths]


# ---------------------------------------------------------------- figures (plotly)
def identity_figure(vector: np.ndarray, title: str = "Identity vector (Img2ID)", compare=None,
                    compare_name: str = "nearest training identity"):
    import plotly.graph_objects as go
    v = np.asarray(vector, dtype=float)
    fig = go.Figure(go.Bar(x=list(range(len(v))), y=v, name="this photo",
                           marker_color=["#e4572e" if x < 0 else "#2e86ab" for x in v],
                           hovertemplate="dim %{x}: %{y:.4f}<extra></extra>"))
    if compare is not None:
        fig.add_trace(go.Scatter(x=list(range(len(v))), y=np.asarray(compare, float), mode="markers",
                                 name=compare_name, marker=dict(color="#333", symbol="line-ew-open", size=14),
                                 hovertemplate="dim %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="dimension", yaxis_title="value", height=320,
                      margin=dict(l=50, r=20, t=50, b=40), bargap=0.15, template="plotly_white",
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(dtick=2)
    return fig


def sensitivity_figure(sens: np.ndarray, kind: str = "dimensions"):
    """Bar chart of `Explorer.sensitivity`: each slider moved by one standard deviation
    of the training identities along it, both ways. `kind`: `engine.axes_kind`."""
    import plotly.graph_objects as go
    s = np.asarray(sens, dtype=float)
    top = set(np.argsort(-s)[:5].tolist())
    dimensions = kind == "dimensions"
    word = "dim" if dimensions else "axis"
    fig = go.Figure(go.Bar(x=list(range(len(s))), y=s,
                           marker_color=["#f18f01" if i in top else "#9aa5b1" for i in range(len(s))],
                           hovertemplate=word + " %{x}: %{y:.2f}<extra></extra>"))
    fig.update_layout(title=f"Which {kind} move the picture (mean |pixel change| for ±1 sd of the training identities)",
                      xaxis_title="dimension" if dimensions else kind.replace("axes", "axis"), yaxis_title="mean |Δ pixel| (0-255)",
                      height=300,
                      margin=dict(l=50, r=20, t=50, b=40), template="plotly_white")
    fig.update_xaxes(dtick=2)
    return fig


def map_figure(engine, imap: IdentityMap, highlight: int | None = None, photo_xy=None,
               gallery_xy=None, gallery_pids=None, uploads_xy=None):
    """The identity map: training identities (grey), gallery images coloured by person,
    the visitor's uploads, the uploaded photo (star) and a highlighted identity."""
    import plotly.express as px
    import plotly.graph_objects as go
    xy = imap.coords
    idx = np.arange(len(xy))
    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=xy[:, 0], y=xy[:, 1], mode="markers", name="training identities",
        marker=dict(size=6, color="#5c6b7a", opacity=0.7),
        customdata=np.stack([idx, engine.identity_pids], 1),
        hovertemplate="identity #%{customdata[0]}<br>pid %{customdata[1]}<extra></extra>"))
    if gallery_xy is not None and len(gallery_xy):
        pids = np.asarray(gallery_pids)
        palette = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
        colours = [palette[hash(int(p)) % len(palette)] if p >= 0 else "#bbbbbb" for p in pids]
        fig.add_trace(go.Scattergl(
            x=gallery_xy[:, 0], y=gallery_xy[:, 1], mode="markers", name="gallery images (colour = person)",
            marker=dict(size=5, color=colours, symbol="diamond", opacity=0.8), customdata=pids,
            hovertemplate="gallery image<br>pid %{customdata}<extra></extra>"))
    if uploads_xy is not None and len(uploads_xy):
        fig.add_trace(go.Scatter(x=uploads_xy[:, 0], y=uploads_xy[:, 1], mode="markers", name="your gallery uploads",
                                 marker=dict(size=9, color="#8e44ad", symbol="square")))
    if highlight is not None and 0 <= highlight < len(xy):
        fig.add_trace(go.Scatter(x=[xy[highlight, 0]], y=[xy[highlight, 1]], mode="markers",
                                 name=f"identity #{highlight}",
                                 marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color="#f18f01", width=3))))
    if photo_xy is not None:
        fig.add_trace(go.Scatter(x=[float(photo_xy[0])], y=[float(photo_xy[1])], mode="markers",
                                 name="your photo", marker=dict(size=20, color="#e4572e", symbol="star",
                                                                line=dict(color="white", width=1))))
    fig.update_layout(title=f"Identity map ({imap.method.upper()} of {len(xy)} training identities)",
                      height=560, template="plotly_white", margin=dict(l=30, r=20, t=50, b=30),
                      legend=dict(orientation="h", y=-0.08), clickmode="event", dragmode="pan",
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""))
    return fig


def portrait(engine, index: int, seeds=(0, 1, 2, 3), scale: int | None = None) -> Image.Image:
    """A small sheet of one training identity under a few noises (remembered by the engine's explorer)."""
    images = [engine.explorer.portrait_images([int(index)], seed=s)[0] for s in seeds]
    return grid(images, cols=len(images), scale=scale or display_scale(engine))

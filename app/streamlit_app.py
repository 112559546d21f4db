"""Streamlit app over `ReIDEngine`: the same five features as the Gradio app.

    python -m app.streamlit_server [-- --weights W --gallery DIR]
    (or: streamlit run app/streamlit_app.py [-- --weights W --gallery DIR])

Weights: --weights, else $REID_WEIGHTS, else weights/. Gallery: --gallery or $REID_GALLERY.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from app import common
from app.streamlit_server import fix_streamlit_gzip
from app.common import BAD_IMAGE, IDENTITY_SOURCES, METHODS, METHODS_HELP, PHOTO, SWAP_KEEP_LABEL
from reid_core.data import DatasetError, ImageError
from reid_core.engine import SWAP_KEEP, ReIDEngine, WeightsError
from reid_core.explore import grid, noise_to_image, slider_ranges, upscale


TITLE = "Generative person re-identification"
fix_streamlit_gzip()  # under `streamlit run`; `python -m app.streamlit_server` applies it before serving


def _args():
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--weights", default=None)
    p.add_argument("--gallery", default=os.environ.get("REID_GALLERY"))
    args, _ = p.parse_known_args(sys.argv[1:])
    return args


@st.cache_resource(show_spinner="Loading the model ...")
def load_engine(weights: str) -> ReIDEngine:
    engine = ReIDEngine.from_pretrained(weights, **common.engine_options(),
                                        threads=max(1, min(2, os.cpu_count() or 1)))
    engine.explorer.warm_up_map()  # the map fits in the background; the page does not wait for it
    return engine


@st.cache_resource(show_spinner=False)
def example_photos(_engine, weights: str) -> list[str]:
    return common.example_photos(_engine)


def show_images(where, images, captions=None, scale: int = 1) -> None:
    """Images enlarged `scale` times by nearest neighbour (crisp pixels), served by st.image as PNG
    (its default JPEG would blur these small pictures)."""
    images = images if isinstance(images, (list, tuple)) else [images]
    captions = captions if isinstance(captions, (list, tuple)) else [captions] * len(images)
    where.image([upscale(im, scale) for im in images], caption=[str(c) if c else "" for c in captions],
                output_format="PNG")


def show_error(e: Exception) -> None:
    if isinstance(e, Image.DecompressionBombError):
        st.error(common.TOO_LARGE)
    elif isinstance(e, ImageError):
        st.error(f"That photo cannot be used: {e}")
    else:
        st.error(str(e))


def photo_picker(engine, key: str, label: str = "Photo of a person"):
    """An upload box and an example picker; returns the chosen photo (bytes or a path) or None."""
    examples = example_photos(engine, str(engine.preset.name))
    c1, c2 = st.columns([3, 2])
    up = c1.file_uploader(label, key=f"{key}-upload", help="JPEG, PNG, BMP or WebP; a photo of one person")
    names = ["(none)"] + [Path(p).name for p in examples]
    choice = c2.selectbox("... or an example", names, index=1 if len(names) > 1 else 0, key=f"{key}-example")
    photo = up.getvalue() if up is not None else (examples[names.index(choice) - 1] if choice != "(none)" else None)
    if photo is not None:
        try:
            show_images(c2, engine.prepare(photo), None, scale=max(3, 96 // engine.image_size[1]))
            c2.caption("as the model sees it")
        except BAD_IMAGE as e:
            show_error(e)
            return None
    return photo


def identity_controls(engine, key: str):
    """Identity source, index, prior seed, photo -> (vector, description) or raises ValueError."""
    source = st.radio("Identity", list(IDENTITY_SOURCES), horizontal=True, key=f"{key}-source")
    c1, c2 = st.columns(2)
    index = c1.number_input(f"Training identity index (0-{engine.num_identities - 1})", 0,
                            engine.num_identities - 1, 0, key=f"{key}-index")
    prior_seed = c2.number_input("Prior seed (new identity)", 0, 2 ** 31 - 1, 0, key=f"{key}-prior")
    photo = photo_picker(engine, f"{key}-photo") if source == PHOTO else None
    return source, index, prior_seed, photo


def require_photo(photo) -> None:
    if photo is None:
        raise ValueError("Upload a photo first (or pick an example).")


# ---------------------------------------------------------------- tabs
def tab_generate(engine, scale):
    left, right = st.columns([1, 2])
    with left:
        source, index, prior_seed, photo = identity_controls(engine, "gen")
        seeds = st.text_input("Noise seeds (e.g. 0-7 or 1, 5, 9; at most 16)", "0-3", key="gen-seeds")
        steps = st.slider("DDIM steps", 1, 50, int(engine.preset.sample_steps), key="gen-steps")
        draws = common.draw_choices(engine)
        draw = st.radio("Drawing", draws, key="gen-draw", help=common.DRAW_HELP) if len(draws) > 1 else None
        pose = None
        if engine.has_pose_model and engine.pose_library():
            n = len(engine.pose_library())
            choice = st.selectbox("Pose", ["none (in the noise)"] + [f"library pose {k}" for k in range(n)],
                                  key="gen-pose")
            if choice.startswith("library"):
                pose = int(choice.rsplit(" ", 1)[1])
                h, w = engine.image_size
                show_images(st, engine.render_pose(pose, (2 * h, 2 * w)), "skeleton", scale=1)
        go = st.button("Generate", type="primary", key="gen-btn")
    with right:
        if go or "gen-result" not in st.session_state:
            try:
                if go:
                    vector, what = common.choose_identity(engine, source, index, prior_seed, photo)
                    seed_list = common.parse_seeds(seeds)
                else:  # the first visit shows a result
                    vector, what = engine.identity_table[0], "training identity #0"
                    seed_list, steps = [0, 1, 2, 3], engine.preset.sample_steps
                k = common.draw_candidates(engine, draw) if go else None
                images = engine.generate(vector, seed=seed_list, steps=int(steps), pose=pose if go else None,
                                         candidates=k)
                st.session_state["gen-result"] = (grid(images, cols=min(8, len(images)), scale=1, pad=1),
                                                  f"{len(images)} image(s) of {what}, seeds "
                                                  f"{', '.join(map(str, seed_list))}, "
                                                  f"{common.draw_words(engine, k)}")
            except (ValueError, *BAD_IMAGE) as e:
                show_error(e)
        if "gen-result" in st.session_state:
            img, cap = st.session_state["gen-result"]
            show_images(st, img, cap, scale=scale)


def tab_invert(engine, scale):
    left, right = st.columns([1, 2])
    with left:
        photo = photo_picker(engine, "inv")
        method = st.radio("Noise inversion", METHODS, horizontal=True, key="inv-method",
                          help=METHODS_HELP)
        go = st.button("Invert", type="primary", key="inv-btn")
    with right:
        if go:
            try:
                require_photo(photo)
                inv = engine.invert(photo, method=method)
                st.session_state["inv-result"] = (inv, method)
            except (ValueError, *BAD_IMAGE) as e:
                show_error(e)
        if "inv-result" in st.session_state:
            inv, m = st.session_state["inv-result"]
            c = st.columns(3)
            show_images(c[0], inv.input, "input", scale)
            show_images(c[1], inv.reconstruction, "reconstruction", scale)
            show_images(c[2], noise_to_image(inv.noise), "noise (clipped to ±2.5)", scale)
            near = engine.nearest_identities(inv.identity, k=1)[0]
            st.markdown(f"**PSNR {inv.psnr:.2f} dB** · method `{m}` · nearest training identity "
                        f"**#{near.index}** (pid {near.pid}, distance {near.distance:.3f})"
                        + common.certainty_note(getattr(inv, "certainty", None)))
    if "inv-result" in st.session_state:
        inv, _ = st.session_state["inv-result"]
        near = engine.nearest_identities(inv.identity, k=1)[0]
        st.plotly_chart(common.identity_figure(inv.identity, compare=engine.identity_table[near.index],
                                               compare_name=f"nearest training identity #{near.index}"),
                        key="inv-plot")
        with st.expander("Swap: another identity on this photo's noise", expanded=True):
            c1, c2 = st.columns([1, 2])
            with c1:
                source, index, prior_seed, photo_a = identity_controls(engine, "swap")
                keep = st.slider(SWAP_KEEP_LABEL, 0.0, 1.0, SWAP_KEEP, 0.05, key="swap-keep")
                go_swap = st.button("Swap identity", key="swap-btn")
            if go_swap:
                try:
                    vector, what = common.choose_identity(engine, source, index, prior_seed, photo_a)
                    swapped = engine.swap(vector, inv, keep=keep)
                    show_images(c2, grid([inv.input, inv.reconstruction, swapped], cols=3, scale=1, pad=1),
                                f"photo · reconstruction · {what} on the photo's noise ({keep:.0%} of it kept)", scale)
                except ValueError as e:
                    show_error(e)


def _set_sliders(engine, vector, ranges):
    """Put an identity on the sliders: its coordinates along the latent axes; keep the vector."""
    coords = np.clip(np.round(engine.to_axes(vector).astype(np.float64), 4), ranges[:, 0], ranges[:, 1])
    for d, v in enumerate(coords):
        st.session_state[f"lat-dim-{d}"] = float(v)
    st.session_state["lat-base"] = [float(x) for x in np.asarray(vector, np.float32)]


def tab_sliders(engine, scale):
    ranges = slider_ranges(engine)
    word = common.axis_word(engine)
    if "lat-base" not in st.session_state:
        _set_sliders(engine, engine.identity_table[0], ranges)
    left, right = st.columns([1, 3])
    with left:
        noise_seed = st.number_input("Noise seed", 0, 2 ** 31 - 1, 0, key="lat-noise")
        b1, b2 = st.columns(2)
        if b1.button("Reset", key="lat-reset"):
            _set_sliders(engine, np.asarray(st.session_state["lat-base"], np.float32), ranges)
        if b2.button("Randomise", type="primary", key="lat-random"):
            s = int(np.random.default_rng().integers(0, 2 ** 31 - 1))
            _set_sliders(engine, engine.sample_identities(1, seed=s)[0], ranges)
            st.session_state["lat-what"] = f"a new identity from the prior (seed {s})"
        with st.expander("Start from ..."):
            source, index, prior_seed, photo = identity_controls(engine, "lat")
            if st.button("Load identity", key="lat-load"):
                try:
                    vector, what = common.choose_identity(engine, source, index, prior_seed, photo)
                    _set_sliders(engine, vector, ranges)
                    st.session_state["lat-what"] = what
                except (ValueError, *BAD_IMAGE) as e:
                    show_error(e)
        image_slot = st.empty()
        st.caption(f"Identity: {st.session_state.get('lat-what', 'training identity #0')}")
    with right:
        order, labels, order_note = common.slider_layout(engine)
        if order_note:
            st.caption(order_note)
        cols = st.columns(4)
        by_axis = {d: cols[i % 4].slider(labels[d], float(ranges[d][0]), float(ranges[d][1]),
                                         step=float(ranges[d][1] - ranges[d][0]) / 200, key=f"lat-dim-{d}")
                   for i, d in enumerate(order)}
        values = [by_axis[d] for d in range(len(order))]
    vector = engine.from_axes(np.asarray(values, np.float32), st.session_state["lat-base"])
    show_images(image_slot, engine.explorer.generate(vector, [int(noise_seed)])[0],
                "fixed noise, your identity", 2 * scale)
    sens = engine.explorer.cached_sensitivity(vector, seed=int(noise_seed))
    text = f"moving each {word} by ±1 sd of the training identities"
    if st.button(common.sensitivity_button(engine), key="lat-sens-btn", help=f"{2 * len(ranges) + 1} generations, then cached"):
        bar = st.progress(0.0, text=text)
        sens = engine.explorer.sensitivity(vector, seed=int(noise_seed),
                                           progress=lambda f: bar.progress(float(f), text=text))
        bar.empty()
    if sens is not None:
        top = np.argsort(-sens)[:5]
        st.markdown(f"{common.axes_title(engine)} that move this picture most: "
                    + ", ".join(f"**{d}** ({sens[d]:.1f})" for d in top))
        st.plotly_chart(common.sensitivity_figure(sens, engine.axes_kind), key="lat-sens")


def tab_reid(engine, scale, folders):
    uploads = st.session_state.get("uploads")   # this visitor's own photos: an engine Gallery
    n_up = len(uploads) if uploads is not None else 0
    with st.expander("Gallery", expanded=engine.gallery is None and not n_up):
        c1, c2 = st.columns(2)
        with c1:
            if folders:
                folder = st.selectbox("Gallery folder offered by this server", folders, key="gal-folder")
                if st.button("Index folder", key="gal-index"):
                    bar = st.progress(0.0, text="reading the folder")
                    try:
                        engine.index_gallery(folder, progress=lambda f, msg: bar.progress(float(f), text=msg))
                        st.session_state["gal-indexed"] = folder
                    except (DatasetError, ValueError) as e:
                        show_error(e)
            else:
                st.info("No gallery folder offered (start with --gallery DIR).")
        with c2:
            files = st.file_uploader("Add your own photos to your gallery", accept_multiple_files=True,
                                     key="gal-files")
            if st.button("Add to my gallery", key="gal-add") and files:
                new, problems = common.add_uploads(engine, uploads, [f.getvalue() for f in files],
                                                   [f.name for f in files])
                for p in problems:
                    st.warning(p)
                st.session_state["uploads"] = uploads = new
                n_up = len(uploads)
            if st.button("Clear my photos", key="gal-clear"):
                st.session_state["uploads"] = uploads = None
                n_up = 0
    g = engine.gallery
    st.caption(f"Gallery: {len(g) if g is not None else 0} indexed images"
               f" + {n_up} of your own photos (kept in your session only)")
    left, right = st.columns([1, 3])
    with left:
        photo = photo_picker(engine, "reid", "Query photo")
        k = st.slider("k (matches to show)", 1, 20, 5, key="reid-k")
        other = st.checkbox("Other cameras only (Market protocol)", True, key="reid-other",
                            help="leave out gallery images from the query's own camera (known when its file "
                                 "name is a dataset name)")
        central = st.checkbox(common.centralize_label(engine), False, key="reid-central",
                              disabled=engine.centralization is None,
                              help="Pose2ID: each photo redrawn in several poses, its feature pulled towards "
                                   "theirs; the first search redraws the whole gallery (minutes), later ones take "
                                   "about a second") and engine.centralization is not None
        go = st.button("Re-identify", type="primary", key="reid-btn")
    with right:
        if go:
            try:
                require_photo(photo)
                v = engine.embed([photo])[0]
                ids = engine.nearest_identities(v, k=k)
                portraits = engine.explorer.portrait_images([m.index for m in ids], seed=0)
                sure = engine.certainty_or_none(photo)
                if sure is not None:
                    st.markdown("Query photo" + common.certainty_note(sure))
                st.markdown("**Nearest training identities** (generated portraits)")
                show_images(st, portraits, [f"{m.distance:.3f} · #{m.index} (pid {m.pid})" for m in ids], scale)
                if (g is not None and len(g)) or n_up:
                    up = st.session_state.get("reid-upload")
                    qpid, qcam = common.name_identity(up.name if up is not None else photo)
                    if central and g is not None and len(g) and g.centralized is None:
                        bar = st.progress(0.0, text="redrawing the gallery in the library poses")
                        engine.centralize_gallery(progress=lambda f, msg: bar.progress(f, text=msg))
                        bar.empty()
                    hits = engine.search(photo if central else v, k=k, uploads=uploads, with_images=True,
                                         skip_camera=qcam if other else None, centralize=central)
                    st.markdown("**Nearest gallery images** (distance: smaller is more alike)"
                                + common.verdict_note(engine).replace(";", " —", 1)
                                + common.centralize_note(engine, central))
                    show_images(st, [m.image for m in hits], [common.match_label(m, qpid) for m in hits], scale)
                    if qpid >= 0:
                        st.caption(f"The query is a dataset crop (pid {qpid}, camera {qcam + 1}): "
                                   f"{sum(m.pid == qpid for m in hits)} of {len(hits)} matches (✅) are that person"
                                   + (f", camera {qcam + 1} left out." if other else "."))
                else:
                    st.info("No gallery yet: index a folder or add photos to search images too.")
            except (ValueError, *BAD_IMAGE) as e:
                show_error(e)


def tab_map(engine, scale):
    left, right = st.columns([3, 1])
    with right:
        photo = photo_picker(engine, "map", "Place a photo on the map")
        place = st.checkbox("Show my photo on the map", value=True, key="map-place")
        index = st.number_input("Identity index", 0, engine.num_identities - 1, 0, key="map-index")
        show_images(st, common.portrait(engine, int(index), scale=1),
                    f"training identity #{int(index)} (pid {engine.identity_pids[int(index)]})", scale)
    with left:
        if not engine.explorer.map_ready() and not st.button("Show the identity map (computed once, ~20 s)",
                                                           key="map-btn"):
            st.info("The identity map (UMAP) is being computed in the background.")
            return
        with st.spinner("Fitting UMAP ..."):
            imap = engine.explorer.identity_map()
        photo_xy = None
        if place and photo is not None:
            try:
                photo_xy = imap.transform(engine.embed([photo])[0])[0]
            except BAD_IMAGE as e:
                show_error(e)
        g = engine.gallery
        gxy = imap.transform(g.features) if g is not None and len(g) else None
        uploads = st.session_state.get("uploads")
        uxy = imap.transform(uploads.features) if uploads is not None and len(uploads) else None
        fig = common.map_figure(engine, imap, highlight=int(index), photo_xy=photo_xy, gallery_xy=gxy,
                                gallery_pids=g.pids if gxy is not None else None, uploads_xy=uxy)
        event = st.plotly_chart(fig, key="map-plot", on_select="rerun", selection_mode="points")
        try:
            pts = list(event["selection"]["points"]) if event else []
        except (KeyError, TypeError):
            pts = []
        picked = [p for p in pts if p.get("curve_number") == 0 and "point_index" in p]
        if picked:
            i = int(picked[0]["point_index"])
            show_images(st, common.portrait(engine, i, scale=1),
                        f"selected: training identity #{i} (pid {engine.identity_pids[i]})", scale)


def main():
    st.set_page_config(page_title=TITLE, layout="wide")
    args = _args()
    weights = common.weights_arg(args.weights)
    st.session_state["weights"] = weights
    try:
        engine = load_engine(weights)
    except WeightsError as e:
        st.title(TITLE)
        st.error(str(e))
        st.stop()
    h, w = engine.image_size
    st.title(TITLE)
    st.caption(f"An identity is the {engine.preset.id_dim}-d conditioning vector of a diffusion generator "
               f"(Asperti et al. 2024). Weights: preset `{engine.preset.name}`, {h}x{w} images, "
               f"{engine.num_identities} training identities.")
    scale = common.display_scale(engine)
    tabs = st.tabs(["Generate", "Invert", "Latent sliders", "Re-identify", "Identity map"])
    with tabs[0]:
        tab_generate(engine, scale)
    with tabs[1]:
        tab_invert(engine, scale)
    with tabs[2]:
        tab_sliders(engine, scale)
    with tabs[3]:
        tab_reid(engine, scale, common.gallery_choices(args.gallery))
    with tabs[4]:
        tab_map(engine, scale)


main()

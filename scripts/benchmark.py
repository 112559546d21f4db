"""How the project stands: re-ID, generation, inversion, poses and speed, in one command.

    python scripts/benchmark.py [--weights weights] [--data ../shared/datasets/cuhk03-pair1] [--quick]

Writes docs/BENCHMARKS.md, docs/benchmarks.json and the pictures in docs/img/. `--quick`
(under 5 minutes here) uses subsets for the slow parts and says so in the report.
The test split is only measured, never used to choose anything.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


from reid_core.data import DEMO_DATA, load_split
from reid_core.engine import INVERSION_METHODS, REFINE_STEPS, SWAP_KEEP, Gallery, ReIDEngine, psnr
from reid_core.evaluate import (CENTRALIZE_M, calibrate_verdict, choose_centralization, evaluate, evaluate_variants,
                                generate_rows, identity_consistency)
from timing import timeit  # scripts/timing.py

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {  # the issues' figures (2-core CPU): generator that obeys identity, inversion, poses
    "img2id_mAP": 0.45, "img2id_rank1": 0.45, "baseline_mAP": 0.36, "identity_consistency": 0.80,
    "diversity": 0.5, "training_wall_min": 120.0, "weights_mb": 24.0, "psnr_img2noise": 22.0,
    "generate_1_p50_ms": 100.0, "pose_found_rate": 0.85, "pose_pck02": 0.80, "pose_fidelity_pck02": 0.75,
    "pose_extract_p50_ms": 60.0, "identity_kept_gap": 0.05,
}


def upscale(img: Image.Image, f: int = 3) -> Image.Image:
    return img.resize((img.width * f, img.height * f), Image.Resampling.NEAREST)


def grid(rows: list[list[Image.Image]], f: int = 3, pad: int = 2, labels: list[str] | None = None) -> Image.Image:
    w, h = rows[0][0].width * f, rows[0][0].height * f
    left = 90 if labels else 0
    out = Image.new("RGB", (left + len(rows[0]) * (w + pad) + pad, len(rows) * (h + pad) + pad), (245, 245, 245))
    d = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        if labels:
            d.text((4, r * (h + pad) + h // 2), labels[r], fill=(20, 20, 20))
        for c, im in enumerate(row):
            out.paste(upscale(im.convert("RGB"), f), (left + pad + c * (w + pad), pad + r * (h + pad)))
    return out


def noise_image(z: np.ndarray) -> Image.Image:
    """(3, H, W) noise clipped to [-2.5, 2.5] and mapped to an image, as the paper shows it."""
    a = ((np.clip(z, -2.5, 2.5) + 2.5) / 5.0 * 255).round().astype(np.uint8)
    return Image.fromarray(a.transpose(1, 2, 0))


# ---------------------------------------------------------------- sections

def bench_reid(engine, data) -> dict:
    out = {"img2id": evaluate(engine, data, "img2id", progress=False)}
    if engine.baseline is not None:
        out["baseline"] = evaluate(engine, data, "baseline", progress=False)
    return out


def bench_retrieval(engine, data) -> dict:
    """Raw / + NFC / + re-ranking / both, for Img2ID and the baseline; the same-person verdict
    (fitted on the training split, scored on test pairs)."""
    out = {m: evaluate_variants(engine, data, m, progress=False)
           for m in ("img2id", "baseline") if m == "img2id" or engine.baseline is not None}
    verdict, scores = calibrate_verdict(engine, data, progress=False)
    out["verdict"] = {**scores, "coef": verdict.coef, "intercept": verdict.intercept, "train_pairs": verdict.pairs}
    return out


def bench_centralization(engine, data, quick: bool) -> dict:
    """Pose2ID feature centralization (M = 1, 2, 4, 8 library poses; eta chosen per M on held-out
    TRAINING identities), alone and with NFC + re-ranking, for Img2ID and the baseline; and the
    time of one centralized search (an uploaded photo against 1,505 cached gallery features)."""
    if not engine.has_pose_model:
        return {"skipped": "no pose generator in these weights"}
    posts = ["raw", *(f"pose{m}" for m in CENTRALIZE_M), "nfc", "rerank", "nfc+rerank",
             *(f"pose{m}+nfc+rerank" for m in CENTRALIZE_M)]
    out = {}
    for model in ("img2id", "baseline"):
        if model == "baseline" and engine.baseline is None:
            continue
        chosen = choose_centralization(engine, data, model, progress=False)
        out[model] = {"chosen": chosen, "variants": evaluate_variants(engine, data, model, progress=False,
                                                                      posts=posts, centralization=chosen)}
    best = out["img2id"]["chosen"]
    settings = engine.centralization or {"poses": best["best_m"], "eta": best["by_m"][best["best_m"]]["eta"], "steps": 5}
    q = load_split(data, "query", engine.embed_size, progress=False)
    photo = Image.fromarray(q.images[0])
    rng = np.random.default_rng(0)
    n = 1505
    feats = rng.standard_normal((n, engine.preset.id_dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    saved, saved_c = engine.gallery, engine.centralization
    engine.gallery = Gallery(feats, [f"g{i}" for i in range(n)], -np.ones(n, int), -np.ones(n, int), centralized=feats)
    engine.centralization = settings
    try:
        out["search"] = {"settings": settings, "gallery": n, "threads": torch.get_num_threads(),
                         "centralized": timeit(lambda: engine.search(photo, 10, centralize=True), 10 if quick else 30),
                         "raw": timeit(lambda: engine.search(photo, 10), 10 if quick else 30)}
    finally:
        engine.gallery, engine.centralization = saved, saved_c
    return out


def sampling_setting(c: dict) -> str:
    """How the consistency figure's pictures were drawn, in words."""
    words = [f"CFG scale {c['guidance_scale']:g}"]
    if c.get("identity_steer"):
        words.append(f"Img2ID steering {c['identity_steer']:g}")
    if c.get("identity_candidates", 1) > 1:
        words.append(f"best of {c['identity_candidates']} by Img2ID"
                     + (" against the identity's training photos" if c.get("chooser") == "photos" else ""))
    return ", ".join(words)


def bench_consistency(engine, data, quick: bool, candidates: int | None = None) -> dict:
    """Identity consistency of the training rows as Generate draws them (`candidates` None: best of
    the engine's K; 1: the apps' quick drawing, each picture drawn once)."""
    if engine.baseline is None:
        return {"skipped": "no baseline in these weights"}
    n = engine.num_identities
    rows = np.arange(n) if not quick else np.linspace(0, n - 1, 100).astype(int)
    return identity_consistency(engine, engine.baseline, data, rows=rows, seeds=range(8), candidates=candidates)


def bench_inversion(engine, data, quick: bool) -> dict:
    from skimage.metrics import structural_similarity
    q = load_split(data, "query", engine.image_size, progress=False)
    crops = load_split(data, "query", engine.embed_size, progress=False).images
    n = 100 if quick else len(q)
    imgs, crops = q.images[:n], crops[:n]
    out = {"images": len(imgs)}
    for method in INVERSION_METHODS:
        t0 = time.perf_counter()
        rec, _, _ = engine.reconstruct_arrays(imgs, method, crops_u8=crops)
        ps = [psnr(a, b) for a, b in zip(imgs, rec)]
        ss = [structural_similarity(a, b, channel_axis=2, data_range=255, win_size=7) for a, b in zip(imgs, rec)]
        out[method] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "seconds": time.perf_counter() - t0}
    return out


def bench_speed(engine, weights: Path, quick: bool) -> dict:
    q = load_split(DEMO_DATA, "query", engine.image_size, progress=False) if DEMO_DATA.exists() else None
    photo = Image.fromarray(q.images[0]) if q is not None else engine.generate(0, seed=0)[0]
    r = 10 if quick else 30
    res = {
        "threads": torch.get_num_threads(),  # sections may be measured by runs with other thread counts
        "generate_1": timeit(lambda: engine.generate(0, seed=0), r),
        "generate_1_quick": timeit(lambda: engine.generate(0, seed=0, candidates=1), r),
        "generate_8": timeit(lambda: engine.generate(0, seed=list(range(8))), max(5, r // 2)),
        "invert_1": timeit(lambda: engine.invert(photo), r),
    }
    batch = np.repeat(q.images[:1], 256, 0) if q is not None else np.zeros((256, *engine.image_size, 3), np.uint8)
    res["embed_256"] = timeit(lambda: engine.embed_arrays(batch), max(5, r // 3))
    res["embed_images_per_s"] = 256 / (res["embed_256"]["p50_ms"] / 1000)
    rng = np.random.default_rng(0)
    saved = engine.gallery
    engine.gallery = Gallery(rng.standard_normal((20_000, engine.preset.id_dim)).astype(np.float32) * 0.3,
                             [f"g{i}" for i in range(20_000)], -np.ones(20_000, int), -np.ones(20_000, int))
    res["search_top10_in_20000"] = timeit(lambda: engine.search(photo, 10), r)
    engine.gallery = saved
    code = ("import time; t = time.perf_counter(); from reid_core.engine import ReIDEngine; "
            f"e = ReIDEngine.from_pretrained({str(weights)!r}); e.generate(0, seed=0); "
            "print(time.perf_counter() - t)")
    colds = [float(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1]) for _ in range(2 if quick else 3)]
    res["cold_start_s"] = {"p50": float(np.median(colds)), "max": float(max(colds))}
    res["matmul_gflops"] = machine_gflops()
    return res


def machine_gflops(n: int = 1024, repeats: int = 50) -> float:
    """How fast this CPU ran during the measurement: fp32 n x n matmuls at the run's threads
    (p50). Shared machines vary by half from day to day; the speed figures read beside it."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / (timeit(lambda: a @ b, repeats)["p50_ms"] / 1000) / 1e9


def _load_bench_pose():
    spec = importlib.util.spec_from_file_location("bench_pose", ROOT / "scripts" / "bench_pose.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def extract_poses(engine, images) -> list:
    """The pose extracted from each uint8 image: (18, 3) keypoints, or None where nobody was found."""
    results = [engine.extract_pose(Image.fromarray(img)) for img in images]
    return [res.keypoints if res.found else None for res in results]


def pck_of(poses, refs) -> tuple[int, int, int]:
    """(persons found, correct keypoints, keypoints considered): extracted poses (None: not
    found) against reference (18, 3) keypoints, PCK@0.2 at 128x64; a None reference is skipped."""
    from reid_core.pose import pck
    found = correct = considered = 0
    for kp, ref in zip(poses, refs):
        if ref is None:
            continue
        found += kp is not None
        c, k = pck(kp, ref, 0.2, size=(128, 64), min_conf=0.3)
        correct, considered = correct + c, considered + k
    return found, correct, considered


def pose_pck(engine, images, refs) -> tuple[int, int, int]:
    """`pck_of` the poses extracted from images against their references."""
    return pck_of(extract_poses(engine, images), refs)


def bench_pose(engine, data, quick: bool) -> dict:
    from reid_core.models.baseline_net import classify_images
    if (Path(data) / "keypoints.json.gz").exists():
        out = {"extraction": _load_bench_pose().run_bench(Path(data), "query", 100 if quick else None,
                                                          progress=False)}
    else:
        out = {"extraction": {"skipped": f"no keypoints.json.gz reference in {data}"}}
    if not engine.has_pose_model or not engine.pose_library():
        out["generation"] = {"skipped": "no pose-conditioned generator in these weights"}
        return out
    lib = engine.pose_library()
    n = engine.num_identities
    rows = np.linspace(0, n - 1, 16 if quick else 64).astype(int)
    seeds = [0]
    found = correct = considered = 0
    per_pose_imgs = []
    for p, kp in enumerate(lib):
        imgs = generate_rows(engine, rows, seeds, pose=p)
        per_pose_imgs.append(imgs)
        f, c, k = pose_pck(engine, imgs, [kp] * len(imgs))
        found, correct, considered = found + f, correct + c, considered + k
    # the figure's floor: the same identities and noises drawn without a pose, against each
    # library pose (any standing person matches some of every pose's keypoints)
    unposed = extract_poses(engine, generate_rows(engine, rows, seeds))
    floor = [pck_of(unposed, [kp] * len(unposed)) for kp in lib]
    plain = generate_rows(engine, rows, list(range(len(lib))))
    visible = [int((np.asarray(kp)[:, 2] >= 0.3).sum()) for kp in lib]
    gen_out = {"identities": len(rows), "poses": len(lib), "library_min_keypoints": min(visible),
               "pose_found_rate": found / (len(rows) * len(lib)),
               "pose_fidelity_pck02": correct / max(1, considered),
               "pose_fidelity_without_pose_pck02": sum(c for _, c, _ in floor) / max(1, sum(k for *_, k in floor))}
    if engine.baseline is not None:
        posed = np.concatenate(per_pose_imgs)
        acc_pose = float(np.mean(classify_images(engine.baseline, posed, device=engine.device)
                                 == np.tile(rows, len(lib))))
        acc_plain = float(np.mean(classify_images(engine.baseline, plain, device=engine.device)
                                  == np.repeat(rows, len(lib))))
        gen_out.update(identity_kept_with_poses=acc_pose, identity_kept_without_pose=acc_plain,
                       identity_kept_gap=acc_plain - acc_pose)
    out["generation"] = gen_out
    return out


def bench_sliders(engine, img_dir: Path, quick: bool) -> dict:
    """Which of the 32 slider axes change who the person is (issue 10): the ranking shipped with
    the weights (made at export by the same function), else measured now; and the sweeps of the
    six most identity-changing axes as a picture."""
    from reid_core.evaluate import axis_identity_change
    if engine.baseline is None:
        return {"skipped": "no baseline (judge) in these weights"}
    shipped = engine.explorer.shipped_slider_ranking()
    out = dict(shipped) if shipped else axis_identity_change(engine, engine.baseline, bases=8 if quick else 16)
    out["source"] = "shipped with the weights (made at export)" if shipped else "measured by this run"
    base = engine.identity_table[0]
    sd, axes = engine.axis_spread, engine.latent_axes
    rows = []
    for d in out["order"][:6]:
        ids = np.stack([base + t * sd[d] * axes[d] for t in (-2, -1, 0, 1, 2)])
        rows.append(engine.generate(ids, noise=engine.noise(0)))
    img_dir.mkdir(parents=True, exist_ok=True)
    grid(rows, labels=[f"axis {d}: {out['rate'][d]:.0%}" for d in out["order"][:6]]).save(img_dir / "sliders.png")
    out["picture"] = "img/sliders.png"
    return out


def bench_swap(engine, data, img_dir: Path, quick: bool) -> dict:
    """Identity swap (paper Sec. 7, issue 10): GEN(Img2ID(A), Img2Noise(B)) for training images
    A, B of different people; judged as A by the baseline; B's pose kept (PCK@0.2 between the
    poses extracted from the result and from B). With B's whole noise (keep 1, the paper's),
    the apps' default share of it (SWAP_KEEP) and none of it (keep 0: the pose figure's floor).
    A is drawn as the engine draws a photo's person (`photo_identities`: a person it trained on
    under their row); beside it, the same pairs drawn under Img2ID's vector of photo A alone,
    which is how a person the studio never saw is drawn."""
    if engine.baseline is None:
        return {"skipped": "no baseline (judge) in these weights"}
    n = 50 if quick else 200
    out, rows = swap_figures(engine, data, n, seed=0)
    vector, _ = swap_figures(engine, data, n, seed=0, transfer=False, keeps=(SWAP_KEEP,),
                             identities=engine.embed_arrays)
    out["from_photo_vector"] = {k: vector[k] for k in ("judged_as_A", "judged_as_B", "pose_pck02_vs_B")}
    img_dir.mkdir(parents=True, exist_ok=True)
    grid([list(col) for col in zip(*rows)],
         labels=["A (identity)", "B (noise)", *(f"keep {k:g}" for k in SWAP_KEEPS)]).save(img_dir / "swap.png")
    return {**out, "picture": "img/swap.png"}


SWAP_KEEPS = (1.0, SWAP_KEEP, 0.0)  # B's whole noise (the paper's swap), the apps' default, none of it


def swapped_images(engine, identities: np.ndarray, noises: np.ndarray, keep: float) -> np.ndarray:
    """`engine.swap_arrays` in batches of 64 (fresh shares seeded by position) -> uint8 (N, H, W, 3)."""
    return np.concatenate([np.stack([np.asarray(im) for im in engine.swap_arrays(
        identities[i:i + 64], noises[i:i + 64], keep, seed=i)]) for i in range(0, len(noises), 64)])


def swap_figures(engine, data, n: int, seed: int, transfer: bool = True,
                 keeps=SWAP_KEEPS, identities=None) -> tuple[dict, list]:
    """The swap figures on `n` pairs of training images drawn with `seed` (the benchmark's
    pairs: seed 0; choose settings on other seeds) for each share `keeps` of B's noise kept
    (`engine.swap_noise`), and the first 8 (A, B, swap per keep) pictures. The top-level
    figures are the default keep's (else the first). `identities`: photos (uint8 crops) ->
    the vectors A is drawn under, instead of the engine's (`engine.photo_identities`)."""
    from reid_core.data import relabel
    from reid_core.models.baseline_net import classify_images
    train = load_split(data, "train", engine.image_size, progress=False)
    crops = load_split(data, "train", engine.embed_size, progress=False).images
    labels, _ = relabel(train.pids)
    rng = np.random.default_rng(seed)
    a = rng.choice(len(labels), n, replace=False)
    b = np.array([rng.choice(np.flatnonzero(labels != labels[i])) for i in a])
    ids_a, known = engine.photo_identities(crops[a]) if identities is None else (identities(crops[a]), None)
    _, _, noise_b = engine.reconstruct_arrays(train.images[b], "img2noise", crops_u8=crops[b])
    refs = [engine.extract_pose(Image.fromarray(train.images[j])) for j in b]

    def pose_kept(images, poses) -> float:
        """PCK@0.2 of the poses extracted from `images` against `poses` (B's, where found)."""
        _, correct, considered = pose_pck(engine, images, [r.keypoints if r.found else None for r in poses])
        return correct / max(1, considered)
    by_keep, shown = {}, []
    for keep in keeps:
        out_imgs = swapped_images(engine, ids_a, noise_b, keep)
        judged = classify_images(engine.baseline, out_imgs, device=engine.device)
        by_keep[f"{keep:g}"] = {"judged_as_A": float(np.mean(judged == labels[a])),
                                "judged_as_B": float(np.mean(judged == labels[b])),
                                "pose_pck02_vs_B": pose_kept(out_imgs, refs)}
        shown.append(out_imgs[:8])
    moved_figures = {}
    if transfer and engine.has_pose_model:  # Pose2ID's transfer: A's identity, B's extracted pose, a fresh noise
        have = [i for i, ref in enumerate(refs) if ref.found]
        moved = np.stack([np.asarray(engine.generate(ids_a[i], seed=int(i), pose=refs[i].keypoints)[0]) for i in have])
        moved_figures = {"pairs": len(have),
                         "judged_as_A": float(np.mean(classify_images(engine.baseline, moved, device=engine.device)
                                                      == labels[a[have]])),
                         "pose_pck02_vs_B": pose_kept(moved, [refs[i] for i in have])}
    rows = [[Image.fromarray(train.images[i]), Image.fromarray(train.images[j]),
             *(Image.fromarray(s[r]) for s in shown)] for r, (i, j) in enumerate(list(zip(a, b))[:8])]
    main = f"{SWAP_KEEP:g}" if SWAP_KEEP in keeps else f"{keeps[0]:g}"
    recognised = {} if known is None else {"A_recognised": float(np.mean(known == labels[a]))}
    return {"pairs": n, "keep": float(main), **by_keep[main], "by_keep": by_keep, **recognised,
            "pose_transfer": moved_figures}, rows


def bench_swap_unseen(engine, data, quick: bool) -> dict:
    """Swaps of people the judge never saw, the check the training-pair figure cannot make:
    test query A's identity on a training photo B's noise (the apps' default keep); the judge's
    re-ID feature ranks each result against the test gallery (Market protocol, as a query of
    A's). Beside it the real queries' own Rank-1 / mAP, what a perfect rendering would reach."""
    if engine.baseline is None:
        return {"skipped": "no baseline (judge) in these weights"}
    return unseen_swap_figures(engine, data, 50 if quick else 200, seed=0)


def unseen_swap_figures(engine, data, n: int, seed: int, identities=None) -> dict:
    """`bench_swap_unseen` on `n` test queries drawn with `seed` (the benchmark's: 0);
    `identities` as in `swap_figures`."""
    from reid_core.metrics import evaluate_rank, pairwise_distance
    from reid_core.models.baseline_net import embed_images
    q = load_split(data, "query", engine.image_size, progress=False)
    q_crops = load_split(data, "query", engine.embed_size, progress=False).images
    g = load_split(data, "gallery", engine.image_size, progress=False)
    train = load_split(data, "train", engine.image_size, progress=False)
    crops = load_split(data, "train", engine.embed_size, progress=False).images
    rng = np.random.default_rng(seed)
    a = rng.choice(len(q.pids), n, replace=False)
    b = rng.choice(len(train.pids), n, replace=False)
    ids_a, known = engine.photo_identities(q_crops[a]) if identities is None else (identities(q_crops[a]), None)
    _, _, noise_b = engine.reconstruct_arrays(train.images[b], "img2noise", crops_u8=crops[b])
    swapped = swapped_images(engine, ids_a, noise_b, SWAP_KEEP)
    gallery = embed_images(engine.baseline, g.images)

    def ranked(images) -> dict:
        d = pairwise_distance(embed_images(engine.baseline, images), gallery, "cosine")
        cmc, m_ap = evaluate_rank(d, q.pids[a], g.pids, q.camids[a], g.camids)
        return {"rank1": float(cmc[0]), "mAP": float(m_ap)}
    taken = {} if known is None else {"taken_for_training_people": float(np.mean(known >= 0))}
    return {"queries": n, "keep": SWAP_KEEP, **taken, "swapped": ranked(swapped), "real": ranked(q.images[a])}


def pictures(engine, data, img_dir: Path) -> dict:
    img_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    from reid_core.data import relabel
    train = load_split(data, "train", engine.image_size, progress=False)
    labels_np, _ = relabel(train.pids)
    picks = np.linspace(0, engine.num_identities - 1, 6).astype(int)
    trained = [engine.identity_table[i] for i in picks]
    new = list(engine.sample_identities(4, seed=7))
    blank = Image.new("RGB", (engine.image_size[1] // 2, engine.image_size[0]), (245, 245, 245))
    rows = []
    for k, v in zip(picks, trained):  # 4 real photos of the identity | 8 generated under its row
        real = [Image.fromarray(a) for a in train.images[labels_np == k][:4]]
        real += [blank] * (4 - len(real))
        rows.append(real + [blank] + engine.generate(v, seed=list(range(8))))
    rows += [[blank] * 5 + engine.generate(v, seed=list(range(8))) for v in new]
    labels = [f"train id {k}" for k in picks] + [f"new {i}" for i in range(4)]
    grid(rows, labels=labels).save(img_dir / "generated_grid.png")
    files["generated_grid"] = "img/generated_grid.png"
    q = load_split(data, "query", engine.image_size, progress=False)
    pick = np.linspace(0, len(q) - 1, 8).astype(int)
    sel = q.images[pick]
    crops = load_split(data, "query", engine.embed_size, progress=False).images[pick]
    rec, _, z = engine.reconstruct_arrays(sel, "img2noise", crops_u8=crops)
    rec_ddim, _, _ = engine.reconstruct_arrays(sel, "ddim", crops_u8=crops)
    rows = [[Image.fromarray(a) for a in sel], [noise_image(n) for n in z],
            [Image.fromarray(a) for a in rec], [Image.fromarray(a) for a in rec_ddim]]
    grid(rows, labels=["original", "noise", "Img2Noise rec.", "DDIM inv. rec."]).save(img_dir / "inversion.png")
    files["inversion"] = "img/inversion.png"
    if engine.has_pose_model and engine.pose_library():
        lib = range(len(engine.pose_library()))
        h, w = engine.image_size
        rows = [[engine.render_pose(p, (h, w)) for p in lib]]
        for v in trained[:2] + new[:2]:
            rows.append([engine.generate(v, seed=3, pose=p)[0] for p in lib])
        grid(rows, labels=["pose"] + labels[:2] + labels[6:8]).save(img_dir / "poses.png")
        files["poses"] = "img/poses.png"
    return files


# ---------------------------------------------------------------- report

def _pct(x):
    return f"{100 * x:.1f}%"


def _earlier(section: dict) -> str:
    """" (measured on ...)" for a section kept in benchmarks.json from other weights: its
    `measured_on` is written by whoever keeps it there (a merge cannot tell which weights an
    earlier section saw); empty otherwise."""
    return f" (measured on {section['measured_on']})" if section.get("measured_on") else ""


def _mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def _weights_mb(weights: Path) -> float:
    """The folder's size in MB of 10^6 bytes (the stricter reading of the 24 MB budget: 2^20 gives 5% less)."""
    return sum(f.stat().st_size for f in Path(weights).rglob("*") if f.is_file()) / 1e6


def _training(weights: Path) -> dict:
    log = Path(weights) / "training_log.json"
    return json.loads(log.read_text()) if log.exists() else {}


def summary_rows(res: dict) -> list[str]:
    """The issue's figures, measured value beside target."""
    T, out = TARGETS, []
    r, c, s = res.get("reid", {}), res.get("consistency", {}), res.get("speed", {})
    if "top1" in c:
        out.append(f"| identity consistency: judge top-1, {c['images_per_identity']} noises x {c['identities']} "
                   f"training identities ({sampling_setting(c)}) | {_pct(c['top1'])} | ≥ 80% "
                   f"{_mark(c['top1'] >= T['identity_consistency'])} |")
        out.append(f"| diversity: per-pixel std across one identity's noises / across as many real photos of one "
                   f"identity | {c['diversity']:.2f} ({c['pixel_std_generated']:.3f} / {c['pixel_std_real']:.3f}) "
                   f"| ≥ 0.5 {_mark(c['diversity'] >= T['diversity'])} |")
    if "img2id" in r:
        m = r["img2id"]
        ahead = "baseline" in r and m["mAP"] > r["baseline"]["mAP"]
        out.append(f"| Img2ID mAP / Rank-1, test ({m['num_query']} q / {m['num_gallery']} g) | {_pct(m['mAP'])} / "
                   f"{_pct(m['rank1'])} | ≥ 45% / ≥ 45%, ahead of the baseline "
                   f"{_mark(m['mAP'] >= T['img2id_mAP'] and m['rank1'] >= T['img2id_rank1'] and ahead)} |")
    if "baseline" in r:
        out.append(f"| baseline mAP / Rank-1 | {_pct(r['baseline']['mAP'])} / {_pct(r['baseline']['rank1'])} | "
                   f"≥ 36% {_mark(r['baseline']['mAP'] >= T['baseline_mAP'])} |")
    rv = res.get("retrieval", {})
    if "img2id" in rv:
        raw = rv["img2id"]["raw"]["mAP"]
        best = max(rv["img2id"].items(), key=lambda kv: kv[1]["mAP"])
        out.append(f"| best retrieval variant vs raw Img2ID (test mAP) | {best[0]}: {_pct(best[1]['mAP'])} vs "
                   f"{_pct(raw)} ({100 * (best[1]['mAP'] - raw):+.1f}) | ≥ +8 {_mark(best[1]['mAP'] - raw >= 0.08)} |")
    ce = res.get("centralization", {})
    if "search" in ce:
        sc = ce["search"]
        p95 = sc["centralized"]["p95_ms"] / 1000
        out.append(f"| search with centralization (M = {sc['settings']['poses']}), one photo against {sc['gallery']:,} "
                   f"cached gallery features, {sc['threads']} threads{_earlier(ce)} | {p95:.2f} s p95 | "
                   f"≤ 1 s {_mark(p95 <= 1)} |")
    if "verdict" in rv:
        out.append(f"| same/different verification ROC AUC, test pairs | {rv['verdict']['roc_auc']:.3f} | ≥ 0.90 "
                   f"{_mark(rv['verdict']['roc_auc'] >= 0.90)} |")
    t = res.get("training", {})
    if "history" in t:
        total = sum(h["minutes"] for h in t["history"])
        out.append(f"| training time of the shipped weights, all stages | {total:.0f} min of 1-thread runs, chained "
                   f"with `--init` (see Training) | ≤ 120 min {_mark(total <= T['training_wall_min'])} |")
    elif "pipeline" in t:
        w = t["pipeline"]["wall_minutes"]
        out.append(f"| all stages trained ({t['pipeline'].get('jobs', 1)} processes, 1 thread each) | "
                   f"{w:.0f} min wall | ≤ 120 min {_mark(w <= T['training_wall_min'])} |")
    if "generate_1" in s:
        g = s["generate_1"]["p50_ms"]
        out.append(f"| generate one 64x32 image, {res.get('sample_steps', 10)} steps, {res['speed'].get('threads', res['threads'])} threads | "
                   f"{g:.0f} ms p50 | ≤ 100 ms {_mark(g <= T['generate_1_p50_ms'])} |")
    if "weights_mb" in res:
        out.append(f"| `weights/` | {res['weights_mb']:.1f} MB, safetensors | ≤ 24 MB {_mark(res['weights_mb'] <= 24)} |")
    return out


def _app_section(out: Path) -> list[str]:
    """The app's figures (issue 12) from `scripts/bench_app.py`'s JSON, copied to docs/app_benchmark.json."""
    f = out / "app_benchmark.json"
    if not f.exists():
        return []
    a = json.loads(f.read_text())
    tabs = a.get("tabs_usable_s", {})
    single = a.get("single", {})
    load = a.get("load", {})
    bad = a.get("bad_uploads", {})
    L = ["## The app (`python scripts/bench_app.py`, fresh cache)", "",
         f"Gradio app on the shipped weights, {a.get('cpus')} CPUs, gallery `{Path(a.get('gallery') or '-').name}`.", "",
         "| figure | measured | target |", "| --- | --- | --- |",
         f"| launch → first page | {a['start_s']:.1f} s | ≤ 10 s {_mark(a['start_s'] <= 10)} |"]
    if tabs:
        worst = max(tabs.values())
        L.append(f"| launch → every tab usable ({', '.join(f'{k} {v:.1f} s' for k, v in tabs.items())}) | "
                 f"{worst:.1f} s | ≤ 30 s {_mark(worst <= 30)} |")
    for op, name in (("generate4", "generate 4"), ("invert", "invert"), ("search", "re-identify k=10")):
        if op in single:
            L.append(f"| {name}, p50 / p95 | {single[op]['p50_s']:.2f} / {single[op]['p95_s']:.2f} s | "
                     f"p95 ≤ 1 s {_mark(single[op]['p95_s'] <= 1)} |")
    if load:
        L.append(f"| {load['clients']} concurrent clients, {load['seconds']:.0f} s: errors, p95 | {load['errors']}, "
                 f"{load['all'].get('p95_s', float('nan')):.2f} s ({load['requests']} requests) | 0, ≤ 3 s "
                 f"{_mark(load['errors'] == 0 and load['all'].get('p95_s', 1e9) <= 3)} |")
    if bad:
        L.append(f"| bad uploads ({', '.join(bad)}) | {sum(v['ok'] for v in bad.values())} of {len(bad)} answered "
                 f"plainly, server alive: {a.get('alive_after_bad_uploads')}, tracebacks in the log: "
                 f"{a.get('server_log', {}).get('tracebacks')} | all, 0 {_mark(all(v['ok'] for v in bad.values()) and a.get('server_log', {}).get('tracebacks') == 0)} |")
    return L + [""]


def _havana_row(out: Path) -> list[str]:
    f = out / "havana.json"
    if not f.exists():
        return []
    h = json.loads(f.read_text())
    tp, th = h["test"]["plain"], h["test"][h["paper"]]
    return [f"| HAVANA head vs plain head, same budget ({h['steps']:,} steps; `scripts/bench_havana.py`) | "
            f"{_pct(th['mAP'])} vs {_pct(tp['mAP'])} mAP: {'kept' if h['kept'] else 'not kept'}; its σ tells right "
            f"from wrong matches with AUC {th['auc_img2id_rank1']:.2f} | mAP stated, kept only if not worse "
            f"{_mark(True)} |"]


def _by_command(commands: dict) -> dict:
    """{section: command} -> {command: [sections]}, in the order first measured."""
    out: dict = {}
    for section, cmd in commands.items():
        out.setdefault(cmd, []).append(section)
    return out


def drawing_rows(best: dict, quick: dict, speed: dict) -> list[str]:
    """The apps' two ways to draw a picture (Generate's "Drawing" option), each with its
    consistency figure and its time: the trade a visitor makes."""
    if "top1" not in quick:
        return []
    def ms(key):
        return f"{speed[key]['p50_ms']:.0f} ms" if key in speed else "not measured"
    return ["Generate's *Drawing* option trades identity for time (same protocol and judge; one picture, "
            f"{speed.get('threads', '?')} threads, p50):", "",
            "| drawing | judge top-1 | top-5 | two noises agree | diversity | one picture |",
            "| --- | --- | --- | --- | --- | --- |",
            *(f"| {name} | {_pct(c['top1'])} | {_pct(c['top5'])} | {_pct(c['seed_agreement'])} | "
              f"{c['diversity']:.2f} | {ms(key)} |"
              for name, c, key in ((f"best of {best['identity_candidates']} (the default)", best, "generate_1"),
                                   ("quick: one draw", quick, "generate_1_quick"))), ""]


def report(res: dict, out: Path) -> str:
    commands = res.get("commands") or {"all": res.get("command", "?")}
    L = ["# Benchmarks", "",
         f"Measured on {res['machine']} ({res['date']}), weights `{res['weights']}` "
         f"(preset `{res['preset']}`).{' QUICK mode: subsets, see counts.' if res['quick'] else ''} "
         "Each section by the last command that measured it:", "",
         "| sections | command |", "| --- | --- |",
         *(f"| {', '.join(secs)} | `{cmd}` |" for cmd, secs in _by_command(commands).items()), "",
         "## The figures", "", "| figure | measured | target |", "| --- | --- | --- |", *summary_rows(res),
         *_havana_row(out), ""]
    r = res.get("reid")
    if r:
        m0 = r["img2id"]
        L += [f"## Re-identification ({m0['num_query']} queries, {m0['num_gallery']} gallery, Market-1501 protocol)", "",
              "| model | feature | mAP | Rank-1 | Rank-5 | Rank-10 |", "| --- | --- | --- | --- | --- | --- |"]
        for name, m in r.items():
            L.append(f"| {name} | {m['metric']} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | {_pct(m['rank10'])} |")
        L.append("")
    rv = res.get("retrieval")
    if rv:
        L += ["## Retrieval beyond the raw feature (training-free; `reid_core/retrieval.py`)", "",
              "NFC: each feature plus its mutual nearest neighbours (k1 = k2 = 2), within the gallery and within "
              "the queries. Re-ranking: k-reciprocal (k1 = 20, k2 = 6, λ = 0.3). ID²: mean distance of the "
              "normalised gallery features to their identity centre (lower is tighter).", "",
              "| model | variant | mAP | Rank-1 | Rank-5 | ID² |", "| --- | --- | --- | --- | --- | --- |"]
        for model in ("img2id", "baseline"):
            for post, m in rv.get(model, {}).items():
                L.append(f"| {model} | {post} | {_pct(m['mAP'])} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | "
                         f"{m['id_density']:.3f} |")
        v = rv.get("verdict")
        if v:
            L += ["", f"**Same person or not** (Img2ID distance, logistic fit on {v['train_pairs']:,} training pairs; "
                      f"even odds at distance {v['threshold']:.3f}): test ROC AUC **{v['roc_auc']:.3f}**, accuracy "
                      f"{_pct(v['accuracy'])} on {v['pairs']:,} balanced test pairs (same person across cameras vs "
                      f"different people)."]
        L.append("")
    ce = res.get("centralization")
    if ce and "img2id" in ce:
        L += ["## Pose2ID feature centralization (`reid_core/evaluate.py`, `engine.centralize`)", "",
              *([f"Measured on {ce['measured_on']}.", ""] if ce.get("measured_on") else []),
              "Each query and gallery photo is redrawn in the first M library poses with its own identity (Img2ID) "
              "and its own noise (Img2Noise), 5 DDIM steps; its feature becomes normalize(f + η · mean of the "
              "views' features). η ∈ {0.25, 0.5, 1, 2} is chosen for each M on 100 held-out TRAINING identities "
              "(one query per camera, the rest gallery), never on the test split; the baseline embeds the same views.", "",
              "| model | variant | η (chosen on train) | train-split mAP | test mAP | Rank-1 | Rank-5 | ID² |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for model in ("img2id", "baseline"):
            if model not in ce:
                continue
            for post, m in ce[model]["variants"].items():
                L.append(f"| {model} | {post} | {m.get('eta', '–')} | {_pct(m['val_mAP']) if 'val_mAP' in m else '–'} | "
                         f"{_pct(m['mAP'])} | {_pct(m['rank1'])} | {_pct(m['rank5'])} | {m['id_density']:.3f} |")
        sc = ce.get("search")
        if sc:
            L += ["", f"Search with centralization (M = {sc['settings']['poses']}, η = {sc['settings']['eta']:g}), one "
                      f"photo against {sc['gallery']:,} cached gallery features, {sc['threads']} threads: p50 "
                      f"{sc['centralized']['p50_ms']:.0f} ms, p95 {sc['centralized']['p95_ms']:.0f} ms (raw search: "
                      f"p95 {sc['raw']['p95_ms']:.0f} ms)."]
        L.append("")
    hv = out / "havana.json"
    if hv.exists():
        h = json.loads(hv.read_text())

        def auc(x):
            return "–" if x is None else f"{x:.3f}"

        def sig(x):
            return "–" if x is None else f"{x:.3f}"
        L += ["## HAVANA's variational identity head vs a plain head, same budget (`python scripts/bench_havana.py`)", "",
              f"Every head reads the frozen pooled feature of the shipped Img2ID and trains {h['steps']:,} steps of "
              f"{h['batch']} (same seed, lr {h['lr']:g}); the re-ID feature is z_mu. HAVANA's head adds σ, the "
              f"Jensen-Shannon triplet (margin 0.5) in place of the Euclidean one, and α(reconstruction + βKL), "
              f"α = 0.2, β = 1 as the paper. Certainty AUC: how well minus the mean σ of a query tells a right "
              f"Rank-1 match from a wrong one (0.5 says nothing).", "",
              "**Test split** (heads trained on all 643 training identities):", "",
              "| head | mAP | Rank-1 | certainty AUC vs Img2ID's Rank-1 | vs the head's own Rank-1 | mean σ | minutes |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, t in h["test"].items():
            L.append(f"| {name} | {_pct(t['mAP'])} | {_pct(t['rank1'])} | {auc(t.get('auc_img2id_rank1'))} | "
                     f"{auc(t['auc_own_rank1'])} | {sig(t['mean_sigma'])} | {t['minutes']:.1f} |")
        L += ["", f"HAVANA's head (paper settings) kept (mAP not below the plain head's): **{'yes' if h['kept'] else 'no'}**; "
                  f"it ships as `weights/uncertainty/`, and its σ is what the apps show.", "",
              "**Trying to make σ say more**, chosen on 100 held-out TRAINING identities (heads trained on the other "
              "543; Img2ID, whose feature they read, has seen all 643, so mAP is high there and wrong matches few):", "",
              "| variant | mAP | Rank-1 | certainty AUC (own Rank-1) | mean σ |", "| --- | --- | --- | --- | --- |"]
        for name, v in h["validation"].items():
            L.append(f"| {name}{' (the choice)' if name == h['sweep_choice'] else ''} | {_pct(v['mAP'])} | "
                     f"{_pct(v['rank1'])} | {auc(v['auc_own_rank1'])} | {sig(v['mean_sigma'])} |")
        L.append("")
    c = res.get("consistency")
    if c and "top1" in c:
        L += ["## Generation: identity consistency", "",
              f"The judge (the baseline, trained on real images only, never with or on the generator) names "
              f"{c['images_per_identity']} generated images (different noises; {sampling_setting(c)}) of each "
              f"of {c['identities']} "
              f"training identities: top-1 **{_pct(c['top1'])}**, top-5 {_pct(c['top5'])}; two noises of one "
              f"identity are named alike {_pct(c['seed_agreement'])} of the time. The judge's own accuracy on the "
              f"real training images: {_pct(c['judge_accuracy_on_real_train'])}.", ""]
        L += drawing_rows(c, res.get("consistency_quick", {}), res.get("speed", {}))
    abl = out / "ablation.json"
    if abl.exists():
        rows = json.loads(abl.read_text())
        first = next(iter(rows.values()))
        L += ["## Recipe ablation (same data, comparable CPU minutes)", "",
              f"Consistency here: the judge's top-1 on {first['seeds']} noises x {first['identities']} training "
              f"identities spread over the table (`scripts/bench_ablation.py`).", "",
              "| run | recipe | conditioning | prediction | identity map | table lr | P x K | CFG | minutes | "
              "consistency top-1 | top-5 | diversity | Img2ID mAP | Rank-1 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, x in rows.items():
            L.append(f"| {name} | {x['recipe']} | {x['conditioning']} | {x.get('prediction_type', 'epsilon')} | "
                     f"{x.get('identity_map_levels', 0) or '–'} | {x['table_lr'] or 'as U-Net'} | "
                     f"{'K=' + str(x['gen_K']) if x['gen_K'] else 'uniform'} | {x['guidance_scale']:g} | "
                     f"{x['minutes']:.0f} | {_pct(x['consistency_top1'])} | {_pct(x['consistency_top5'])} | "
                     f"{x['diversity']:.2f} | {_pct(x['mAP']) if x['mAP'] is not None else 'not trained yet'} | "
                     f"{_pct(x['rank1']) if x['rank1'] is not None else '–'} |")
        L.append("")
    curve = out / "time_to_quality.json"
    if curve.exists():
        cv = json.loads(curve.read_text())
        pts = cv["points"]
        L += ["## Time to quality", "", "![time to quality](img/time_to_quality.png)", "",
              f"Snapshots of the runs that made the shipped weights, in order ({', '.join(cv['runs'])}; each "
              f"continued from the one before with `--init`), minutes added up. Consistency: judge top-1 on "
              f"{cv.get('seeds', 4)} noises x {cv.get('identities', 160)} training identities.", "",
              "| minutes | run | step | Img2ID mAP | Rank-1 | consistency top-1 |",
              "| --- | --- | --- | --- | --- | --- |"]
        L += [f"| {p['minutes']:.0f} | {Path(p['run']).name} | {p['step']} | {_pct(p['mAP'])} | {_pct(p['rank1'])} | "
              f"{_pct(p['consistency_top1'])} |" for p in pts]
        L.append("")
    v = res.get("inversion")
    if v:
        L += ["## Inversion: GEN(Img2Noise(x), Img2ID(x)) on the test queries", "",
              "| method | PSNR (dB) | SSIM | seconds per image, reconstruction included |", "| --- | --- | --- | --- |",
              *(f"| {title} | {v[m]['psnr']:.2f} | {v[m]['ssim']:.3f} | {v[m]['seconds'] / v['images']:.3f} |"
                for m, title in (("img2noise", "Img2Noise (one pass)"),
                                 ("refined", f"Img2Noise + {REFINE_STEPS} gradient steps through the chain"),
                                 ("ddim", "DDIM inversion (10 steps)")) if m in v), "",
              f"{v['images']} query images at the model's resolution, batches of 128.", ""]
    s = res.get("speed")
    if s:
        L += ["## Speed on this machine (CPU, p50 / p95)", "", "| operation | p50 | p95 |", "| --- | --- | --- |"]
        names = {"generate_1_quick": "generate 1, quick (one draw)"}
        for k in ("generate_1", "generate_1_quick", "generate_8", "invert_1", "embed_256", "search_top10_in_20000"):
            if k in s:
                L.append(f"| {names.get(k, k.replace('_', ' '))} | {s[k]['p50_ms']:.1f} ms | {s[k]['p95_ms']:.1f} ms |")
        L += [f"| engine cold start (import + load + first image) | {s['cold_start_s']['p50']:.2f} s | max {s['cold_start_s']['max']:.2f} s |",
              "", f"Img2ID embedding: {s['embed_images_per_s']:.0f} images/s in batches of 256."
              + (f" The CPU's fp32 matmul rate during these timings: {s['matmul_gflops']:.0f} GFLOPS "
                 f"(a shared machine's speed varies from day to day; read the timings beside it)."
                 if "matmul_gflops" in s else ""), ""]
    t = res.get("training", {})
    if t:
        L += ["## Training (from the weights' training log)", "", "| stage | steps | minutes | loss at the end |",
              "| --- | --- | --- | --- |"]
        for k, x in t.items():
            if k in ("pipeline", "history"):
                continue
            L.append(f"| {k} | {x.get('steps', '–')} | {x.get('minutes', 0):.1f} | {x.get('loss_last') or 0:.4f} |")
        if "history" in t:
            L += ["", "How the shipped weights were made (each run continued from the one before with `--init`; "
                      "minutes are wall time of one torch thread, on a machine running other jobs beside it):", "",
                  "| run | what | steps | minutes |", "| --- | --- | --- | --- |"]
            L += [f"| `{h['run']}` | {h['what']} | {h['steps']} | {h['minutes']:.1f} |" for h in t["history"]]
        if "pipeline" in t:
            L += ["", f"Wall time, all stages: {t['pipeline']['wall_minutes']:.1f} min "
                      f"({t['pipeline'].get('jobs', 1)} processes side by side, one torch thread each)."]
        L.append("")
    p = res.get("pose")
    if p:
        e = p["extraction"]
        L += ["## Poses", "", "| figure | measured | target |", "| --- | --- | --- |"]
        if "skipped" not in e:
            L += [f"| persons found, stored 128x64 query crops ({e['n_images']}) | {_pct(e['found_rate'])} | ≥ 85% {_mark(e['found_rate'] >= 0.85)} |",
                  f"| PCK@0.2 vs keypoints.json.gz ({e['pck02_keypoints']} keypoints) | {_pct(e['pck02'])} | ≥ 80% {_mark(e['pck02'] >= 0.80)} |",
                  f"| extraction latency p50 / p95 | {e['latency_ms_p50']:.1f} / {e['latency_ms_p95']:.1f} ms | ≤ 60 ms {_mark(e['latency_ms_p50'] <= 60)} |"]
        g = p.get("generation", {})
        if "pose_fidelity_pck02" in g:
            floor = (f" (the same people drawn without a pose: {_pct(g['pose_fidelity_without_pose_pck02'])})"
                     if "pose_fidelity_without_pose_pck02" in g else "")
            L.append(f"| pose fidelity: PCK@0.2, requested vs re-extracted ({g['identities']} ids × {g['poses']} poses; person found in {_pct(g['pose_found_rate'])}) | {_pct(g['pose_fidelity_pck02'])}{floor} | ≥ 75% {_mark(g['pose_fidelity_pck02'] >= 0.75)} |")
        if "library_min_keypoints" in g:
            L.append(f"| pose library | {g['poses']} poses, the sparsest with {g['library_min_keypoints']} of 18 "
                     f"keypoints | 8 poses, each ≥ 14 {_mark(g['poses'] == 8 and g['library_min_keypoints'] >= 14)} |")
        if "identity_kept_gap" in g:
            L.append(f"| identity kept across the library poses (judge top-1) | {_pct(g['identity_kept_with_poses'])} vs {_pct(g['identity_kept_without_pose'])} without pose | within 5 points {_mark(g['identity_kept_gap'] <= 0.05)} |")
        L.append("")
    sl, sw = res.get("sliders"), res.get("swap")
    if sl and "skipped" not in sl or sw and "skipped" not in sw:
        L += ["## Sliders and identity swap", "", "| figure | measured | target |", "| --- | --- | --- |"]
        if sl and "rate" in sl:
            top = ", ".join(f"{d} ({sl['rate'][d]:.0%})" for d in sl["order"][:6])
            L += [f"| slider axes ({sl.get('axes_kind', 'principal axes')}) whose ±{sl['sds']:g} sd sweep changes the judge's top-1 identity (for at least half "
                  f"of {sl['bases']} training identities; {sl['source']}) | {sl['changed_axes']} of {sl['axes']} "
                  f"(most: {top}) | ≥ 16 of 32 {_mark(sl['changed_axes'] >= 16)} |"]
        if sw and "judged_as_A" in sw:
            whole, none = (sw.get("by_keep") or {}).get("1"), (sw.get("by_keep") or {}).get("0")
            keep = sw.get("keep", 1.0)
            L += [f"| swap GEN(Img2ID(A), Img2Noise(B)) judged as A ({sw['pairs']} training pairs, different people; "
                  f"{keep:.0%} of B's noise kept, the apps' default; as B: {_pct(sw['judged_as_B'])}) | "
                  f"{_pct(sw['judged_as_A'])}" + (f" (B's whole noise: {_pct(whole['judged_as_A'])}; none of it: "
                                                  f"{_pct(none['judged_as_A'])})" if whole and none else "")
                  + (f"; A recognised as its training person and drawn under their row for "
                     f"{_pct(sw['A_recognised'])} of the pairs" if "A_recognised" in sw else "")
                  + (f"; drawn under Img2ID's vector of photo A instead, as a person never trained on is: "
                     f"{_pct(sw['from_photo_vector']['judged_as_A'])}" if "from_photo_vector" in sw else "")
                  + f" | ≥ 60% {_mark(sw['judged_as_A'] >= 0.6)} |",
                  f"| swap: PCK@0.2 of the result's pose vs B's | {_pct(sw['pose_pck02_vs_B'])}"
                  + (f" (B's whole noise: {_pct(whole['pose_pck02_vs_B'])}; none of it, the floor any standing "
                     f"person scores: {_pct(none['pose_pck02_vs_B'])})" if whole and none else "")
                  + f" | ≥ 60% {_mark(sw['pose_pck02_vs_B'] >= 0.6)} |"]
            u = res.get("swap_unseen") or {}
            if "swapped" in u:
                L += [f"| swap of people the judge never saw: test query A on training photo B's noise ({u['queries']} "
                      f"queries, {u['keep']:.0%} kept), the judge's Rank-1 / mAP of the result against the test gallery "
                      f"| {_pct(u['swapped']['rank1'])} / {_pct(u['swapped']['mAP'])} (the real queries: "
                      f"{_pct(u['real']['rank1'])} / {_pct(u['real']['mAP'])})"
                      + (f"; {_pct(u['taken_for_training_people'])} of the queries taken for a training person"
                         if "taken_for_training_people" in u else "") + " | (no target) |"]
            t = sw.get("pose_transfer") or {}
            if t:
                L += [f"| pose transfer GEN_pose(Img2ID(A), pose(B), new noise) judged as A / PCK@0.2 vs B's pose "
                      f"({t['pairs']} pairs where B's pose was found) | {_pct(t['judged_as_A'])} / "
                      f"{_pct(t['pose_pck02_vs_B'])} | (the same targets) {_mark(t['judged_as_A'] >= 0.6)} "
                      f"{_mark(t['pose_pck02_vs_B'] >= 0.6)} |"]
        L.append("")
        for name, title in (("sliders", "The six most identity-changing slider axes, training identity 0, "
                                        "-2 to +2 sd (left to right), fixed noise"),
                            ("swap", "Identity swap: A's identity on B's noise (rows: A, B, then the "
                                     "result keeping all, the default share and none of B's noise)")):
            if res.get(name, {}).get("picture"):
                L += [f"**{title}**", "", f"![{name}]({res[name]['picture']})", ""]
    L += _app_section(out)
    pics = res.get("pictures", {})
    if pics:
        L += ["## Pictures", ""]
        titles = {"generated_grid": "Training identities (4 real photos, then 8 generated under the identity's row, "
                                    "different noises) and 4 new identities from the prior",
                  "inversion": "Test queries: original, its noise (clipped to ±2.5), reconstructions",
                  "poses": "The pose library (top) and identities generated in each pose"}
        for k, f in pics.items():
            L += [f"**{titles.get(k, k)}**", "", f"![{k}]({f})", ""]
    return "\n".join(L)


def _notes(out: Path) -> str:
    """The hand-written reading of the figures (docs/benchmark_notes.md), kept beside the generated part."""
    notes = out / "benchmark_notes.md"
    return "\n" + (notes.read_text() if notes.exists() else "")


def merged(old: dict, res: dict, sections) -> dict:
    """`res` (this run's sections) over `old`'s other sections, each keeping the command that
    measured it (`commands`: section -> command)."""
    kept = [k for k in old if k in sections and k not in res["commands"]]
    earlier = old.get("commands") or {}
    return {**{k: old[k] for k in kept}, **res,
            "commands": {**{k: earlier.get(k, old.get("command", "?")) for k in kept}, **res["commands"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    ap.add_argument("--data", type=Path, default=DEMO_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--quick", action="store_true", help="subsets of the slow parts; < 5 minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="rebuild BENCHMARKS.md from benchmarks.json")
    ap.add_argument("--merge", action="store_true",
                    help="keep the sections of the existing benchmarks.json that this run does not measure")
    ap.add_argument("--sections", nargs="+",
                    default=["reid", "retrieval", "centralization", "consistency", "consistency_quick", "inversion", "speed", "pose", "sliders", "swap",
                             "swap_unseen", "pictures"])
    a = ap.parse_args()
    if a.report_only:
        res = json.loads((a.out / "benchmarks.json").read_text())
        (a.out / "BENCHMARKS.md").write_text(report(res, a.out) + _notes(a.out))
        return
    torch.set_num_threads(a.threads)
    engine = ReIDEngine.from_pretrained(a.weights, device="cpu")
    res = {"command": "python scripts/benchmark.py " + " ".join(sys.argv[1:]), "quick": a.quick,
           "weights": str(a.weights.relative_to(ROOT) if a.weights.is_relative_to(ROOT) else a.weights),
           "preset": engine.preset.name, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
           "threads": torch.get_num_threads(), "sample_steps": engine.preset.sample_steps,
           "weights_mb": _weights_mb(a.weights), "training": _training(a.weights)}
    steps = {"reid": lambda: bench_reid(engine, a.data),
             "retrieval": lambda: bench_retrieval(engine, a.data),
             "centralization": lambda: bench_centralization(engine, a.data, a.quick),
             "consistency": lambda: bench_consistency(engine, a.data, a.quick),
             "consistency_quick": lambda: bench_consistency(engine, a.data, a.quick, candidates=1),
             "inversion": lambda: bench_inversion(engine, a.data, a.quick),
             "speed": lambda: bench_speed(engine, a.weights, a.quick),
             "pose": lambda: bench_pose(engine, a.data, a.quick),
             "sliders": lambda: bench_sliders(engine, a.out / "img", a.quick),
             "swap": lambda: bench_swap(engine, a.data, a.out / "img", a.quick),
             "swap_unseen": lambda: bench_swap_unseen(engine, a.data, a.quick),
             "pictures": lambda: pictures(engine, a.data, a.out / "img")}
    res["commands"] = {name: res["command"] for name in a.sections}
    if a.merge and (a.out / "benchmarks.json").exists():
        res = merged(json.loads((a.out / "benchmarks.json").read_text()), res, steps)
    for name in a.sections:
        t = time.perf_counter()
        res[name] = steps[name]()
        print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "benchmarks.json").write_text(json.dumps(res, indent=2, default=float))
    (a.out / "BENCHMARKS.md").write_text(report(res, a.out) + _notes(a.out))
    print(f"wrote {a.out / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()

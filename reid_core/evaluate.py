"""Re-ID evaluation on a Market-1501-layout test split (query vs bounding_box_test).

    python -m reid_core.evaluate --weights weights --data DIR [--model img2id|baseline]
        [--post raw nfc rerank nfc+rerank] [--json FILE]

Prints mAP and CMC Rank-1/5/10 under the Market-1501 protocol (same pid and same
camera removed from each query's gallery) and writes them as fractions in [0, 1];
`--post` adds neighbour feature centralization and/or k-reciprocal re-ranking
(reid_core/retrieval.py), each reported with ID^2 of the features it ranked.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .data import load_split
from .io import atomic_write_json
from .metrics import evaluate_rank, pairwise_distance, rank_summary


def features(engine, images_u8: np.ndarray, model: str) -> np.ndarray:
    if model == "img2id":
        return engine.embed_arrays(images_u8)
    if model == "havana":
        return engine.havana_features(images_u8)
    if model == "baseline":
        if engine.baseline is None:
            raise ValueError("these weights hold no baseline model (train it with --stages baseline)")
        from .models.baseline_net import embed_images
        return embed_images(engine.baseline, images_u8, device=engine.device, flip_average=True)
    raise ValueError(f"unknown model {model!r}")


POST = ("raw", "nfc", "rerank", "nfc+rerank")
CENTRALIZE_M = (1, 2, 4, 8)        # Pose2ID's table shape: M library poses per photo
CENTRALIZE_ETA = (0.25, 0.5, 1.0, 2.0)
VIEW_STEPS = 5                     # DDIM steps of a pose view (half the demo's: 8 views per photo)


def parse_post(post: str) -> tuple[int, bool, bool]:
    """A retrieval variant: "raw", or "+"-joined parts among "pose<M>" (Pose2ID centralization
    with M library poses), "nfc", "rerank". Returns (M or 0, nfc, rerank)."""
    parts = post.split("+")
    if post == "raw":
        return 0, False, False
    m = [p for p in parts if p.startswith("pose")]
    rest = [p for p in parts if not p.startswith("pose")]
    ok = len(m) <= 1 and set(rest) <= {"nfc", "rerank"} and len(set(rest)) == len(rest) and \
        (not m or m[0][4:].isdigit() and int(m[0][4:]) >= 1)
    if not ok:
        raise ValueError(f"unknown retrieval variant {post!r}: use raw, or join pose<M>, nfc, rerank with '+'")
    return (int(m[0][4:]) if m else 0), "nfc" in rest, "rerank" in rest


def embed_with(engine, model: str, images_u8: np.ndarray) -> np.ndarray:
    """Features of uint8 images of any size by `model` (each model resizes to its own input)."""
    if model == "baseline":
        from PIL import Image
        h, w = engine.image_size
        if images_u8.shape[1:3] != (h, w):
            images_u8 = np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)) for a in images_u8])
    return features(engine, images_u8, model)


def cached_views(engine, name: str, crops_u8: np.ndarray, images_u8: np.ndarray, steps: int = VIEW_STEPS,
                 progress: bool = True) -> np.ndarray:
    """`engine.pose_views` of a split in every library pose, kept on disk by weights and input."""
    import hashlib

    from .io import atomic_savez, cache_dir
    h = hashlib.sha1(f"{engine.fingerprint}|{name}|{steps}|{len(engine.pose_library())}".encode())
    h.update(np.ascontiguousarray(crops_u8[:, ::8, ::8]).tobytes())
    path = cache_dir() / f"views-{h.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return z["views"]
    from tqdm.auto import tqdm
    bar = tqdm(total=len(crops_u8), desc=f"pose views ({name})", disable=not progress)

    def tick(frac, _msg):
        bar.n = int(round(frac * len(crops_u8)))
        bar.refresh()
    views = engine.pose_views(crops_u8, images_u8, steps=steps, progress=tick)
    bar.close()
    atomic_savez(path, views=views)
    return views


def rank_variant(qf, gf, post: str, metric: str, q_views=None, g_views=None, eta: float = 1.0):
    """One retrieval variant: the (num_query, num_gallery) distance and the gallery features it ranked."""
    from .retrieval import k_reciprocal_rerank, nfc, normalize, pose_centralize
    m, use_nfc, use_rerank = parse_post(post)
    if m:
        qf, gf = pose_centralize(qf, q_views[:, :m], eta), pose_centralize(gf, g_views[:, :m], eta)
    qp, gp = (nfc(qf), nfc(gf)) if use_nfc else (qf, gf)
    if metric == "cosine":
        qp, gp = normalize(qp), normalize(gp)
    dist = k_reciprocal_rerank(qp, gp) if use_rerank else pairwise_distance(qp, gp, metric=metric)
    return dist, gp


def choose_centralization(engine, data, model: str = "img2id", ms=CENTRALIZE_M, etas=CENTRALIZE_ETA,
                          num_ids: int = 100, progress: bool = True) -> dict:
    """Pose2ID's eta for each M, chosen on held-out TRAINING identities (`validation_split`:
    one query per camera, the rest gallery), never on the test split. Returns
    {"raw": val mAP, "by_m": {M: {"eta", "mAP"}}, "best_m": M}."""
    from .data import validation_split
    crops = load_split(data, "train", engine.embed_size, progress=progress)
    small = load_split(data, "train", engine.image_size, progress=progress)
    num_ids = min(num_ids, len(np.unique(crops.pids)) // 2)   # a tiny dataset: half its identities
    _, qi, gi = validation_split(crops.pids, crops.camids, num_ids=num_ids, seed=0)
    idx = np.concatenate([qi, gi])
    views = cached_views(engine, f"train-val{num_ids}", crops.images[idx], small.images[idx], progress=progress)
    imgs = small.images[idx] if model == "baseline" else crops.images[idx]
    f = features(engine, imgs, model)
    vf = embed_with(engine, model, views.reshape(-1, *views.shape[2:])).reshape(len(idx), views.shape[1], -1)
    metric = "cosine" if model == "baseline" else "euclidean"
    nq = len(qi)
    pids, cams = crops.pids[idx], crops.camids[idx]

    def val_map(post, eta=1.0):
        d, _ = rank_variant(f[:nq], f[nq:], post, metric, vf[:nq], vf[nq:], eta)
        return float(evaluate_rank(d, pids[:nq], pids[nq:], cams[:nq], cams[nq:])[1])
    by_m = {}
    for m in ms:
        scores = {eta: val_map(f"pose{m}", eta) for eta in etas}
        best = max(scores, key=scores.get)
        by_m[int(m)] = {"eta": float(best), "mAP": scores[best]}
    return {"raw": val_map("raw"), "by_m": by_m, "best_m": max(by_m, key=lambda k: by_m[k]["mAP"]),
            "identities": num_ids, "queries": int(nq), "gallery": int(len(gi))}


def evaluate(engine, data, model: str = "img2id", progress: bool = True, post: str = "raw") -> dict:
    """Rank metrics of one model on the query/gallery splits of `data`; `post` adds NFC
    (within the gallery and within the queries) and/or k-reciprocal re-ranking."""
    return evaluate_variants(engine, data, model, progress, (post,))[post]


def evaluate_variants(engine, data, model: str = "img2id", progress: bool = True, posts=POST,
                      centralization: dict | None = None) -> dict:
    """{post: rank metrics} for each retrieval variant (`parse_post`), features computed once;
    each also reports ID^2 of the gallery features it ranked (lower: tighter identities).
    Variants with pose centralization take eta from `centralization` (as `choose_centralization`
    returns it; chosen on the training split when not given)."""
    from .retrieval import identity_density
    size = engine.image_size if model == "baseline" else engine.embed_size
    q = load_split(data, "query", size, progress=progress)
    g = load_split(data, "gallery", size, progress=progress)
    t0 = time.perf_counter()
    qf, gf = features(engine, q.images, model), features(engine, g.images, model)
    # BNNeck features are compared by cosine, as BoT does; Img2ID by Euclidean distance (paper).
    metric = "cosine" if model == "baseline" else "euclidean"
    base = time.perf_counter() - t0
    parsed = {post: parse_post(post) for post in posts}
    max_m = max(m for m, _, _ in parsed.values())
    qv = gv = None
    if max_m:
        if centralization is None:
            centralization = choose_centralization(engine, data, model, progress=progress)
        views = []
        for split, loaded in (("query", q), ("gallery", g)):   # the views need both sizes: reuse the one loaded
            crops = loaded if size == engine.embed_size else load_split(data, split, engine.embed_size, progress=progress)
            small = loaded if size == engine.image_size else load_split(data, split, engine.image_size, progress=progress)
            v = cached_views(engine, split, crops.images, small.images, progress=progress)
            views.append(embed_with(engine, model, v.reshape(-1, *v.shape[2:])).reshape(len(v), v.shape[1], -1))
        qv, gv = views
    out = {}
    for post, (m, _, _) in parsed.items():
        t1 = time.perf_counter()
        eta = centralization["by_m"][m]["eta"] if m else 0.0
        dist, gp = rank_variant(qf, gf, post, metric, qv, gv, eta)
        cmc, mAP = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids)
        res = rank_summary(cmc, mAP)
        res.update(model=model, metric=metric, post=post, num_query=len(q), num_gallery=len(g),
                   id_density=identity_density(gp, g.pids), seconds=base + time.perf_counter() - t1)
        if m:
            res.update(eta=eta, eta_chosen_on="training identities", val_mAP=centralization["by_m"][m]["mAP"])
        out[post] = res
    return out


def calibrate_verdict(engine, data, progress: bool = True):
    """Fit "same person or not" on Img2ID distances between TRAINING images (same-person pairs
    across cameras against as many different-person pairs), then score it on the test split's
    images (query + gallery) the same way. Returns (verdict, scores)."""
    from .retrieval import fit_verdict, verification_scores
    train = load_split(data, "train", engine.embed_size, progress=progress)
    verdict = fit_verdict(engine.embed_arrays(train.images), train.pids, train.camids)
    q = load_split(data, "query", engine.embed_size, progress=progress)
    g = load_split(data, "gallery", engine.embed_size, progress=progress)
    feats = engine.embed_arrays(np.concatenate([q.images, g.images]))
    scores = verification_scores(verdict, feats, np.concatenate([q.pids, g.pids]),
                                 np.concatenate([q.camids, g.camids]))
    return verdict, scores


def generate_rows(engine, rows, seeds, pose=None, batch: int = 256, candidates: int | None = None) -> np.ndarray:
    """uint8 images (len(rows) * len(seeds), H, W, 3) of training identities `rows`, each
    seeded `row * 1000 + seed` (as a user asks for them: drawn `candidates` times, by default
    `engine.identity_candidates`), row-major."""
    rows = np.asarray(rows)
    ids = np.repeat(engine.identity_table[rows], len(seeds), 0)
    all_seeds = [int(r) * 1000 + int(s) for r in rows for s in seeds]
    k = engine.candidate_count(candidates)
    batch = max(1, batch // k)
    out = []
    for i in range(0, len(ids), batch):
        out.append(np.stack([np.asarray(im) for im in engine.generate(ids[i:i + batch], seed=all_seeds[i:i + batch],
                                                                     pose=pose, candidates=k)]))
    return np.concatenate(out)


RANKING_BASES = 16  # training identities the slider ranking judges


def ranking_rows(num_identities: int, bases: int = RANKING_BASES) -> np.ndarray:
    """The training identities `axis_identity_change` judges the sliders on: evenly spread."""
    return np.unique(np.linspace(0, num_identities - 1, min(bases, num_identities)).astype(int))


def sensitive_axes(engine, num_axes: int, bases: int = 8, seed: int = 1, reader: str = "img2id",
                   batch: int = 128, progress=None) -> np.ndarray:
    """(num_axes, id_dim) orthonormal directions of the identity space that the generator
    draws most visibly (the identity axes): the top eigenvectors of sum_b J_b^T J_b, J_b the
    Jacobian, at training identity b under its own noise, of what `reader` sees in the
    generated picture: "img2id" its identity vector (who the person looks like), "pixels" the
    picture itself.

    A wide identity table (256-d on the shipped weights) spreads its variance almost evenly:
    its 32 principal axes hold 22% of it and differ little from random directions, most of
    which the generator barely draws. Sliders along these axes change the person instead.
    J_b is taken by forward differences along every dimension, one standard deviation of the
    trained rows (per dimension) long: id_dim + 1 generations per base. The bases are random
    training identities other than the slider ranking's (`ranking_rows`), under noise seeds
    `seed` .. `seed` + bases - 1, none of them the ranking's noise (seed 0), so the ranking
    that judges these axes does not see the pictures they were found on.
    """
    import torch
    if reader not in ("img2id", "pixels"):
        raise ValueError("reader must be 'img2id' or 'pixels'")
    table = engine.identity_table
    n, d = table.shape
    if not 1 <= num_axes <= d:
        raise ValueError(f"num_axes must lie in 1..{d}")
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(n), ranking_rows(n))
    rows = rng.choice(others if len(others) >= bases else np.arange(n), min(bases, n), replace=False)
    step = float(np.sqrt(((table - table.mean(0)) ** 2).sum(1).mean() / d))

    def seen(ids: np.ndarray, z: np.ndarray) -> np.ndarray:
        if reader == "img2id":
            return engine.embed_arrays(np.stack([np.asarray(im) for im in engine.generate(ids, noise=z)]))
        with torch.inference_mode():
            x = torch.from_numpy(ids).to(engine.device)
            return engine._sample(x, torch.from_numpy(z).to(engine.device).expand(len(x), -1, -1, -1)) \
                .float().flatten(1).cpu().numpy()

    gram = np.zeros((d, d))
    for k, row in enumerate(rows):
        ids = np.concatenate([table[row][None], table[row] + step * np.eye(d, dtype=np.float32)])
        z = engine.noise(int(seed) + k)
        f = np.concatenate([seen(ids[i:i + batch], z) for i in range(0, len(ids), batch)]).astype(np.float64)
        jac = (f[1:] - f[0]) / step  # (d, features): row i = d feature / d identity_i
        gram += jac @ jac.T
        if progress is not None:
            progress((k + 1) / len(rows))
    _, vecs = np.linalg.eigh(gram)  # ascending
    return fix_signs(vecs[:, ::-1][:, :num_axes].T).astype(np.float32)


def fix_signs(axes: np.ndarray) -> np.ndarray:
    """Axes (rows) with the sign that makes each one's largest component positive."""
    return axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]


def axis_identity_change(engine, judge, bases: int = RANKING_BASES, sds: float = 2.0, seed: int = 0,
                         progress=None) -> dict:
    """Which slider axes change WHO the person is (the paper's Fig. 11 made measurable).

    For `bases` training identities (evenly spread over the table) under the noise of `seed`,
    each of `engine.latent_axes` is moved by +-`sds` standard deviations of the trained rows
    along it; `judge` (the baseline) names the person in every picture. An axis changes the
    identity of a base when the judged person at +sds or at -sds differs from the unmoved one.
    Returns rate (num_axes,) = share of bases changed, order (axes by rate, most first),
    changed_axes = axes with rate >= 0.5, and the sweep's settings.
    """
    from .models.baseline_net import classify_images
    rows = ranking_rows(engine.num_identities, bases)
    axes, move = engine.latent_axes, sds * engine.axis_spread
    z = engine.noise(int(seed))

    def judged(ids):
        imgs = np.stack([np.asarray(im) for im in engine.generate(ids, noise=z)])
        return classify_images(judge, imgs, device=engine.device)

    base = judged(engine.identity_table[rows])
    changed = np.zeros((len(axes), len(rows)), bool)
    for d in range(len(axes)):
        shift = move[d] * axes[d]
        ids = np.concatenate([engine.identity_table[rows] + shift, engine.identity_table[rows] - shift])
        pred = judged(ids)
        changed[d] = (pred[:len(rows)] != base) | (pred[len(rows):] != base)
        if progress is not None:
            progress((d + 1) / len(axes))
    rate = changed.mean(1)
    order = np.argsort(-rate, kind="stable")
    return {"rate": rate.tolist(), "order": order.tolist(), "changed_axes": int((rate >= 0.5).sum()),
            "axes": len(axes), "axes_kind": engine.axes_kind, "bases": len(rows), "sds": float(sds), "seed": int(seed),
            "base_judged_right": float(np.mean(base == rows))}


def pixel_spread(groups: np.ndarray) -> float:
    """Mean per-pixel standard deviation within groups: (G, n, H, W, 3) uint8 -> float in [0, 1]."""
    return float((groups.astype(np.float32) / 255.0).std(axis=1).mean())


def identity_consistency(engine, judge, data, rows=None, seeds=tuple(range(8)), progress: bool = False,
                         candidates: int | None = None) -> dict:
    """Does the generator obey identity? Generate every training identity in `rows` (default:
    all) under len(seeds) noises and let the judge (a classifier trained on real images
    only) name them. `candidates`: how many times each picture is drawn (default: as the
    engine draws it, `identity_candidates`).

    Returns top-1 / top-5 accuracy, how often two noises of one identity are named alike,
    and diversity: the mean per-pixel std across one identity's noises, relative to the
    same figure on as many real training images of one identity.
    """
    from .data import load_split, relabel
    from .models.baseline_net import classify_images
    rows = np.arange(engine.num_identities) if rows is None else np.asarray(rows)
    seeds = list(seeds)
    t0 = time.perf_counter()
    k = engine.candidate_count(candidates)
    imgs = generate_rows(engine, rows, seeds, candidates=k)
    pred, probs = classify_images(judge, imgs, device=engine.device, return_probs=True)
    truth = np.repeat(rows, len(seeds))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    named = pred.reshape(len(rows), len(seeds))
    train = load_split(data, "train", engine.image_size, progress=progress)
    labels, _ = relabel(train.pids)
    n = len(seeds)
    real_groups = [train.images[labels == k][:n] for k in rows if (labels == k).sum() >= n]
    real_spread = pixel_spread(np.stack(real_groups)) if real_groups else float("nan")
    gen_spread = pixel_spread(imgs.reshape(len(rows), n, *imgs.shape[1:]))
    return {"top1": float(np.mean(pred == truth)), "top5": float(np.mean((top5 == truth[:, None]).any(1))),
            "seed_agreement": float(np.mean(named[:, :1] == named[:, 1:])),
            "identities": int(len(rows)), "images_per_identity": n,
            "pixel_std_generated": gen_spread, "pixel_std_real": real_spread,
            "diversity": gen_spread / real_spread if real_groups else float("nan"),
            "judge_accuracy_on_real_train": float(np.mean(classify_images(judge, train.images) == labels)),
            "guidance_scale": engine.guidance_scale, "identity_steer": engine.identity_steer,
            "identity_candidates": k,
            "chooser": "photos" if engine.photo_bank is not None else "rows", "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    from .engine import ReIDEngine
    p = argparse.ArgumentParser(prog="python -m reid_core.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="img2id", choices=["img2id", "baseline", "havana"],
                   help="havana: the uncertainty head's z_mu over Img2ID's pooled feature")
    p.add_argument("--post", nargs="+", default=["raw"],
                   help="retrieval variants: raw, or '+'-joined pose<M> (Pose2ID centralization with M "
                        "library poses, eta chosen on training identities), nfc, rerank; e.g. raw pose4 "
                        "nfc+rerank pose4+nfc+rerank")
    p.add_argument("--calibrate", action="store_true",
                   help="fit the same-person verdict on the training split, save it as WEIGHTS/verdict.json, "
                        "and report its ROC AUC and accuracy on the test split")
    p.add_argument("--choose-centralization", action="store_true",
                   help="choose Pose2ID centralization's M and eta for search on held-out TRAINING identities and "
                        "save them as WEIGHTS/centralization.json")
    p.add_argument("--json", default=None, help="write the metrics to this file")
    a = p.parse_args(argv)
    for post in a.post:
        try:
            parse_post(post)
        except ValueError as e:
            p.error(str(e))
    engine = ReIDEngine.from_pretrained(a.weights)
    chosen = None
    if a.choose_centralization or any(parse_post(post)[0] for post in a.post):
        chosen = choose_centralization(engine, a.data, a.model)
        print(f"centralization chosen on {chosen['identities']} training identities ({a.model}): raw val mAP "
              f"{chosen['raw']:.2%}; " + ", ".join(f"M={m}: eta {c['eta']:g}, val mAP {c['mAP']:.2%}"
                                                     for m, c in chosen["by_m"].items()))
    if a.choose_centralization:
        from .weights import CENTRALIZATION_FILE
        if a.model != "img2id":
            p.error("--choose-centralization sets the search's settings, which ranks by Img2ID: use --model img2id")
        m = chosen["best_m"]
        settings = {"poses": m, "eta": chosen["by_m"][m]["eta"], "steps": VIEW_STEPS,
                    "chosen_on": f"{chosen['identities']} held-out training identities", "validation": chosen}
        atomic_write_json(Path(a.weights) / CENTRALIZATION_FILE, settings)
        print(f"search centralization: M={m}, eta {settings['eta']:g}; saved {Path(a.weights) / CENTRALIZATION_FILE}")
    res = evaluate_variants(engine, a.data, a.model, posts=a.post, centralization=chosen)
    for post, r in res.items():
        print(f"{a.model} {post:>10}: mAP {r['mAP']:.2%}  Rank-1 {r['rank1']:.2%}  Rank-5 {r['rank5']:.2%}  "
              f"Rank-10 {r['rank10']:.2%}  ID2 {r['id_density']:.3f}  ({r['num_query']} queries, "
              f"{r['num_gallery']} gallery)")
    if a.calibrate:
        from .weights import VERDICT_FILE
        verdict, scores = calibrate_verdict(engine, a.data)
        verdict.save(Path(a.weights) / VERDICT_FILE)
        res["verdict"] = scores
        print(f"verdict (fitted on {verdict.pairs} training pairs, threshold {verdict.threshold:.3f}): "
              f"test ROC AUC {scores['roc_auc']:.3f}, accuracy {scores['accuracy']:.1%} on {scores['pairs']} pairs; "
              f"saved {Path(a.weights) / VERDICT_FILE}")
    if a.json:
        atomic_write_json(a.json, res if len(res) > 1 else next(iter(res.values())))


if __name__ == "__main__":
    main()

"""Benchmark the Gradio app on this machine, through its API, on 127.0.0.1 only.

    python scripts/bench_app.py [--weights W] [--gallery DIR] [--repeats 20] [--clients 10]
                                [--load-seconds 60] [--out runs/bench_app.json]

1. start: `python -m app` as a subprocess until the first page is served (HTTP 200);
2. every tab usable: from the launch, each tab's first call in turn (generate, invert, sliders,
   re-identify with gallery matches, identity map), then the rest of the warm-up (reported);
   bad uploads (non-image, truncated, 1x1, 10000x10000, RGBA, grey, EXIF-rotated, 50 MB):
   each must get a plain message or a result, and the server must keep serving;
3. single interactions (one client, one at a time): p50/p95 of generate (4 images),
   invert (img2noise, a different photo each time so no cache helps) and search (re-identify);
4. load: `--clients` concurrent gradio_client clients, each its own session, cycling through
   the three interactions for `--load-seconds`: errors, throughput and p50/p95.

Targets: start <= 10 s, every tab <= 30 s, single interaction p95 <= 1 s, load p95 <= 3 s with
no errors, bad uploads answered plainly, no traceback in the server log.
Results go to --out (JSON) and are printed. Loops are bounded by time and count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {"start_s": 10.0, "tabs_usable_s": 30.0, "interaction_p95_s": 1.0, "load_p95_s": 3.0}
OPS = ("generate4", "invert", "search")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except OSError:
        return None


def stats(latencies) -> dict:
    a = np.asarray(latencies, dtype=float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50_s": round(float(np.percentile(a, 50)), 4),
            "p95_s": round(float(np.percentile(a, 95)), 4), "max_s": round(float(a.max()), 4),
            "mean_s": round(float(a.mean()), 4)}


def start_server(weights: str, gallery: str | None, port: int, timeout: float, log_path: Path):
    cmd = [sys.executable, "-m", "app", "--weights", weights, "--port", str(port), "--host", HOST]
    if gallery:
        cmd += ["--gallery", gallery]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(log_path, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}/"
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode}; see {log_path}")
        if http_status(url) == 200:
            return proc, url, time.perf_counter() - t0, t0
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"no page within {timeout:.0f} s; see {log_path}")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Interactions:
    """The three measured interactions, for one client (one session)."""

    def __init__(self, url: str, photos: list[str], num_ids: int, download_dir, offset: int = 0):
        from gradio_client import Client
        self.client = Client(url, verbose=False, download_files=download_dir, analytics_enabled=False)
        self.photos = photos
        self.num_ids = num_ids
        self.i = offset  # clients start at different photos: the server's inversion cache must not help

    def _next(self) -> int:
        self.i += 1
        return self.i

    def generate4(self):
        i = self._next()
        _, cap = self.client.predict("Training identity", i % self.num_ids, 0, None, f"{4 * i}-{4 * i + 3}", 10,
                                     api_name="/generate")
        assert "4 image(s)" in cap, cap

    def invert(self):
        from gradio_client import handle_file
        photo = self.photos[self._next() % len(self.photos)]
        *_, cap = self.client.predict(handle_file(photo), "img2noise", api_name="/invert")
        assert "PSNR" in cap, cap

    def search(self):
        from gradio_client import handle_file
        photo = self.photos[self._next() % len(self.photos)]
        ids, gal, cap = self.client.predict(handle_file(photo), 10, api_name="/reidentify")
        assert len(ids) >= 1, cap

    def timed(self, op: str) -> float:
        t = time.perf_counter()
        getattr(self, op)()
        return time.perf_counter() - t


def bad_uploads(folder: Path, photo: str) -> dict[str, tuple[Path, bool]]:
    """The bad uploads of the issue, written to `folder`: name -> (file, whether it is a usable photo)."""
    from PIL import Image
    src = Image.open(photo).convert("RGB")
    files = {}

    def put(name, data=None, image=None, fmt=None, usable=False, **kw):
        path = folder / name
        if image is not None:
            image.save(path, fmt, **kw)
        else:
            path.write_bytes(data)
        files[name.split(".")[0]] = (path, usable)

    put("non-image.jpg", b"this is not a picture\n" * 100)
    full = Path(photo).read_bytes()
    put("truncated.jpg", full[: len(full) // 2])
    put("one-pixel.png", image=Image.new("RGB", (1, 1)), fmt="PNG")
    put("huge-10000x10000.png", image=Image.new("RGB", (10000, 10000), (90, 90, 90)), fmt="PNG")
    put("rgba.png", image=src.convert("RGBA"), fmt="PNG", usable=True)
    put("grey.png", image=src.convert("L"), fmt="PNG", usable=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    put("exif-rotated.jpg", image=src.transpose(Image.Transpose.ROTATE_90), fmt="JPEG", exif=exif, usable=True)
    put("fifty-mb.jpg", np.random.default_rng(0).bytes(50 * 2**20))
    return files


def check_bad_uploads(client, files: dict) -> dict:
    """Each bad upload through /invert: the answer (a result or a plain message) and its time."""
    from gradio_client import handle_file
    out = {}
    for name, (path, usable) in files.items():
        t = time.perf_counter()
        try:
            *_, cap = client.predict(handle_file(str(path)), "img2noise", api_name="/invert")
            answer, ok = f"result: {cap[:80]}", usable and "PSNR" in cap
        except Exception as e:  # gradio_client raises the app's message
            msg = str(e)
            answer = msg[:160]
            # over the server's upload limit, gradio_client refuses before sending (naming the caller's own file)
            refused_as_too_big = "exceeds the maximum file size" in msg
            ok = (not usable) and "Traceback" not in msg and (refused_as_too_big or str(path.parent) not in msg)
        out[name] = {"ok": bool(ok), "answer": answer, "seconds": round(time.perf_counter() - t, 3)}
    return out


def pick_photos(gallery: str | None, n: int, url: str, download_dir: str) -> list[str]:
    """Distinct query photos: the demo dataset's query crops, else generated persons."""
    from reid_core.data import DEMO_DATA
    for folder in ([Path(gallery) / "query"] if gallery else []) + [DEMO_DATA / "query"]:
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".png"})
            if files:
                step = max(1, len(files) // n)
                return [str(p) for p in files[::step][:n]]
    from gradio_client import Client
    client = Client(url, verbose=False, download_files=download_dir, analytics_enabled=False)
    out = []
    for i in range(max(1, n // 4)):  # one sheet of 4 per call; crop each person out
        from PIL import Image
        sheet, _ = client.predict("New identity (prior)", 0, i, None, "0-3", 10, api_name="/generate")
        im = Image.open(sheet)
        w = (im.width - 5 * 4) // 4
        for j in range(4):
            p = Path(download_dir) / f"photo-{i}-{j}.png"
            im.crop((4 + j * (w + 4), 4, 4 + j * (w + 4) + w, im.height - 4)).save(p)
            out.append(str(p))
    return out


def run_load(url, photos, num_ids, clients: int, seconds: float, download_dir, max_requests: int = 100_000):
    sessions = [Interactions(url, photos, num_ids, download_dir, offset=k * (len(photos) // clients))
                for k in range(clients)]
    records, errors = [], []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(k: int, s: Interactions):
        start.wait()
        j = k  # clients start at different interactions
        while time.perf_counter() < deadline[0] and len(records) + len(errors) < max_requests:
            op = OPS[j % len(OPS)]
            j += 1
            t = time.perf_counter()
            try:
                getattr(s, op)()
                with lock:
                    records.append((op, time.perf_counter() - t))
            except Exception as e:  # counted and reported
                with lock:
                    errors.append(f"{op}: {type(e).__name__}: {str(e)[:200]}")

    threads = [threading.Thread(target=worker, args=(k, s), daemon=True) for k, s in enumerate(sessions)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(timeout=seconds + 120)
    wall = time.perf_counter() - t0
    out = {"clients": clients, "seconds": round(wall, 2), "requests": len(records), "errors": len(errors),
           "error_samples": errors[:5], "throughput_rps": round(len(records) / wall, 3),
           "all": stats([x for _, x in records])}
    for op in OPS:
        out[op] = stats([x for o, x in records if o == op])
    return out


def main(argv=None) -> int:
    from app.common import weights_arg
    from reid_core.data import DEMO_DATA
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="weights folder or Hub repo id (default: $REID_WEIGHTS, weights/)")
    p.add_argument("--gallery", default=str(DEMO_DATA) if DEMO_DATA.is_dir() else None,
                   help="gallery folder for the search (default: the demo dataset if present)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per single interaction")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--load-seconds", type=float, default=60.0)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--download-files", action="store_true",
                   help="also download every output image, one HTTP request after another (gradio_client's "
                        "way; a browser fetches them in parallel). Default: time until the results are ready")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_app.json"))
    args = p.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 0 < args.load_seconds <= 3600 or not 1 <= args.repeats <= 1000:
        p.error("--clients in 1..64, --load-seconds in (0, 3600], --repeats in 1..1000")
    weights = weights_arg(args.weights)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    download_dir = tempfile.mkdtemp(prefix="bench-app-")
    outputs = download_dir if args.download_files else False
    result = {"weights": weights, "gallery": args.gallery, "download_files": args.download_files,
              "host": platform.node(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "targets": TARGETS,
              "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    port = args.port or free_port()
    log_path = out_path.with_suffix(".server.log")
    proc, url, start_s, t_launch = start_server(weights, args.gallery, port, args.start_timeout, log_path)
    result["start_s"] = round(start_s, 3)
    print(f"app served its first page after {start_s:.2f} s ({url})")
    try:
        from gradio_client import handle_file
        main_session = Interactions(url, [], 1, outputs)
        c = main_session.client
        first = pick_photos(args.gallery, 1, url, download_dir)[0]
        tabs = {}

        def reidentify_with_gallery():
            deadline = time.perf_counter() + 300
            while True:
                _, gal, _ = c.predict(handle_file(first), 10, api_name="/reidentify")
                if gal or not args.gallery or time.perf_counter() > deadline:
                    return
                time.sleep(0.5)

        for tab, call in (("generate", lambda: c.predict("Training identity", 0, 0, None, "0-3", 10,
                                                          api_name="/generate")),
                          ("invert", lambda: c.predict(handle_file(first), "img2noise", api_name="/invert")),
                          ("sliders", lambda: c.predict("Training identity", 0, 0, None, 0, api_name="/latent_load")),
                          ("re-identify", reidentify_with_gallery),
                          ("identity map", lambda: c.predict(None, 0, api_name="/place_photo"))):
            call()
            tabs[tab] = round(time.perf_counter() - t_launch, 3)
            print(f"tab {tab!r} usable {tabs[tab]:.1f} s after launch")
        result["tabs_usable_s"] = tabs
        warm = {}
        t = time.perf_counter()
        _, cap = c.predict(None, 0, api_name="/place_photo")
        num_ids = int(cap.split()[0])
        values = c.predict("Training identity", 0, 0, None, 0, api_name="/latent_load")[:32]
        c.predict(0, *values, api_name="/latent_sensitivity")
        warm["default_sensitivity_ready_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        while not c.predict(api_name="/warm_status") and time.perf_counter() - t < 600:
            time.sleep(1.0)  # the server's own warm-up (portraits, ...) must not overlap the timings
        warm["server_warm_up_done_s"] = round(time.perf_counter() - t_launch, 3)
        result["warm_up"] = warm
        print(f"warm-up: {warm}")
        result["bad_uploads"] = check_bad_uploads(c, bad_uploads(Path(download_dir), first))
        result["alive_after_bad_uploads"] = http_status(url) == 200
        print(json.dumps(result["bad_uploads"], indent=1))

        photos = pick_photos(args.gallery, max(120, args.repeats * 6), url, download_dir)
        main_session.photos, main_session.num_ids = photos, num_ids
        single = {}
        for op in OPS:
            for _ in range(2):
                main_session.timed(op)  # first calls: lazy imports, caches of the client
            single[op] = stats([main_session.timed(op) for _ in range(args.repeats)])
            print(f"{op:10s} {single[op]}")
        result["single"] = single
        print(f"load: {args.clients} clients for {args.load_seconds:.0f} s ...")
        result["load"] = run_load(url, photos, num_ids, args.clients, args.load_seconds, outputs)
        print(json.dumps(result["load"], indent=1))
        result["server_alive_after"] = http_status(url) == 200
    finally:
        stop_server(proc)
        shutil.rmtree(download_dir, ignore_errors=True)
    result["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    log_text = log_path.read_text(errors="replace")
    result["server_log"] = {"tracebacks": log_text.count("Traceback"),
                            "handled_lines": sum(line.startswith("handled:") for line in log_text.splitlines())}
    worst_single = max(v["p95_s"] for v in result["single"].values())
    result["pass"] = {
        "start": result["start_s"] <= TARGETS["start_s"],
        "tabs_usable": max(result["tabs_usable_s"].values()) <= TARGETS["tabs_usable_s"],
        "bad_uploads": all(v["ok"] for v in result["bad_uploads"].values()) and result["alive_after_bad_uploads"],
        "no_tracebacks": result["server_log"]["tracebacks"] == 0,
        "interaction_p95": worst_single <= TARGETS["interaction_p95_s"],
        "load_p95": result["load"]["all"].get("p95_s", 1e9) <= TARGETS["load_p95_s"],
        "load_no_errors": result["load"]["errors"] == 0,
    }
    out_path.write_text(json.dumps(result, indent=2))
    print(f"\nstart {result['start_s']:.2f} s (target <= {TARGETS['start_s']:.0f}) | every tab "
          f"{max(result['tabs_usable_s'].values()):.1f} s (<= {TARGETS['tabs_usable_s']:.0f}) | worst single p95 "
          f"{worst_single:.3f} s (<= {TARGETS['interaction_p95_s']:.0f}) | load p95 "
          f"{result['load']['all'].get('p95_s')} s (<= {TARGETS['load_p95_s']:.0f}), errors "
          f"{result['load']['errors']}, {result['load']['throughput_rps']} req/s")
    print(f"pass: {result['pass']}\nwritten: {out_path}")
    return 0 if all(result["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

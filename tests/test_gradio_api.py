"""The Gradio app as a server on 127.0.0.1, driven through its API with gradio_client."""
from __future__ import annotations

from conftest import free_port

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)




def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status




@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client
    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def photo(synthetic_market) -> str:
    return str(sorted((synthetic_market / "query").glob("*.jpg"))[0])


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, photo):
    try:  # the same helper as the handler tests
        from tests.test_app_handlers import make_uploads
    except ImportError:
        from test_app_handlers import make_uploads
    return make_uploads(tmp_path_factory.mktemp("api-uploads"), photo)


def _file(path):
    from gradio_client import handle_file
    return handle_file(str(path))


def test_every_endpoint_has_a_name(client):
    api = client.view_api(print_info=False, return_format="dict")
    named = set(api["named_endpoints"])
    for name in ("/generate", "/invert", "/swap", "/latent_render", "/latent_random", "/reidentify",
                 "/index_folder", "/add_to_gallery", "/identity_map", "/show_identity"):
        assert name in named
    assert not api["unnamed_endpoints"]


def test_generate_invert_swap(client, photo, tiny_weights):
    img, cap = client.predict("Training identity", 1, 0, None, "0-3", 10, api_name="/generate")
    assert "4 image(s)" in cap and np.asarray(Image.open(img)).std() > 5    # a picture, not a blank
    assert Image.open(img).size[0] > Image.open(img).size[1]           # one row of 4 persons
    inp, rec, noise, plot, cap = client.predict(_file(photo), "img2noise", api_name="/invert")
    assert Image.open(inp).size == Image.open(rec).size == Image.open(noise).size and "PSNR" in cap
    psnr = float(cap.split("PSNR")[1].split("dB")[0].strip(" *:="))
    a, b = (np.asarray(Image.open(p).convert("RGB"), np.float64) for p in (inp, rec))
    assert psnr == pytest.approx(10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)), abs=1.5)   # the caption's PSNR
    inp, rec, noise, plot, cap = client.predict(_file(photo), "ddim", api_name="/invert")
    assert "ddim" in cap
    sheet, cap = client.predict(_file(photo), "img2noise", "New identity (prior)", 0, 3, api_name="/swap")
    assert "seed 3" in cap and Image.open(sheet).size[0] > 2.5 * Image.open(inp).size[0]   # photo | rec. | swap
    assert "50% of it kept" in cap  # the default share of the photo's noise
    whole, cap = client.predict(_file(photo), "img2noise", "New identity (prior)", 0, 3, 1.0, api_name="/swap")
    assert "100% of it kept" in cap
    a, b = (np.asarray(Image.open(p).convert("RGB"), np.int64) for p in (sheet, whole))
    assert np.abs(a - b).mean() > 0  # the share of the noise kept changes the swap


def test_latent_sliders(client):
    values = [0.0] * 32
    img = client.predict(0, *values, api_name="/latent_render")
    out = client.predict(0, api_name="/latent_random")
    assert len(out) == 32 + 2 and "prior" in out[-1]   # 32 values, image, caption (the state is hidden)
    moved = client.predict(0, *out[:32], api_name="/latent_render")       # the sliders at the new values
    assert np.abs(np.asarray(Image.open(img), np.float32) - np.asarray(Image.open(moved), np.float32)).mean() > 1
    fig, cap = client.predict(0, *values, api_name="/latent_sensitivity")
    assert "most" in cap


def test_reidentify_with_gallery(client, photo, synthetic_market):
    ids, gal, cap = client.predict(_file(photo), 5, api_name="/reidentify")
    assert len(ids) == 5
    status = client.predict(str(synthetic_market), api_name="/index_folder")
    assert "images indexed" in status
    ids, gal, cap = client.predict(_file(photo), 5, api_name="/reidentify")
    assert len(gal) == 5 and all(item["caption"] for item in gal)
    status = client.predict([_file(photo)], api_name="/add_to_gallery")
    assert "1 of your own photos" in status
    ids, gal, cap = client.predict(_file(photo), 3, api_name="/reidentify")
    assert gal[0]["caption"].startswith("0.000")          # the uploaded copy of the query itself


def test_identity_map(client, photo):
    fig, cap = client.predict(_file(photo), 0, api_name="/place_photo")
    assert "Your photo" in cap
    sheet, who = client.predict(3, api_name="/show_identity")
    assert "#3" in who and np.asarray(Image.open(sheet)).std() > 5


@pytest.mark.parametrize("kind, message", [
    ("not_image", "not an image"),
    ("truncated", "damaged or truncated"),
    ("tiny", "too small"),
    ("huge", "Mpixel limit"),
])
def test_bad_uploads_are_refused_plainly_and_the_server_keeps_serving(client, server, uploads, photo, kind,
                                                                       message, capfd):
    from gradio_client.exceptions import AppError
    capfd.readouterr()
    with pytest.raises(AppError, match=message) as refused:
        client.predict(_file(uploads[kind]), "img2noise", api_name="/invert")
    assert "/" not in str(refused.value).split(message)[-1], "no server path in the message"
    with pytest.raises(AppError, match=message):
        client.predict(_file(uploads[kind]), 5, api_name="/reidentify")
    log = "".join(capfd.readouterr())
    assert "Traceback" not in log and "/tmp/" not in log                       # quiet and pathless
    assert sum(line.startswith("handled:") for line in log.splitlines()) == 2   # one line per refusal
    assert _get(server) == 200
    *_, cap = client.predict(_file(photo), "img2noise", api_name="/invert")
    assert "PSNR" in cap


@pytest.mark.parametrize("kind", ["rgba", "gray"])
def test_odd_uploads_work(client, uploads, kind):
    *_, cap = client.predict(_file(uploads[kind]), "img2noise", api_name="/invert")
    assert "PSNR" in cap


def test_out_of_range_values_are_refused(client):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError):
        client.predict("Training identity", 10 ** 6, 0, None, "0", 10, api_name="/generate")
    with pytest.raises(AppError, match="seed"):
        client.predict("Training identity", 0, 0, None, "a-b", 10, api_name="/generate")


def test_cli_starts_and_serves(tiny_weights):
    """`python -m app` as a subprocess: serves the page, and a missing weights folder is a plain error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "app", "--weights", str(ROOT / "no-such-weights"),
                          "--port", str(free_port())], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app", "--weights", str(tiny_weights), "--port", str(port),
                             "--no-warm-up"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = _get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200, proc.stdout.read().decode() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_warm_status_answers(client):
    # the test server is started without launch()'s background warm-up: not warm, and says so
    assert client.predict(api_name="/warm_status") is False

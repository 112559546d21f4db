"""Shared fixtures: a synthetic Market-layout dataset and tiny weights trained on it."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from reid_core.data import DEMO_DATA

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = DEMO_DATA

# Tiny models run fastest on one thread: a second one mostly waits, and fights other jobs for cores.
torch.set_num_threads(1)


@contextlib.contextmanager
def script_module(name: str):
    """`scripts/<name>.py` imported as a module for a test (registered in sys.modules, which
    dataclasses need, and with scripts/ on the path for its own imports); both undone after."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "scripts"))
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Decoded-image and gallery caches go to a temp folder, never the user's home."""
    os.environ["REID_CACHE"] = str(tmp_path_factory.mktemp("reid-cache"))
    yield


@pytest.fixture(scope="session")
def synthetic_market(tmp_path_factory) -> Path:
    from reid_core.synthetic import make_synthetic_market
    return make_synthetic_market(tmp_path_factory.mktemp("market"), num_train_ids=8, num_test_ids=4)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, synthetic_market) -> Path:
    """A complete weights folder of the `tiny` preset, trained once per test session."""
    from reid_core.config import get_preset
    from reid_core.training import train
    out = tmp_path_factory.mktemp("tiny-weights")
    train(synthetic_market, get_preset("tiny"), out, progress=False, device="cpu")
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bounding_box_train").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the ../shared folder beside the project); "
                    "integration tests on cuhk03-pair1 need it")
    return SHARED_DATA


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_weights, synthetic_market):
    """The Gradio app on the tiny weights, served on 127.0.0.1; yields its URL."""
    from app.gradio_app import build_demo, serve
    from reid_core.engine import ReIDEngine
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    demo = build_demo(engine, gallery=str(synthetic_market))
    serve(demo, port=(port := free_port()), block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()

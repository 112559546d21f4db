"""scripts/publish.py: the upload plan, built and checked without any network."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import script_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def publish_mod():
    with script_module("publish") as mod:
        yield mod


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError("publish tests must not touch the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _fake_weights(root: Path) -> Path:
    for c in ("generator", "prior", "img2id", "img2noise"):
        (root / c).mkdir(parents=True)
        (root / c / "config.json").write_text("{}")
        (root / c / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 16)
    (root / "preset.json").write_text(json.dumps({"name": "paper", "image_size": [64, 32], "id_dim": 32}))
    (root / "identities.json").write_text(json.dumps({"pids": [1, 2, 3]}))
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "generator.pt").write_bytes(b"pickle")
    (root / ".DS_Store").write_bytes(b"x")
    return root


def test_plan_lists_the_components_and_leaves_checkpoints_out(publish_mod, tmp_path):
    from huggingface_hub import CommitOperationAdd
    w = _fake_weights(tmp_path / "w")
    plan = publish_mod.plan_upload(w, "someone/reid-weights", private=True)
    assert plan.repo_id == "someone/reid-weights" and plan.revision == "main" and plan.private
    assert all(isinstance(op, CommitOperationAdd) for op in plan.operations)
    assert sorted(plan.paths) == sorted([
        "README.md", "generator/config.json", "generator/diffusion_pytorch_model.safetensors",
        "identities.json", "img2id/config.json", "img2id/diffusion_pytorch_model.safetensors",
        "img2noise/config.json", "img2noise/diffusion_pytorch_model.safetensors", "preset.json",
        "prior/config.json", "prior/diffusion_pytorch_model.safetensors"])
    assert set(plan.skipped) == {"checkpoints/generator.pt", ".DS_Store"}
    card = next(op for op in plan.operations if op.path_in_repo == "README.md").path_or_fileobj
    assert card.startswith(b"---\n") and b"someone/reid-weights" in card and b"3 training identities" in card
    text = plan.describe()
    assert "exist_ok=True" in text and "private=True" in text and "checkpoints/generator.pt" in text


def test_plan_keeps_an_existing_card_and_a_revision(publish_mod, tmp_path):
    w = _fake_weights(tmp_path / "w")
    (w / "README.md").write_text("# mine")
    plan = publish_mod.plan_upload(w, "someone/x", revision="v1", commit_message="first")
    assert plan.paths.count("README.md") == 1 and plan.revision == "v1" and plan.commit_message == "first"


@pytest.mark.parametrize("repo_id", ["", "noslash", "a/b/c", "bad name/x", "someone/"])
def test_bad_repo_ids(publish_mod, tmp_path, repo_id):
    w = _fake_weights(tmp_path / "w")
    with pytest.raises(publish_mod.PublishError):
        publish_mod.plan_upload(w, repo_id)


def test_incomplete_or_missing_folder(publish_mod, tmp_path):
    with pytest.raises(publish_mod.PublishError, match="does not exist"):
        publish_mod.plan_upload(tmp_path / "nope", "a/b")
    w = _fake_weights(tmp_path / "w")
    (w / "img2noise" / "config.json").unlink()
    with pytest.raises(publish_mod.PublishError, match="img2noise"):
        publish_mod.plan_upload(w, "a/b")


def test_publish_calls_the_api_with_the_plan(publish_mod, tmp_path):
    class FakeApi:
        def __init__(self):
            self.calls = []

        def create_repo(self, *a, **k):
            self.calls.append(("create_repo", a, k))

        def create_branch(self, *a, **k):
            self.calls.append(("create_branch", a, k))

        def create_commit(self, *a, **k):
            self.calls.append(("create_commit", a, k))
            return "ok"
    plan = publish_mod.plan_upload(_fake_weights(tmp_path / "w"), "someone/x")
    api = FakeApi()
    assert publish_mod.publish(plan, api=api) == "ok"
    (name1, a1, k1), (name2, a2, k2) = api.calls
    assert name1 == "create_repo" and a1 == ("someone/x",) and k1["exist_ok"] is True
    assert name2 == "create_commit" and a2[1] is plan.operations and k2["revision"] == "main"


def test_dry_run_prints_and_sends_nothing(publish_mod, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(publish_mod, "publish", lambda *a, **k: pytest.fail("dry run must not publish"))
    w = _fake_weights(tmp_path / "w")
    assert publish_mod.main(["--repo-id", "someone/x", "--weights", str(w), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "create_repo" in out and "dry run" in out and "preset.json" in out
    assert publish_mod.main(["--repo-id", "bad", "--weights", str(w), "--dry-run"]) == 2

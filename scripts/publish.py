"""Push a trained weights folder to a Hugging Face Hub model repo.

    python scripts/publish.py --repo-id you/reid-weights [--weights weights] [--private] [--dry-run]

The upload is planned first (`plan_upload`: the repo, the revision and the exact
list of `CommitOperationAdd`), then sent in ONE commit (`publish`: `create_repo(...,
exist_ok=True)` and `create_commit` with that list; `upload_folder` does the same
internally, but this way what the tests check is exactly what is sent).
Training checkpoints (`checkpoints/`, pickled `.pt` files) are left out: the apps
need only the safetensors components. A model card is added when the folder has none.
Authentication is huggingface_hub's own ($HF_TOKEN or `hf auth login`).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXCLUDE = ("checkpoints/*", "*/__pycache__/*", "__pycache__/*", ".*", "*/.*", "*.pt", "*.pth", "*.ckpt",
           "*.pkl", "*.pickle", "*.tmp*", "*.lock")


class PublishError(ValueError):
    """A folder or repo id that cannot be published; the message says why."""


@dataclass
class UploadPlan:
    repo_id: str
    revision: str
    private: bool
    commit_message: str
    operations: list = field(default_factory=list)   # huggingface_hub.CommitOperationAdd
    skipped: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [op.path_in_repo for op in self.operations]

    def describe(self) -> str:
        lines = [f"create_repo(repo_id={self.repo_id!r}, repo_type='model', private={self.private}, exist_ok=True)",
                 f"create_commit(repo_id={self.repo_id!r}, revision={self.revision!r}, "
                 f"commit_message={self.commit_message!r}) with {len(self.operations)} file(s):"]
        for op in self.operations:
            src = op.path_or_fileobj
            size = len(src) if isinstance(src, bytes) else Path(src).stat().st_size
            origin = "(generated)" if isinstance(src, bytes) else str(src)
            lines.append(f"  add {op.path_in_repo}  [{size:,} bytes]  {origin}")
        if self.skipped:
            lines.append(f"left out ({len(self.skipped)}): " + ", ".join(self.skipped))
        return "\n".join(lines)


def model_card(weights: Path, repo_id: str) -> str:
    preset = json.loads((weights / "preset.json").read_text())
    ids = weights / "identities.json"
    n_ids = len(json.loads(ids.read_text()).get("pids", [])) if ids.exists() else None
    h, w = preset.get("image_size", [64, 32])
    return f"""---
tags:
- person-reidentification
- diffusion
- generative
pipeline_tag: image-feature-extraction
---

# {repo_id.split('/')[-1]}

Weights of a generative person re-identification engine after Asperti et al. 2024,
"A Generative Approach to Person Reidentification": an identity is the
{preset.get('id_dim', 32)}-d conditioning vector of a DDIM generator of {h}x{w} person images;
Img2ID inverts an image to its identity (the re-ID feature), Img2Noise to its noise.

- preset: `{preset.get('name')}`{f", {n_ids} training identities" if n_ids else ""}
- components: `generator/`, `prior/`, `img2id/`, `img2noise/` (safetensors + config.json),
  `preset.json`, `identities.json`

```python
from reid_core.engine import ReIDEngine
engine = ReIDEngine.from_pretrained("{repo_id}")
```
"""


def plan_upload(weights, repo_id: str, private: bool = False, revision: str = "main",
                commit_message: str | None = None, add_model_card: bool = True) -> UploadPlan:
    """Check the folder and the repo id and list what would be uploaded. No network."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    weights = Path(weights)
    if not weights.is_dir():
        raise PublishError(f"weights folder {weights} does not exist")
    if not repo_id or repo_id.count("/") != 1:
        raise PublishError(f"repo id must look like 'user/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"invalid repo id {repo_id!r}: {e}") from None
    from reid_core.weights import missing as missing_parts
    missing = missing_parts(weights)
    if missing:
        raise PublishError(f"{weights} is not a complete weights folder: missing {', '.join(missing)}")
    if not revision:
        raise PublishError("revision must be a branch name such as 'main'")
    ops, skipped = [], []
    for p in sorted(q for q in weights.rglob("*") if q.is_file()):
        rel = p.relative_to(weights).as_posix()
        if any(fnmatch.fnmatch(rel, pat) for pat in EXCLUDE):
            skipped.append(rel)
            continue
        ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)))
    if add_model_card and not (weights / "README.md").exists():
        ops.append(CommitOperationAdd(path_in_repo="README.md",
                                      path_or_fileobj=model_card(weights, repo_id).encode()))
    message = commit_message or f"Upload {json.loads((weights / 'preset.json').read_text()).get('name', '')} weights"
    return UploadPlan(repo_id, revision, private, message.strip(), ops, skipped)


def publish(plan: UploadPlan, api=None, token: str | None = None):
    """Create the repo if needed and push the planned files in one commit. Returns the commit info."""
    if api is None:
        from huggingface_hub import HfApi
        api = HfApi(token=token)
    api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
    if plan.revision != "main":
        api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
    return api.create_commit(plan.repo_id, plan.operations, commit_message=plan.commit_message,
                             repo_type="model", revision=plan.revision)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo-id", required=True, help="user/name of the Hub model repo (created if missing)")
    p.add_argument("--weights", default=str(ROOT / "weights"), help="weights folder (default: weights/)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default="main", help="branch to commit to (default: main)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print the planned operations, send nothing")
    args = p.parse_args(argv)
    try:
        plan = plan_upload(args.weights, args.repo_id, args.private, args.revision, args.message)
    except PublishError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan.describe())
    if args.dry_run:
        print("dry run: nothing sent")
        return 0
    info = publish(plan)
    print(f"pushed: {getattr(info, 'commit_url', info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generative person re-identification: the engine behind the studio.

    from reid_core import ReIDEngine
    engine = ReIDEngine.from_pretrained("weights")

`ReIDEngine` is the one door to the models; it is imported on first use, so importing a
light submodule (`reid_core.config`, `reid_core.io`) does not load torch.
"""
__all__ = ["ReIDEngine"]


def __getattr__(name: str):
    if name == "ReIDEngine":
        from .engine import ReIDEngine
        return ReIDEngine
    raise AttributeError(f"module 'reid_core' has no attribute {name!r}")

"""Training: the loop once (`loop.py`), a file per stage, the pipeline that orders them.

    python -m reid_core.training --data DIR --preset cpu --out runs/cpu [--init weights] [--resume] [--jobs 2]
"""
from .pipeline import RECIPE_STAGES, STAGES, train

__all__ = ["RECIPE_STAGES", "STAGES", "train"]

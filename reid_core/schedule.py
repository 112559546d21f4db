"""The paper's continuous cosine schedule, expressed as diffusers DDIM schedulers.

Asperti et al. (Sec. 3, after the Keras DDIM example) use a continuous time
t in [0, 1] with signal rate cos(angle), angle = acos(0.95) + t (acos(0.02) - acos(0.95)).
We discretise t into `num_train_timesteps` steps, t_i = (i + 1) / N, and hand
diffusers the betas that give exactly alphas_cumprod[i] = signal_rate(t_i)^2.
With "trailing" spacing, 10 inference steps visit t = 1.0, 0.9, ..., 0.1 and the
last step returns the x0 prediction (set_alpha_to_one): the paper's sampler.
"""
from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

NUM_TRAIN_TIMESTEPS = 1000
MAX_SIGNAL_RATE = 0.95
MIN_SIGNAL_RATE = 0.02


def cosine_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                          max_signal_rate: float = MAX_SIGNAL_RATE,
                          min_signal_rate: float = MIN_SIGNAL_RATE) -> torch.Tensor:
    """(N,) float64 alpha-bar_i = signal_rate((i + 1) / N)^2, decreasing from ~0.90 to 4e-4."""
    t = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    start, end = math.acos(max_signal_rate), math.acos(min_signal_rate)
    return torch.cos(start + t * (end - start)) ** 2


def _betas(num_train_timesteps: int) -> list[float]:
    acp = cosine_alphas_cumprod(num_train_timesteps)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
    return (1.0 - acp / prev).tolist()


def make_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   prediction_type: str = "epsilon") -> DDIMScheduler:
    """Deterministic DDIM sampler (eta = 0) on the paper's schedule.

    `prediction_type`: what the denoiser predicts, "epsilon" (the paper: the noise) or
    "v_prediction" (v = alpha * eps - sigma * x0, Salimans & Ho 2022).
    """
    return DDIMScheduler(num_train_timesteps=num_train_timesteps,
                         trained_betas=_betas(num_train_timesteps), clip_sample=False,
                         set_alpha_to_one=True, timestep_spacing="trailing",
                         prediction_type=prediction_type)


def prediction_type(model) -> str:
    """What a denoiser predicts: its config's `prediction_type`, the paper's noise otherwise."""
    config = getattr(model, "config", None)
    return getattr(config, "prediction_type", "epsilon") if config is not None else "epsilon"


def noise_variance(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """(B,) integer timesteps -> (B,) noise variance 1 - alpha-bar_t: the denoiser's noise input."""
    acp = scheduler.alphas_cumprod.to(timesteps.device)
    return (1.0 - acp[timesteps.long()]).float()

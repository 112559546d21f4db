"""The identity prior: a small diffusion model over the learned 32-d identity vectors.

Paper Sec. 3: three dense layers of 512 with swish, the same cosine schedule,
sampled in 50 steps. It is trained on the rows of the embedding table that
belong to trained identities only, standardised by their mean and std, which
live here as buffers so they are saved with the weights.
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .unet import sinusoidal_embedding, zero_init


class IdentityPrior(ModelMixin, ConfigMixin):
    """eps_theta(z_t, noise_var) over standardised identity vectors (B, id_dim)."""

    @register_to_config
    def __init__(self, *, id_dim: int = 32, hidden_dim: int = 512, num_layers: int = 3,
                 noise_embedding_dim: int = 64):
        super().__init__()
        layers, ch = [], id_dim + noise_embedding_dim
        for _ in range(num_layers):
            layers += [nn.Linear(ch, hidden_dim), nn.SiLU()]
            ch = hidden_dim
        self.net = nn.Sequential(*layers, zero_init(nn.Linear(ch, id_dim)))
        self.register_buffer("mean", torch.zeros(id_dim))
        self.register_buffer("std", torch.ones(id_dim))

    def forward(self, z_t: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(noise_var, self.config.noise_embedding_dim)
        return self.net(torch.cat([z_t, emb.to(z_t.dtype)], dim=1))

    def standardise(self, v: torch.Tensor) -> torch.Tensor:
        return (v - self.mean) / self.std

    def destandardise(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

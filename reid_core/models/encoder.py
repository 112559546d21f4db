"""Img2ID: the encoder half of the U-Net plus a dense head, image -> 32-d identity (paper Sec. 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .unet import ResidualBlock


class IdentityEncoder(ModelMixin, ConfigMixin):
    """(B, 3, H, W) in [-1, 1] -> (B, id_dim) identity vectors in the generator's space.

    Levels of residual blocks with average pooling, then global average and max
    pooling (the max keeps small distinctive details such as a bag) and a
    two-layer dense head.
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (48, 96, 192, 384),
                 layers_per_block: int = 2, id_dim: int = 32, hidden_dim: int = 256,
                 norm_groups: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        ch = block_out_channels[0]
        blocks = []
        for i, width in enumerate(block_out_channels):
            for _ in range(layers_per_block):
                blocks.append(ResidualBlock(ch, width, norm_groups))
                ch = width
            if i < len(block_out_channels) - 1:
                blocks.append(nn.AvgPool2d(2))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.GroupNorm(norm_groups, ch)
        self.head = nn.Sequential(nn.Linear(2 * ch, hidden_dim), nn.SiLU(),
                                  nn.Linear(hidden_dim, id_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.blocks(self.stem(x))))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)

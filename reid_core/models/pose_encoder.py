"""The pose guider of Pose2ID (Yuan et al., CVPR 2025), adapted to a pixel-space U-Net.

Pose2ID encodes an OpenPose skeleton image with a small conv stack
(3 -> 16 -> 32 -> 64 -> 128, stride 2, SiLU) whose zero-initialised output is added
to the denoiser's input features. Our denoiser works on 64x32 pixels, not latents,
so the skeleton is drawn at `render_scale` x the model size (thin limbs survive)
and the stack strides down just that much; the last 1x1 conv maps 128 channels to
the U-Net's first width and starts at zero, so fine-tuning starts from the
identity-only generator exactly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .unet import zero_init


class PoseEncoder(ModelMixin, ConfigMixin):
    """(B, 3, s*H, s*W) skeleton in [-1, 1] -> (B, out_channels, H, W) features for the stem.

    `level_channels` (empty: the stem only, as Pose2ID) also feeds the U-Net's next coarser
    levels, as T2I-Adapter does a frozen diffusion model: the features, average-pooled to
    level r's resolution, go through a 3x3 conv and a zero-initialised 1x1 conv to
    `level_channels[r - 1]` channels, added to what enters level r. The output is then a dict
    {resolution: features}, 0 the stem.
    """

    @register_to_config
    def __init__(self, *, render_scale: int = 2, channels: tuple[int, ...] = (16, 32, 64, 128),
                 out_channels: int = 32, level_channels: tuple[int, ...] = ()):
        super().__init__()
        strides_left = int(math.log2(render_scale))
        if 2 ** strides_left != render_scale:
            raise ValueError("render_scale must be a power of 2")
        layers, ch = [], 3
        for i, width in enumerate(channels):
            stride = 2 if i >= 1 and strides_left > 0 else 1
            strides_left -= stride == 2
            layers.append(nn.Conv2d(ch, width, 3, stride=stride, padding=1))
            ch = width
        self.convs = nn.ModuleList(layers)
        self.out = zero_init(nn.Conv2d(ch, out_channels, 1))
        self.levels = nn.ModuleList(nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
                                                  zero_init(nn.Conv2d(ch, width, 1)))
                                    for width in level_channels)

    def forward(self, skeleton: torch.Tensor) -> "torch.Tensor | dict[int, torch.Tensor]":
        h = skeleton
        for conv in self.convs:
            h = F.silu(conv(h))
        if not len(self.levels):
            return self.out(h)
        return {0: self.out(h), **{r: level(F.avg_pool2d(h, 2 ** r)) for r, level in enumerate(self.levels, 1)}}

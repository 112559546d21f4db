"""The identity-conditioned denoising U-Net of Asperti et al. (2024), Sec. 3.

It is the Keras "DDIM" U-Net the paper builds on: a 1x1 stem, `layers_per_block`
residual blocks per level with average-pool down-sampling and bilinear up-sampling,
skip connections per residual block, no attention. Two conditions enter by
concatenation, broadcast over the feature map:

* the noise variance, as a 64-d sinusoidal embedding (32 log-spaced frequencies
  from 1 to 1000), at the input;
* the 32-d identity vector, at the input and again after every down-sampling.

The same class serves as Img2Noise (image -> noise) with `id_dim=0` and
`noise_embedding_dim=0`, and the identity embedding table learned jointly with
the generator lives here as `identity_embedding`, so it is saved with it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def sinusoidal_embedding(noise_var: torch.Tensor, dim: int = 64, min_freq: float = 1.0,
                         max_freq: float = 1000.0) -> torch.Tensor:
    """(B,) noise variances -> (B, dim) [sin, cos] features at log-spaced frequencies."""
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2,
                                     device=noise_var.device, dtype=torch.float32))
    angles = 2.0 * math.pi * noise_var.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ResidualBlock(nn.Module):
    """GroupNorm -> conv3x3 -> SiLU -> conv3x3, plus a (1x1-projected) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, in_ch), in_ch, affine=False)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.conv1(self.norm(x))))
        return h + self.skip(x)


def _broadcast(v: torch.Tensor | None, h: int, w: int) -> list[torch.Tensor]:
    return [] if v is None else [v[:, :, None, None].expand(-1, -1, h, w)]


class IdentityUNet(ModelMixin, ConfigMixin):
    """GEN(x_t, noise_var, identity) -> predicted noise, all images (B, C, H, W).

    Args:
        sample_size: (height, width) of the images; each must divide by 2**(levels-1).
        block_out_channels: channels per level, the last one the bottleneck.
        layers_per_block: residual blocks per level (the paper: 2).
        id_dim: identity vector size (32); 0 for an unconditioned U-Net.
        num_identities: rows of the jointly learned identity table (0: none).
        noise_embedding_dim: size of the sinusoidal noise embedding; 0 disables it.
        norm_groups: GroupNorm groups (clipped to divide each width).
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 out_channels: int = 3, block_out_channels: tuple[int, ...] = (48, 96, 192, 384),
                 layers_per_block: int = 2, id_dim: int = 32, num_identities: int = 0,
                 noise_embedding_dim: int = 64, norm_groups: int = 8):
        super().__init__()
        levels = len(block_out_channels)
        h, w = sample_size
        if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
            raise ValueError(f"sample_size {sample_size} must divide by 2**{levels - 1}")
        self.identity_embedding = nn.Embedding(num_identities, id_dim) if num_identities else None
        if self.identity_embedding is not None:
            nn.init.uniform_(self.identity_embedding.weight, -0.05, 0.05)
        c0 = block_out_channels[0]
        self.stem = nn.Conv2d(in_channels, c0, 1)
        ch = c0 + noise_embedding_dim + id_dim
        self.down = nn.ModuleList()
        skip_chs = []
        for width in block_out_channels[:-1]:
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(ResidualBlock(ch, width, norm_groups))
                ch = width
                skip_chs.append(ch)
            self.down.append(blocks)
            ch += id_dim  # identity re-enters after each down-sampling
        self.mid = nn.ModuleList()
        for _ in range(layers_per_block):
            self.mid.append(ResidualBlock(ch, block_out_channels[-1], norm_groups))
            ch = block_out_channels[-1]
        self.up = nn.ModuleList()
        for width in reversed(block_out_channels[:-1]):
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(ResidualBlock(ch + skip_chs.pop(), width, norm_groups))
                ch = width
            self.up.append(blocks)
        self.head = nn.Conv2d(ch, out_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor | None = None,
                identity: torch.Tensor | None = None,
                extra_features: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,3,H,W) in about [-1, 1]; noise_var (B,) in [0, 1]; identity (B, id_dim).

        `extra_features`, when given, is added to the stem output (B, c0, H, W): the
        entry point of the pose encoder of the pose-conditioned variant.
        """
        cfg = self.config
        b, _, h, w = x.shape
        if cfg.id_dim and (identity is None or identity.shape != (b, cfg.id_dim)):
            raise ValueError(f"identity must have shape ({b}, {cfg.id_dim})")
        ident = identity.to(x.dtype) if cfg.id_dim else None
        feats = self.stem(x)
        if extra_features is not None:
            feats = feats + extra_features
        parts = [feats]
        if cfg.noise_embedding_dim:
            emb = sinusoidal_embedding(noise_var, cfg.noise_embedding_dim).to(x.dtype)
            parts += _broadcast(emb, h, w)
        parts += _broadcast(ident, h, w)
        x = torch.cat(parts, dim=1)
        skips = []
        for blocks in self.down:
            for block in blocks:
                x = block(x)
                skips.append(x)
            x = F.avg_pool2d(x, 2)
            x = torch.cat([x, *_broadcast(ident, x.shape[2], x.shape[3])], dim=1)
        for block in self.mid:
            x = block(x)
        for blocks in self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

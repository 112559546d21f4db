"""Img2ID: image -> identity vector, the re-ID feature (paper Sec. 4).

Two backbones, chosen by `backbone`:

* ``"unet"``: the paper's encoder half of the U-Net (residual blocks, average pooling)
  with a dense head, trained from scratch;
* ``"mobilenetv2"``: MobileNetV2 x1.0 with last stride 1, started from ImageNet weights
  (see `reid_core.pretrained`), BNNeck-style batch norm on the pooled feature, then a
  linear map to the identity space.

With `normalize=True` the identity lies on the unit sphere, where the table rows of
the generator live too: retrieval by Euclidean distance is then retrieval by cosine.
Images of any size are resized to `sample_size` first, so a 64x32 generated image and
a 128x64 crop enter the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from .mobilenet import MOBILENET_V2_CHANNELS, MobileNetV2Features
from .unet import ResidualBlock

BACKBONES = ("unet", "mobilenetv2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IdentityEncoder(ModelMixin, ConfigMixin):
    """(B, 3, H, W) in [-1, 1] -> (B, id_dim) identity vectors in the generator's space.

    `pooled(x)` gives the backbone's pooled feature (B, feature_dim), on which the
    triplet loss acts; `forward(x)` the identity vector.
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 backbone: str = "unet", block_out_channels: tuple[int, ...] = (48, 96, 192, 384),
                 layers_per_block: int = 2, id_dim: int = 32, hidden_dim: int = 256,
                 norm_groups: int = 8, last_stride: int = 1, normalize: bool = False):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if backbone == "mobilenetv2":
            self.trunk = MobileNetV2Features(last_stride)
            self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN)[None, :, None, None])
            self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD)[None, :, None, None])
            ch = MOBILENET_V2_CHANNELS
            self.neck = nn.BatchNorm1d(ch)
            self.neck.bias.requires_grad_(False)  # BNNeck: no shift away from the origin
            self.head = nn.Linear(ch, id_dim, bias=False)
        else:
            layers = [nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)]
            ch = block_out_channels[0]
            for i, width in enumerate(block_out_channels):
                for _ in range(layers_per_block):
                    layers.append(ResidualBlock(ch, width, norm_groups))
                    ch = width
                if i < len(block_out_channels) - 1:
                    layers.append(nn.AvgPool2d(2))
            layers += [nn.GroupNorm(norm_groups, ch), nn.SiLU()]
            self.trunk = nn.Sequential(*layers)
            ch = 2 * ch  # average and max pooling (the max keeps small details such as a bag)
            self.neck = nn.Identity()
            self.head = nn.Sequential(nn.Linear(ch, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, id_dim))
        self.feature_dim = ch

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.config.sample_size)
        if tuple(x.shape[-2:]) != size:
            # the antialiasing filter only matters when shrinking; growing a 64x32 picture, plain
            # bilinear gives the same values (to 1e-7), and the antialiased gradient took half
            # the time of a forward and backward pass of MobileNetV2 (steering, `folded`)
            shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, feature_dim) pooled backbone feature."""
        x = self._resize(x)
        if self.config.backbone == "mobilenetv2":
            x = ((x + 1) / 2 - self.pixel_mean) / self.pixel_std
            return self.trunk(x).mean(dim=(2, 3))
        h = self.trunk(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def identity(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) pooled feature -> (B, id_dim) identity vector."""
        f = self.head(self.neck(pooled))
        return F.normalize(f, dim=1) if self.config.normalize else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.identity(self.pooled(x))

    def folded(self) -> "IdentityEncoder":
        """A frozen copy for reading many pictures at inference: every convolution followed by
        a batch norm becomes one convolution (the norm's running statistics folded in, torch's
        `fuse_conv_bn_eval`). The same outputs to float rounding; a forward and backward pass
        on a 64x32 picture costs 30% less (38 -> 26 ms, one thread), which is what steering
        generation by Img2ID (`diffusion.identity_steer`) pays on every steered step."""
        import copy

        from torch.nn.utils.fusion import fuse_conv_bn_eval

        def fold_sequence(seq: nn.Sequential) -> nn.Sequential:
            out: list[nn.Module] = []
            for m in seq:
                m = fold_sequence(m) if isinstance(m, nn.Sequential) else fold(m)
                if isinstance(m, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
                    out[-1] = fuse_conv_bn_eval(out[-1], m)
                else:
                    out.append(m)
            return nn.Sequential(*out)

        def fold(module: nn.Module) -> nn.Module:
            for name, child in module.named_children():
                setattr(module, name, fold_sequence(child) if isinstance(child, nn.Sequential) else fold(child))
            return module

        return fold(copy.deepcopy(self).eval()).requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time identity: the image's and its mirror image's averaged (as BoT does),
        back on the unit sphere when identities live there. (B, 3, H, W) -> (B, id_dim)."""
        f = self(torch.cat([x, x.flip(3)]))
        f = f[:len(x)] + f[len(x):]
        return F.normalize(f, dim=1) if self.config.normalize else f / 2

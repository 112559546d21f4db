"""Presets: plain dataclasses of values, saved as `preset.json` beside the weights.

`tiny` trains end-to-end in seconds (tests); `cpu` is the best we measured to train
in about two hours on 2 CPU cores; `paper` is the paper's 64x32 model (9.86 M
generator parameters, as the paper's 9.8 M); `hires` is 128x64 with one more level.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Preset:
    name: str = "paper"
    image_size: tuple[int, int] = (64, 32)          # (H, W)
    id_dim: int = 32
    seed: int = 0
    sample_steps: int = 10                           # DDIM steps of the generator
    # generator (paper: channels [48, 96, 192, 384], 2 blocks per level, L1 on noise)
    channels: tuple[int, ...] = (48, 96, 192, 384)
    layers_per_block: int = 2
    gen_steps: int = 200_000
    gen_batch: int = 16
    gen_lr: float = 1e-4
    gen_warmup: int = 500
    emb_pull: float = 0.5                            # weight of mean(emb^2): the weak pull to the origin
    ema_decay: float = 0.999
    # identity prior (3 dense layers of 512, 50 sampling steps)
    prior_hidden: int = 512
    prior_layers: int = 3
    prior_steps: int = 20_000
    prior_batch: int = 256
    prior_lr: float = 1e-3
    prior_sample_steps: int = 50
    # Img2ID
    enc_channels: tuple[int, ...] = (48, 96, 192, 384)
    enc_layers_per_block: int = 2
    img2id_steps: int = 30_000
    img2id_batch: int = 64
    img2id_lr: float = 3e-4
    synth_images: int = 8192                         # generated images (prior identities) in the bank
    synth_fraction: float = 0.25                     # share of each Img2ID batch taken from the bank
    proto_weight: float = 1.0                        # prototype cross-entropy on real images
    proto_temperature: float = 0.1                   # relative to the table's mean squared row distance
    # Img2Noise
    noise_channels: tuple[int, ...] = (48, 96, 192, 384)
    noise_layers_per_block: int = 2
    img2noise_steps: int = 20_000
    img2noise_batch: int = 32
    img2noise_lr: float = 3e-4
    img2noise_real_images: int = 0                   # real images given DDIM-inverted targets (0: all)
    img2noise_recon_weight: float = 1.0              # loss through the sampling chain (paper Sec. 4)
    img2noise_recon_every: int = 1                   # apply it every k-th step (it costs `sample_steps` passes)
    # pose-conditioned generator (Pose2ID's pose guider), fine-tuned from the generator
    pose_steps: int = 20_000
    pose_batch: int = 16
    pose_lr: float = 1e-4
    pose_dropout: float = 0.15                       # share of batches' samples trained without a pose
    pose_render_scale: int = 2                       # skeletons drawn at this multiple of the image size
    pose_library_size: int = 8
    # conventional baseline (BoT-style), trained on the same images
    baseline_widths: tuple[int, ...] = (32, 64, 128, 256)
    baseline_steps: int = 8_000
    checkpoint_every: int = 500

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(names)
        if unknown:
            raise ValueError(f"unknown preset fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def load(cls, path) -> "Preset":
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", image_size=(16, 8), channels=(8, 16), layers_per_block=1,
        gen_steps=120, gen_batch=32, gen_lr=2e-3, gen_warmup=10, ema_decay=0.9,
        prior_hidden=32, prior_layers=2, prior_steps=100, prior_batch=64, prior_lr=3e-3,
        prior_sample_steps=10, enc_channels=(8, 16), enc_layers_per_block=1,
        img2id_steps=80, img2id_batch=32, img2id_lr=3e-3, synth_images=64,
        noise_channels=(8, 16), noise_layers_per_block=1, img2noise_steps=40,
        img2noise_batch=16, img2noise_lr=3e-3, img2noise_recon_every=4,
        pose_steps=40, pose_batch=16, pose_lr=2e-3,
        baseline_widths=(8, 16), baseline_steps=40, checkpoint_every=50),
    "cpu": Preset(
        name="cpu", channels=(32, 64, 128, 256), layers_per_block=1,
        gen_steps=4_000, gen_batch=32, gen_lr=5e-4, gen_warmup=200, ema_decay=0.998,
        prior_steps=4_000, enc_channels=(32, 64, 128, 256), enc_layers_per_block=1,
        img2id_steps=2_500, img2id_batch=64, img2id_lr=5e-4, synth_images=2048,
        noise_channels=(32, 64, 128), noise_layers_per_block=1, img2noise_steps=1_000,
        img2noise_batch=32, img2noise_lr=5e-4, img2noise_recon_weight=0.0, img2noise_real_images=1024,
        pose_steps=800, pose_batch=32, pose_lr=3e-4,
        baseline_steps=2_000, checkpoint_every=250),
    "paper": Preset(name="paper"),
    "hires": Preset(
        name="hires", image_size=(128, 64), channels=(48, 96, 192, 384, 384),
        enc_channels=(48, 96, 192, 384, 384), noise_channels=(48, 96, 192, 384, 384)),
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

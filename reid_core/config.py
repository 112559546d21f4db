"""Presets: plain dataclasses of values, saved as `preset.json` beside the weights.

Two recipes train the same components:

* ``joint`` (the default, `cpu` preset): Img2ID (MobileNetV2 from ImageNet, 128x64
  crops) learns the identity table as its class prototypes; then the generator
  (FiLM-conditioned U-Net, 64x32) trains on DCAC's condition c = softmax(logits/tau) . table,
  its loss flowing back into the table and Img2ID's head (`reid_core.training.joint`).
* ``paper`` (Asperti et al.): the generator learns the table from random rows, then
  Img2ID regresses it (`reid_core.training.generator`, `.img2id`).

`tiny` trains every stage in seconds (tests); `paper_cpu` is the paper's recipe at the
`cpu` preset's sizes and minutes (the ablation row); `paper` is the paper's 64x32 model
(9.86 M generator parameters) for a GPU.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

RECON_LOSSES = ("l1", "mse", "psnr")  # Img2Noise's loss on the image rebuilt through the chain
RECIPES = ("joint", "paper")


@dataclass
class GeneratorConfig:
    """The identity-conditioned U-Net and how it trains (paper: channels [48, 96, 192, 384],
    2 blocks per level, L1 on the noise)."""
    channels: tuple[int, ...] = (48, 96, 192, 384)
    layers_per_block: int = 2
    mid_layers: int = 0                              # blocks at the generator's bottleneck (0: layers_per_block)
    up_extra_levels: int = 0                         # the finest n levels get one more block on the way up
    conditioning: str = "concat"                     # "concat" (paper) or "film" (every block)
    cond_dim: int = 128                              # FiLM embedding width
    gen_steps: int = 200_000
    gen_batch: int = 16
    gen_K: int = 0                                   # images per identity in a batch (0: uniform draws)
    gen_lr: float = 1e-4
    gen_warmup: int = 500
    gen_loss: str = "l1"                             # "l1" (paper) or "mse" on the prediction
    prediction_type: str = "epsilon"                 # "epsilon" (paper: the noise) or "v_prediction"
    identity_map_levels: int = 0                     # FiLM + spatial maps drawn by the identity at the coarsest levels
    identity_map_channels: int = 16
    snr_gamma: float = 0.0                           # Min-SNR-gamma loss weights (0: the paper's uniform)
    identity_dropout: float = 0.0                    # share of samples trained with the null identity (CFG)
    table_lr: float = 0.0                            # identity table's own Adam rate (0: gen_lr, as the paper)
    table_init_std: float = 0.0                      # N(0, std^2) rows (0: the paper's uniform +-0.05)
    emb_pull: float = 0.5                            # weight of mean(emb^2): the weak pull to the origin
    ema_decay: float = 0.999


@dataclass
class JointConfig:
    """The joint recipe (DCAC): the generator's condition and what flows back."""
    dcac_tau: float = 0.6                            # c = softmax(logits / tau) . table
    cond_from_image: float = 0.5                     # share of samples conditioned on Img2ID(x) itself
    joint_head_lr: float = 1e-4                      # Img2ID head (and the table) during the generator phase
    id_loss_weight: float = 0.0                      # CE of the frozen Img2ID on the predicted clean image
    id_loss_max_t: int = 700                         # ... for samples noised below this timestep
    id_loss_blur: float = 0.0                        # ... seen through a Gaussian blur of this sigma (pixels)
    # rejection-sampling fine-tuning: so many pictures the --init weights' engine draws of the training
    # rows as Generate shows them (guidance, Img2ID's steer, best of K by the photos; seeds 10,000+), of
    # which a share `gen_bank_share` of each generator batch is made, under their rows (0: none)
    gen_bank: int = 0
    gen_bank_share: float = 0.5


@dataclass
class DistillConfig:
    """Guidance distillation (Meng et al. 2023, stage 1): the generator learns to take the
    guidance scale w as an input and predict the guided output in one pass, from a frozen copy
    of itself guided with two. w is drawn from {1, guidance_scale, U[1, distill_max_scale]}.
    Measured on the shipped generator (docs/BENCHMARKS.md): one picture 84-93 ms instead of
    117-128, but judge top-1 66.9% instead of 70.3% after 3,600 steps: off in `cpu`."""
    distill_steps: int = 0                           # 0: no distillation (guided steps cost two passes)
    distill_batch: int = 32
    distill_lr: float = 2e-4
    distill_warmup: int = 50
    distill_max_scale: float = 6.0
    distill_bank: int = 0                            # sampling chains half of each batch reads
    # whose chains: "teacher" (its guided chains, a third of them plain) or "engine" (what the --init
    # weights' engine keeps when it draws the training rows: guidance, Img2ID's steer, best of K);
    # with "engine" the noised real images teach scale 1 only (the plain chain Invert and Img2Noise read)
    distill_bank_sampler: str = "teacher"


@dataclass
class PriorConfig:
    """The identity prior: a small diffusion model over the trained rows (3 dense layers of 512)."""
    prior_hidden: int = 512
    prior_layers: int = 3
    prior_steps: int = 20_000
    prior_batch: int = 256
    prior_lr: float = 1e-3
    prior_warmup: int = 100                          # warm-up steps, at most a tenth of the run
    prior_sample_steps: int = 50


@dataclass
class Img2IDConfig:
    """Img2ID: image -> identity (the re-ID feature)."""
    img2id_backbone: str = "unet"                    # "unet" (paper) or "mobilenetv2" (ImageNet start)
    img2id_size: tuple[int, int] = (64, 32)          # its input; may be the stored 128x64 crops
    enc_channels: tuple[int, ...] = (48, 96, 192, 384)
    enc_layers_per_block: int = 2
    img2id_steps: int = 30_000
    img2id_batch: int = 64                           # P x K images
    img2id_K: int = 4                                # images per identity in a batch
    img2id_lr: float = 3e-4
    img2id_warmup_fraction: float = 0.1              # BoT: linear warm-up over this share, x0.1 at half-way
    img2id_weight_decay: float = 5e-4
    img2id_erase: float = 0.5                        # random-erasing probability
    proto_scale: float = 20.0                        # cosine-logit scale of the prototype CE
    triplet_margin: float = 0.3
    synth_images: int = 8192                         # paper recipe: generated images (prior identities) in the bank
    synth_fraction: float = 0.25                     # paper recipe: share of each Img2ID batch from the bank
    proto_weight: float = 1.0                        # paper recipe: prototype CE beside the regression


@dataclass
class Img2NoiseConfig:
    """Img2Noise: image (+ its identity) -> the noise that rebuilds it."""
    noise_channels: tuple[int, ...] = (48, 96, 192, 384)
    noise_layers_per_block: int = 2
    noise_refine_channels: int = 0  # Img2Noise's full-resolution correction head (0: none)
    noise_refine_layers: int = 2
    noise_id_hidden: int = 0   # > 0: Img2Noise reads the image's identity through an MLP this wide (0: the image only)
    img2noise_steps: int = 20_000
    img2noise_batch: int = 32
    img2noise_lr: float = 3e-4
    img2noise_warmup: int = 100                      # warm-up steps, at most a fifth of the run
    img2noise_real_images: int = 0                   # real images given DDIM-inverted targets (0: all)
    img2noise_recon_weight: float = 1.0              # loss through the sampling chain (paper Sec. 4)
    img2noise_recon_every: int = 1                   # apply it every k-th step (it costs `sample_steps` passes)
    img2noise_recon_all_real: bool = False           # the chain loss (it needs no target) reads every real image
    img2noise_recon_loss: str = "l1"                 # "l1", "mse", or "psnr" (minus each image's PSNR / 10, averaged) on the rebuilt image
    img2noise_flip: float = 0.0                      # share of real images seen mirrored (chain loss only)


@dataclass
class PoseConfig:
    """The pose-conditioned generator: Pose2ID's pose guider, with the generator fine-tuned beside
    it (Pose2ID) or frozen (`pose_tune_generator` false: one network serves plain and posed
    pictures; the guider then feeds `pose_levels` levels, as T2I-Adapter)."""
    pose_tune_generator: bool = True                 # False: the generator stays frozen, only the guider learns
    pose_levels: int = 1                             # U-Net levels the guider feeds: 1 the stem (Pose2ID), more adds coarser ones
    pose_steps: int = 20_000
    pose_batch: int = 16
    pose_lr: float = 1e-4
    pose_warmup: int = 200                           # warm-up steps, at most a fifth of the run
    pose_dropout: float = 0.15                       # share of batches' samples trained without a pose
    pose_render_scale: int = 2                       # skeletons drawn at this multiple of the image size
    pose_library_size: int = 8


@dataclass
class BaselineConfig:
    """The conventional baseline (BoT-style) trained on the same images; the judge of generated identities."""
    baseline_widths: tuple[int, ...] = (32, 64, 128, 256)
    baseline_steps: int = 8_000
    baseline_lr: float = 3.5e-4
    baseline_warmup_fraction: float = 0.1            # BoT: linear warm-up over this share, x0.1 at half-way
    baseline_weight_decay: float = 5e-4
    baseline_P: int = 16                             # identities per batch (P x K)
    baseline_K: int = 4                              # images per identity
    baseline_stem_stride: int = 2                    # 1 keeps full resolution into the first stage (4x the compute)
    baseline_pad: int = 4                            # pad-and-crop pixels
    baseline_erase: float = 0.0


@dataclass
class UncertaintyConfig:
    """HAVANA's variational identity head over Img2ID's frozen pooled feature (digest §4): its
    sigma says how sure an identity is. `uncertainty_variational=False` trains the same head
    plainly (CE + batch-hard triplet on mu), the comparison it must not fall behind."""
    uncertainty_steps: int = 3_000
    uncertainty_lr: float = 1e-3
    uncertainty_hidden: int = 128                    # shared hidden layer of f_mu and f_sigma
    uncertainty_dim: int = 64                        # z's dimensions
    uncertainty_variational: bool = True
    uncertainty_margin: float = 0.5                  # JS triplet margin (HAVANA: 0.5)
    uncertainty_alpha: float = 0.2                   # weight of the ELBO terms (HAVANA: 0.2)
    uncertainty_beta: float = 1.0                    # weight of KL inside the ELBO (HAVANA: 1.0)
    uncertainty_sampled_ce: bool = False             # CE on a sample z ~ N(mu, sigma^2) (DUL) instead of on mu


COMPONENTS = (GeneratorConfig, JointConfig, DistillConfig, PriorConfig, Img2IDConfig, Img2NoiseConfig, PoseConfig, BaselineConfig,
              UncertaintyConfig)


@dataclass
class Preset(UncertaintyConfig, BaselineConfig, PoseConfig, Img2NoiseConfig, Img2IDConfig, PriorConfig, DistillConfig, JointConfig, GeneratorConfig):
    """A recipe: what every component shares, and each component's own config (the classes
    above, one per component, merged so that a preset is one flat file and every field one
    `--set FIELD=VALUE`). `preset.component(PriorConfig)` is one component's part alone."""
    name: str = "paper"
    recipe: str = "paper"                            # "joint" or "paper", see above
    image_size: tuple[int, int] = (64, 32)          # (H, W) of the generator
    id_dim: int = 32
    seed: int = 0
    sample_steps: int = 10                           # DDIM steps of the generator
    guidance_scale: float = 1.0                      # classifier-free guidance at sampling (1: off)
    guidance_steps: int = 0                          # ... up to this DDIM step (0: the last)
    guidance_start: int = 0                          # ... but not on the first so many (the noisiest)
    guidance_every: int = 1                          # its direction computed every k-th guided step, reused between
    identity_steer: float = 0.0                      # Img2ID guidance on the predicted image (RMS shift; 0: off)
    identity_steer_window: tuple[int, int] = (399, 799)  # ... on the steps whose timestep lies here
    identity_steer_blur: float = 1.0                 # ... its gradient low-passed by a Gaussian of so many pixels
    identity_candidates: int = 1                     # seeded pictures drawn this many times, Img2ID keeps the best
    known_identity_cos: float = 0.0                  # a photo this close (cosine) to a row is drawn as that training person (0: never)
    checkpoint_every: int = 500
    snapshot_every: int = 0                          # weights kept for the time-to-quality curve (0: none)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.recipe == "joint" and self.conditioning != "film":
            raise ValueError("the joint recipe conditions by FiLM (its condition is a mixture of rows)")
        if self.distill_bank_sampler not in ("teacher", "engine"):
            raise ValueError(f"distill_bank_sampler must be 'teacher' or 'engine', not {self.distill_bank_sampler!r}")
        if self.gen_loss not in ("l1", "mse"):
            raise ValueError(f"gen_loss must be 'l1' or 'mse', got {self.gen_loss!r}")
        if self.img2noise_recon_loss not in RECON_LOSSES:
            raise ValueError(f"img2noise_recon_loss must be one of {RECON_LOSSES}, got {self.img2noise_recon_loss!r}")
        if not 0.0 <= self.img2noise_flip <= 1.0:
            raise ValueError(f"img2noise_flip is a share of the real photos, got {self.img2noise_flip}")
        if self.guidance_every < 1:
            raise ValueError(f"guidance_every counts guided steps, at least 1, got {self.guidance_every}")
        if self.identity_candidates < 1:
            raise ValueError(f"identity_candidates counts pictures drawn per picture shown, at least 1, "
                             f"got {self.identity_candidates}")
        if not 0.0 <= self.known_identity_cos <= 1.0:
            raise ValueError(f"known_identity_cos is a cosine in 0..1 (0: never), got {self.known_identity_cos}")
        if self.identity_steer < 0 or self.identity_steer_blur < 0:
            raise ValueError("identity_steer and identity_steer_blur cannot be negative")
        if len(self.identity_steer_window) != 2 or self.identity_steer_window[0] > self.identity_steer_window[1]:
            raise ValueError(f"identity_steer_window is (lowest, highest) timestep, got {self.identity_steer_window}")
        if not 0.0 <= self.gen_bank_share < 1.0:
            raise ValueError(f"gen_bank_share is a share of each generator batch, in [0, 1), got {self.gen_bank_share}")
        if self.img2noise_flip and not self.img2noise_recon_weight:
            raise ValueError("img2noise_flip needs the chain loss (img2noise_recon_weight > 0): "
                             "a mirrored photo has no target noise")

    def component(self, cls):
        """One component's config (a class of COMPONENTS) with this preset's values."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    @property
    def uses_guidance(self) -> bool:
        return self.conditioning == "film" and self.identity_dropout > 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path) -> None:
        from .io import atomic_write_text
        atomic_write_text(path, self.to_json())

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


_TINY = dict(
    image_size=(16, 8), channels=(16, 32), layers_per_block=1, cond_dim=32,
    gen_steps=300, gen_batch=32, gen_lr=3e-3, gen_warmup=10, ema_decay=0.9,
    prior_hidden=32, prior_layers=2, prior_steps=100, prior_batch=64, prior_lr=3e-3,
    prior_sample_steps=10, img2id_size=(16, 8), enc_channels=(8, 16), enc_layers_per_block=1,
    img2id_steps=80, img2id_batch=32, img2id_lr=3e-3, synth_images=64,
    noise_channels=(8, 16), noise_layers_per_block=1, img2noise_steps=40,
    img2noise_batch=16, img2noise_lr=3e-3, img2noise_recon_every=4,
    pose_steps=40, pose_batch=16, pose_lr=2e-3,
    baseline_widths=(8, 16), baseline_steps=40, baseline_lr=1e-2, baseline_pad=1, checkpoint_every=50,
    uncertainty_steps=60, uncertainty_hidden=32, uncertainty_dim=16, uncertainty_lr=3e-3)

# What the 2-core CPU trains in its budget (docs/BENCHMARKS.md: the ablation and the curve).
_CPU = dict(
    channels=(32, 64, 128, 256), layers_per_block=1, ema_decay=0.995,
    prior_steps=4_000, noise_channels=(32, 64, 128), noise_layers_per_block=1, img2noise_steps=1_000,
    img2noise_batch=32, img2noise_lr=5e-4, img2noise_recon_weight=0.0, img2noise_real_images=1024,
    pose_tune_generator=False, pose_levels=4, pose_steps=1_000, pose_batch=32, pose_lr=1e-3,
    baseline_steps=4_700, baseline_stem_stride=1, checkpoint_every=100)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(name="tiny", recipe="joint", conditioning="film", gen_K=4, identity_dropout=0.1,
                   table_lr=1e-2, joint_head_lr=1e-3, img2id_erase=0.0, **_TINY),
    "tiny_paper": Preset(name="tiny_paper", **_TINY),
    "cpu": Preset(
        name="cpu", recipe="joint", id_dim=256, conditioning="film", gen_steps=3_000, gen_batch=32, gen_K=4,
        gen_lr=1e-3, gen_warmup=100, prediction_type="v_prediction", identity_map_levels=1,
        identity_map_channels=16, identity_dropout=0.1, guidance_scale=3.0, guidance_steps=10, guidance_start=2,
        identity_steer=0.3, identity_candidates=6, known_identity_cos=0.4, table_lr=1e-3,
        img2id_backbone="mobilenetv2", img2id_size=(128, 64), img2id_steps=1_500, img2id_lr=3.5e-4,
        snapshot_every=500, **_CPU),
    "paper_cpu": Preset(
        name="paper_cpu", gen_steps=3_000, gen_batch=32, gen_lr=5e-4, gen_warmup=200,
        img2id_backbone="mobilenetv2", img2id_size=(128, 64), img2id_steps=1_500, img2id_lr=3.5e-4,
        synth_images=2048, **_CPU),
    "paper": Preset(name="paper"),
    "hires": Preset(
        name="hires", image_size=(128, 64), img2id_size=(128, 64), channels=(48, 96, 192, 384, 384),
        enc_channels=(48, 96, 192, 384, 384), noise_channels=(48, 96, 192, 384, 384)),
}


def get_preset(name: str, **overrides) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

"""The identity-conditioned denoising U-Net of Asperti et al. (2024), Sec. 3, and the
conditioning that makes it obey the identity.

It is the Keras "DDIM" U-Net the paper builds on: a 1x1 stem, `layers_per_block`
residual blocks per level with average-pool down-sampling and bilinear up-sampling,
skip connections per residual block, no attention. Two ways for the conditions
(noise variance, identity) to enter, chosen by `conditioning`:

* ``"concat"`` (the paper): the 64-d sinusoidal noise embedding and the 32-d identity
  are broadcast and concatenated at the input, the identity again after every
  down-sampling. Measured on cuhk03-pair1 (docs/BENCHMARKS.md), the first GroupNorm
  standardises those constant channels and in CPU minutes the network learns to ignore them.
* ``"film"`` (class-conditional diffusion, Dhariwal & Nichol's AdaGN): noise level and
  identity are mapped by small MLPs to one embedding that scales and shifts the
  normalised features of *every* residual block, so identity acts everywhere from
  the first step. A learned null identity takes the place of dropped identities
  (classifier-free guidance).

The identity table learned with the generator (one row per training identity) lives
here as `identity_embedding`, so it is saved with it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

CONDITIONINGS = ("concat", "film")


def zero_init(layer: nn.Module) -> nn.Module:
    """`layer` with its weight and bias at zero: a part whose output starts as nothing, so it
    can join a trained network (`--init`) without changing what that network computes."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sinusoidal_embedding(noise_var: torch.Tensor, dim: int = 64, min_freq: float = 1.0,
                         max_freq: float = 1000.0) -> torch.Tensor:
    """(B,) noise variances -> (B, dim) [sin, cos] features at log-spaced frequencies."""
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), dim // 2,
                                     device=noise_var.device, dtype=torch.float32))
    angles = 2.0 * math.pi * noise_var.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


GUIDANCE_RANGE = 8.0  # guidance scales 1..1 + GUIDANCE_RANGE map onto the embedding's [0, 1]


def map_features(fn, feats):
    """`fn` applied to a guider's features: one stem tensor, or {resolution: tensor} (0 the stem)."""
    return {r: fn(v) for r, v in feats.items()} if isinstance(feats, dict) else fn(feats)


def guidance_code(w: torch.Tensor) -> torch.Tensor:
    """A guidance scale w (B,) as the [0, 1] input of the sinusoidal embedding (0 at w = 1)."""
    return ((w.float() - 1.0) / GUIDANCE_RANGE).clamp(0.0, 1.0)


class ResidualBlock(nn.Module):
    """GroupNorm -> conv3x3 -> SiLU -> conv3x3, plus a (1x1-projected) shortcut.

    With `cond_dim > 0` a second GroupNorm after the first conv is scaled and shifted
    by the condition embedding (AdaGN): h = norm(h) * (1 + scale) + shift.
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int, cond_dim: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(groups, in_ch), in_ch, affine=False)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        if cond_dim:
            self.cond_norm = nn.GroupNorm(math.gcd(groups, out_ch), out_ch, affine=False)
            self.film = nn.Linear(cond_dim, 2 * out_ch)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm(x))
        if cond is not None:
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
            h = self.cond_norm(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


def _broadcast(v: torch.Tensor | None, h: int, w: int) -> list[torch.Tensor]:
    return [] if v is None else [v[:, :, None, None].expand(-1, -1, h, w)]


class UNetBody(nn.Module):
    """The paper's U-Net without its conditions: 1x1 stem, residual blocks with average-pool
    down-sampling and bilinear up-sampling, a skip per block, a zero-initialised 1x1 head.

    `input_extra` constant channels join the stem output and `level_extra` join again after
    every down-sampling (the paper's concatenated conditions); `cond_dim` > 0 gives every
    block a FiLM input. `mid_layers` > `layers_per_block` deepens the bottleneck only, where a
    block costs parameters but few operations (8x4 positions at 64x32). `up_extra_levels` n
    gives the n finest levels one more block on the way up, after the skip is merged: capacity
    where the details are drawn, at the price of time per picture. Both kinds of added block
    start as the identity (their last conv at zero), so they can join a trained network.
    """

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_groups: int, cond_dim: int = 0,
                 input_extra: int = 0, level_extra: int = 0, mid_layers: int = 0, up_extra_levels: int = 0):
        super().__init__()
        c0 = block_out_channels[0]
        self.stem = nn.Conv2d(in_channels, c0, 1)
        ch = c0 + input_extra
        self.down = nn.ModuleList()
        skip_chs = []
        for width in block_out_channels[:-1]:
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(ResidualBlock(ch, width, norm_groups, cond_dim))
                ch = width
                skip_chs.append(ch)
            self.down.append(blocks)
            ch += level_extra
        self.mid = nn.ModuleList()
        for i in range(max(mid_layers, layers_per_block)):
            block = ResidualBlock(ch, block_out_channels[-1], norm_groups, cond_dim)
            if i >= layers_per_block:
                # a bottleneck block beyond the levels' count starts as the identity (its last
                # conv at zero), so it can be added to a trained network with `--init`
                zero_init(block.conv2)
            self.mid.append(block)
            ch = block_out_channels[-1]
        self.up = nn.ModuleList()
        self.up_extra = nn.ModuleList()
        finer = len(block_out_channels) - 1
        for width in reversed(block_out_channels[:-1]):
            blocks = nn.ModuleList()
            for _ in range(layers_per_block):
                blocks.append(ResidualBlock(ch + skip_chs.pop(), width, norm_groups, cond_dim))
                ch = width
            self.up.append(blocks)
            finer -= 1  # this level's resolution index (0: full)
            extra = nn.ModuleList()
            if finer < up_extra_levels:
                extra.append(ResidualBlock(width, width, norm_groups, cond_dim))
                zero_init(extra[0].conv2)
            self.up_extra.append(extra)
        self.head = zero_init(nn.Conv2d(ch, out_channels, 1))

    def forward(self, feats: torch.Tensor, cond: torch.Tensor | None = None,
                input_extra: list[torch.Tensor] = (), level_extra: torch.Tensor | None = None,
                maps: dict | None = None) -> torch.Tensor:
        """feats: stem output (B, c0, H, W); cond (B, cond_dim) for FiLM; `input_extra` maps to
        concatenate after the stem; `level_extra` (B, D) vector broadcast after each down-sampling;
        `maps` {resolution r: map} added to the features entering level r (the middle at the last)."""
        maps = maps or {}
        x = torch.cat([feats, *input_extra], dim=1) if input_extra else feats
        skips = []
        for r, blocks in enumerate(self.down):
            if r in maps:
                x = x + maps[r]
            for block in blocks:
                x = block(x, cond)
                skips.append(x)
            x = F.avg_pool2d(x, 2)
            if level_extra is not None:
                x = torch.cat([x, *_broadcast(level_extra, x.shape[2], x.shape[3])], dim=1)
        if len(self.down) in maps:
            x = x + maps[len(self.down)]
        for block in self.mid:
            x = block(x, cond)
        for blocks, extra in zip(self.up, self.up_extra):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            for block in blocks:
                x = block(torch.cat([x, skips.pop()], dim=1), cond)
            for block in extra:
                x = block(x, cond)
        return self.head(x)


def _check_size(sample_size, levels: int) -> None:
    h, w = sample_size
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
        raise ValueError(f"sample_size {tuple(sample_size)} must divide by 2**{levels - 1}")


class IdentityUNet(ModelMixin, ConfigMixin):
    """GEN(x_t, noise_var, identity) -> predicted noise, all images (B, C, H, W).

    Args:
        sample_size: (height, width) of the images; each must divide by 2**(levels-1).
        block_out_channels: channels per level, the last one the bottleneck.
        layers_per_block: residual blocks per level (the paper: 2).
        mid_layers: residual blocks at the bottleneck when more than `layers_per_block` (0: as
            many); the extra ones start as the identity.
        up_extra_levels: the finest this many levels get one more residual block on the way
            up (starting as the identity): capacity where details are drawn.
        id_dim: identity vector size (32).
        num_identities: rows of the jointly learned identity table (0: none).
        noise_embedding_dim: size of the sinusoidal noise embedding.
        norm_groups: GroupNorm groups (clipped to divide each width).
        conditioning: "concat" (the paper) or "film" (every block modulated).
        cond_dim: width of the FiLM condition embedding.
        table_init_std: std of the table's initial rows (0: the paper's uniform +-0.05).
        normalize_table: the generator reads the table's rows scaled to unit length (the
            joint recipe, where rows are Img2ID's cosine prototypes).
        identity_scale: FiLM multiplies the identity by this before its MLP; sqrt(id_dim) gives
            unit-length identities unit variance per dimension, as strong as the noise level's.
        identity_map_levels: FiLM only: at this many of the coarsest levels (the bottleneck
            first) the identity also draws a spatial map, `identity_map_channels` deep, added to
            the features there, so it can say where colours go (a red top over dark trousers),
            which per-channel FiLM cannot.
        prediction_type: what the output is, "epsilon" (the paper: the noise) or "v_prediction"
            (v = alpha * eps - sigma * x0: at high noise it is the image itself, so identity
            shapes the loss at every noise level).
        guidance_embedding: FiLM only: the network also takes a classifier-free guidance scale w
            and predicts the guided output null + w (identity - null) in *one* pass (guidance
            distillation, Meng et al. 2023, stage 1; trained by the `distill` stage from a
            network without it). w = 1 is the plain conditional prediction.
    """

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), in_channels: int = 3,
                 out_channels: int = 3, block_out_channels: tuple[int, ...] = (48, 96, 192, 384),
                 layers_per_block: int = 2, id_dim: int = 32, num_identities: int = 0,
                 noise_embedding_dim: int = 64, norm_groups: int = 8, conditioning: str = "concat",
                 cond_dim: int = 128, table_init_std: float = 0.0, normalize_table: bool = False,
                 identity_scale: float = 1.0, prediction_type: str = "epsilon", identity_map_levels: int = 0,
                 identity_map_channels: int = 16, guidance_embedding: bool = False, mid_layers: int = 0,
                 up_extra_levels: int = 0):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if id_dim < 1 or noise_embedding_dim < 2:
            raise ValueError("id_dim and noise_embedding_dim must be positive")
        _check_size(sample_size, len(block_out_channels))
        levels = len(block_out_channels)
        h, w = sample_size
        self.identity_embedding = nn.Embedding(num_identities, id_dim) if num_identities else None
        if self.identity_embedding is not None:
            if table_init_std > 0:
                nn.init.normal_(self.identity_embedding.weight, std=table_init_std)
            else:
                nn.init.uniform_(self.identity_embedding.weight, -0.05, 0.05)
        film = conditioning == "film"
        if film:
            self.noise_mlp = nn.Sequential(nn.Linear(noise_embedding_dim, cond_dim), nn.SiLU(),
                                           nn.Linear(cond_dim, cond_dim))
            self.identity_mlp = nn.Sequential(nn.Linear(id_dim, cond_dim), nn.SiLU(),
                                              nn.Linear(cond_dim, cond_dim))
            # stands in for the identity when it is dropped (classifier-free guidance)
            self.null_identity = nn.Parameter(torch.zeros(id_dim))
        if guidance_embedding:
            if not film:
                raise ValueError("a guidance embedding needs conditioning='film'")
            self.guidance_mlp = nn.Sequential(nn.Linear(noise_embedding_dim, cond_dim), nn.SiLU(),
                                              nn.Linear(cond_dim, cond_dim))
            # zero at the start: a fresh student predicts what its teacher does without guidance
            zero_init(self.guidance_mlp[2])
        self.body = UNetBody(in_channels, out_channels, tuple(block_out_channels), layers_per_block,
                             norm_groups, cond_dim if film else 0,
                             input_extra=0 if film else noise_embedding_dim + id_dim,
                             level_extra=0 if film else id_dim, mid_layers=mid_layers,
                             up_extra_levels=up_extra_levels)
        if identity_map_levels:
            if not film:
                raise ValueError("identity maps need conditioning='film'")
            if not 0 < identity_map_levels < levels:
                raise ValueError(f"identity_map_levels must lie in 1..{levels - 1}")
            # resolution r (0: full) is where the identity's map joins; the coarsest first
            self.map_levels = [levels - 1 - j for j in range(identity_map_levels)]
            self.identity_maps = nn.ModuleList(
                nn.Linear(cond_dim, identity_map_channels * (h >> r) * (w >> r)) for r in self.map_levels)
            self.identity_map_proj = nn.ModuleList(
                nn.Conv2d(identity_map_channels, block_out_channels[r - 1], 1) for r in self.map_levels)
            # zero at the start (as the body's head): a map level added to a trained network
            # (`--init`) leaves its output as it was, and learns from there
            for proj in self.identity_map_proj:
                zero_init(proj)

    @property
    def supports_guidance(self) -> bool:
        """Whether the model has a null identity (FiLM), the unconditional branch of CFG."""
        return self.config.conditioning == "film"

    @property
    def distilled_guidance(self) -> bool:
        """Whether a guidance scale is an input (one pass per guided step) instead of two passes."""
        return bool(self.config.get("guidance_embedding", False))

    def identity_rows(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The table's rows as the generator reads them, (num_identities, id_dim) or (B, id_dim)."""
        rows = self.identity_embedding.weight if labels is None else self.identity_embedding(labels)
        return F.normalize(rows, dim=-1) if self.config.normalize_table else rows

    def forward(self, x: torch.Tensor, noise_var: torch.Tensor, identity: torch.Tensor,
                extra_features: torch.Tensor | None = None,
                drop_identity: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """x (B,3,H,W) in about [-1, 1]; noise_var (B,) in [0, 1]; identity (B, id_dim).

        `extra_features`, when given, is added to the stem output (B, c0, H, W): the
        entry point of the pose encoder of the pose-conditioned variant; or a dict
        {resolution r: features} (FiLM only), added to what enters level r (0: the stem).
        `drop_identity` (B,) bool replaces those samples' identity by the learned null
        identity (FiLM only): classifier-free guidance's unconditional branch.
        `guidance` (B,) scales w, for a network with a guidance embedding (None: w = 1).
        """
        cfg = self.config
        b, _, h, w = x.shape
        if identity is None or identity.shape != (b, cfg.id_dim):
            raise ValueError(f"identity must have shape ({b}, {cfg.id_dim})")
        if guidance is not None and not self.distilled_guidance:
            raise ValueError("this network has no guidance embedding: guide it with two passes")
        ident = identity.to(x.dtype)
        extra = extra_features if isinstance(extra_features, dict) else \
            ({} if extra_features is None else {0: extra_features})
        feats = self.body.stem(x)
        if 0 in extra:
            feats = feats + extra[0]
        noise_emb = sinusoidal_embedding(noise_var, cfg.noise_embedding_dim).to(x.dtype)
        if cfg.conditioning == "film":
            if drop_identity is not None:
                ident = torch.where(drop_identity[:, None], self.null_identity.to(x.dtype), ident)
            id_emb = self.identity_mlp(ident * cfg.identity_scale)
            pre = self.noise_mlp(noise_emb) + id_emb
            if self.distilled_guidance:
                scale = torch.ones(b, device=x.device) if guidance is None else guidance.to(x.device).expand(b)
                code = sinusoidal_embedding(guidance_code(scale), cfg.noise_embedding_dim).to(x.dtype)
                pre = pre + self.guidance_mlp(code)
            cond = F.silu(pre)
            maps = {}
            for r, lin, proj in zip(getattr(self, "map_levels", ()), getattr(self, "identity_maps", ()),
                                    getattr(self, "identity_map_proj", ())):
                maps[r] = proj(lin(F.silu(id_emb)).view(b, -1, h >> r, w >> r))
            for r, v in extra.items():
                if r:
                    maps[r] = maps[r] + v if r in maps else v
            return self.body(feats, cond, maps=maps)
        if drop_identity is not None:
            raise ValueError("identity dropout needs conditioning='film'")
        if set(extra) - {0}:
            raise ValueError("features at coarser levels need conditioning='film'")
        return self.body(feats, input_extra=[*_broadcast(noise_emb, h, w), *_broadcast(ident, h, w)],
                         level_extra=ident)


class NoiseEncoder(ModelMixin, ConfigMixin):
    """Img2Noise: image (B, 3, H, W) in [-1, 1] -> the noise (B, 3, H, W) that GEN maps back
    to it under the image's identity (paper Sec. 4). The same U-Net body, unconditioned.

    `refine_channels` > 0 adds a full-resolution head that reads the image beside the body's
    noise and adds a correction to it (`refine_layers` residual blocks; the fine texture the
    body's coarse levels lose). Its output convolution starts at zero, so a body trained
    without it keeps its exact output when the head is added (`--init`).

    `id_dim` > 0 lets it read the identity the generator will draw the image under (Img2ID's
    vector of the photo): a small MLP (`id_hidden` wide) shifts the features entering every
    level of the body, and the head's, channel by channel. What GEN(z, id) draws depends on id,
    and for a person it never saw Img2Noise cannot infer Img2ID's vector from the pixels. The
    MLP's output layer starts at zero, so an Img2Noise trained without it keeps its exact
    output when it is added (`--init`)."""

    @register_to_config
    def __init__(self, *, sample_size: tuple[int, int] = (64, 32), block_out_channels: tuple[int, ...] = (48, 96, 192, 384),
                 layers_per_block: int = 2, norm_groups: int = 8, refine_channels: int = 0, refine_layers: int = 2,
                 id_dim: int = 0, id_hidden: int = 32):
        super().__init__()
        _check_size(sample_size, len(block_out_channels))
        self.body = UNetBody(3, 3, tuple(block_out_channels), layers_per_block, norm_groups)
        # channels entering level r of the body (the stem's, then each level's output; the middle last)
        self._shift_channels = [block_out_channels[0], *block_out_channels[:-1]] + ([refine_channels] if refine_channels else [])
        self.identity_shift = None
        if id_dim:
            last = zero_init(nn.Linear(id_hidden, sum(self._shift_channels)))
            self.identity_shift = nn.Sequential(nn.Linear(id_dim, id_hidden), nn.SiLU(), last)
        self.refine = None
        if refine_channels:
            out = zero_init(nn.Conv2d(refine_channels, 3, 3, padding=1))
            self.refine = nn.Sequential(
                nn.Conv2d(6, refine_channels, 3, padding=1),
                *(ResidualBlock(refine_channels, refine_channels, norm_groups) for _ in range(refine_layers)),
                nn.GroupNorm(math.gcd(norm_groups, refine_channels), refine_channels), nn.SiLU(), out)

    @property
    def reads_identity(self) -> bool:
        return self.identity_shift is not None

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, 3, H, W) -> noise (B, 3, H, W); `identity` (B, id_dim) is read only by a
        network built with `id_dim` (and then required)."""
        shifts = []  # one per body level (the middle last), then the head's
        if self.identity_shift is not None:
            if identity is None:
                raise ValueError("this Img2Noise reads the image's identity: pass it")
            shifts = [s[:, :, None, None] for s in
                      self.identity_shift(identity.to(x.dtype)).split(self._shift_channels, dim=1)]
        levels = len(self.body.down) + 1
        z = self.body(self.body.stem(x), maps=dict(enumerate(shifts[:levels])))
        if self.refine is not None:
            h = self.refine[0](torch.cat([x, z], dim=1))
            if shifts:
                h = h + shifts[levels]
            z = z + self.refine[1:](h)
        return z

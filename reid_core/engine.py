"""`ReIDEngine`: the one object the apps and scripts use.

Everything crosses this boundary as PIL images, numpy arrays and plain Python
values; tensors, devices and weight files stay inside.

    engine = ReIDEngine.from_pretrained("weights")
    ids = engine.sample_identities(4, seed=0)           # (4, 32) new identities
    images = engine.generate(ids, seed=[0, 1, 2, 3])   # 4 PIL images
    inv = engine.invert(Image.open("person.jpg"))      # identity, noise, reconstruction
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .config import BaselineConfig, Img2IDConfig, Img2NoiseConfig, PoseConfig, Preset, PriorConfig, UncertaintyConfig
from .data import (IMAGE_SUFFIXES, SPLIT_FOLDERS, DatasetError, ImageError, load_image, parse_market_name,
                   to_array, to_tensor, to_uint8)
from .diffusion import ddim_invert, ddim_sample, identity_steer, sample_prior
from .io import atomic_savez, cache_dir
from .metrics import l2_normalize, pairwise_distance
from .models import IdentityEncoder, IdentityPrior, IdentityUNet, NoiseEncoder, PoseEncoder, VariationalIdentityHead
from .models.unet import map_features
from .weights import (CENTRALIZATION_FILE, IDENTITIES_FILE, POSE_LIBRARY_FILE, PRESET_FILE, VERDICT_FILE,
                      has_component, load_component, missing)

ProgressFn = Callable[[float, str], None]
# the networks beside the generator a cache key may cover, with their preset fields
KEYED_NETWORKS = {"prior": PriorConfig, "img2id": Img2IDConfig, "img2noise": Img2NoiseConfig, "baseline": BaselineConfig,
                  "pose_encoder": PoseConfig}
# what each part precomputed at export is made from (beside the generator and its table): a new
# Img2Noise keeps them all, a new judge only the slider ranking's; pictures read Img2ID, which
# steers generation (`identity_steer`)
PRECOMPUTED_FROM = {"identity_map": (), "photo_features": ("img2id",), "portraits": ("img2id",),
                    "slider_axes": ("img2id",), "slider_ranking": ("img2id", "baseline")}
# the parts drawn by seed, which best-of-K drawing (`identity_candidates`) changes; the others are
# drawn under given noises and keep their key when it changes
DRAWN_BY_SEED = ("portraits",)
# preset fields no precomputed part depends on: every part is drawn from rows and noises, never from a
# photo; what a generator learned from (a distilled one's chains, a fine-tuned one's own pictures) shows
# in its weights, which are keyed themselves
UNKEYED_FIELDS = {"known_identity_cos", "distill_bank_sampler", "gen_bank", "gen_bank_share"}
# best of K by the identity's photos (`identity_likeness`): the kernel's sharpness over cosines,
# exp(PHOTO_KERNEL * cos); chosen on the candidate bank of training identities (docs/benchmark_notes.md)
PHOTO_KERNEL = 20.0
MAX_AXES = 32  # sliders: an identity's own dimensions up to this many, else its principal axes
# "refined" inversion: Img2Noise's noise, then this many Adam steps (lr) through the sampling chain.
# Measured on 100 training images (seed 5): 22.85 dB -> 23.39 / 24.58 / 25.21 / 26.28 after 1 / 2 / 3 / 6 steps
REFINE_STEPS, REFINE_LR = 2, 0.05
INVERSION_METHODS = ("img2noise", "refined", "ddim")
SWAP_KEEP = 0.5  # share of a photo's inverted noise a swap keeps (ReIDEngine.swap_noise: measured)


class PoseNotFound(ValueError):
    """A photo given as a pose in which no person could be found."""


class WeightsError(FileNotFoundError):
    """A weights folder that is missing or lacks a component; the message lists what is needed."""


@dataclass
class Inversion:
    """identity (id_dim,), noise (3, H, W) float32, the model-size input and its reconstruction."""
    identity: np.ndarray
    noise: np.ndarray
    input: Image.Image
    reconstruction: Image.Image
    psnr: float
    certainty: "Certainty | None" = None   # how sure the identity is (when the weights hold HAVANA's head)


@dataclass
class Match:
    """One search hit: a gallery image's name (its path for an indexed folder), pid and camid
    (-1 where unknown), distance, which gallery it came from ("indexed" or "uploads") and, when
    asked for, the picture at the model's size."""
    path: str
    pid: int
    camid: int
    distance: float
    source: str = "indexed"
    image: Image.Image | None = None
    same_probability: float | None = None   # P(same person as the query), when the weights hold a verdict


@dataclass
class Certainty:
    """How sure Img2ID is of a photo's identity (HAVANA's sigma): the mean sigma over the
    identity dimensions, and the share of training photos it is surer than, in [0, 1]."""
    sigma: float
    certainty: float

    @property
    def label(self) -> str:
        word = "high" if self.certainty >= 2 / 3 else "medium" if self.certainty >= 1 / 3 else "low"
        return f"{word} (σ below that of {self.certainty:.0%} of the training photos)"


@dataclass
class IdentityMatch:
    """A training identity: its row in the table, the raw dataset pid and the distance."""
    index: int
    pid: int
    distance: float


@dataclass
class Gallery:
    """Gallery features (N, id_dim) with names (paths for an indexed folder), pids/camids (-1
    where unknown) and, for photos held in memory (a visitor's uploads), the pictures themselves."""
    features: np.ndarray
    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray
    images: list | None = None   # uint8 (H, W, 3) at the model's size, when not read from files
    centralized: np.ndarray | None = None   # Pose2ID-centralized features, once computed

    def __len__(self) -> int:
        return len(self.paths)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images of the same shape (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def resolve_weights(path_or_repo: str | os.PathLike) -> Path:
    """A local folder, or a Hugging Face Hub model repo id fetched with huggingface_hub."""
    p = Path(path_or_repo).expanduser()
    if p.exists():
        return p
    text = str(path_or_repo)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(repo_id=text))
        except Exception as e:  # offline, missing repo, auth: all the same to the user
            raise WeightsError(f"could not fetch weights {text!r} from the Hugging Face Hub: {e}") from None
    raise WeightsError(f"weights folder {p} does not exist")


def candidate_seeds(seeds: Sequence[int], j: int) -> list[int]:
    """The seeds of candidate `j` >= 1 for pictures asked for by `seeds` (`ReIDEngine.generate`):
    each derived from (seed, j) alone, so a picture never depends on the others in its batch."""
    return [int(np.random.SeedSequence([int(s) % 2**63, j]).generate_state(1, np.uint64)[0] >> 1) for s in seeds]


def best_of(candidates: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """candidates (K, B, ...) and the index of each picture's kept candidate (B,) -> (B, ...)."""
    return candidates[pick, torch.arange(candidates.shape[1], device=candidates.device)]


class ReIDEngine:
    """Hosts the generator, identity prior, Img2ID and Img2Noise of one trained preset."""

    def __init__(self, preset: Preset, generator: IdentityUNet, prior: IdentityPrior,
                 img2id: IdentityEncoder, img2noise: NoiseEncoder, identity_pids: Sequence[int],
                 device: str = "cpu", baseline=None, pose_generator: IdentityUNet | None = None,
                 pose_encoder: PoseEncoder | None = None, pose_library: list | None = None,
                 precision: str = "fp32", pose_backend: str = "mediapipe",
                 uncertainty: VariationalIdentityHead | None = None):
        if precision not in ("fp32", "bf16"):
            raise ValueError("precision must be 'fp32' or 'bf16'")
        self.preset = preset
        self.device = device
        # bf16 autocast for sampling: ~1.5x faster on CPUs with AVX512-BF16, pixels move by a
        # few grey levels; fp32 (the default) is exact and comparable across machines
        self.precision = precision
        self.pose_backend = pose_backend
        # channels-last convolutions: 13-16% faster sampling on this CPU, identical pixels (measured)
        self.generator = generator.to(device).eval().to(memory_format=torch.channels_last)
        self.prior = prior.to(device).eval()
        self.img2id = img2id.to(device).eval()
        self._folded_img2id = None  # Img2ID for steering generation (`_steering_encoder`)
        self.img2noise = img2noise.to(device).eval()
        self.baseline = baseline.to(device).eval() if baseline is not None else None
        self.pose_encoder = pose_encoder.to(device).eval() if pose_encoder is not None else None
        if pose_generator is not None:
            self.pose_generator = pose_generator.to(device).eval().to(memory_format=torch.channels_last)
        else:
            # a guider trained on the frozen generator (`pose_tune_generator` false) steers the
            # generator itself: pose and plain generation share one network
            self.pose_generator = self.generator if pose_encoder is not None else None
        # HAVANA's variational head over Img2ID's pooled feature: sigma = how sure an identity is
        self.uncertainty = uncertainty.to(device).eval() if uncertainty is not None else None
        self._pose_library = [np.asarray(k, np.float32) for k in (pose_library or [])]
        self._pose_extractor = None
        self._fingerprints: dict[tuple[tuple[str, ...], bool], str] = {}
        self.verdict = None   # a reid_core.retrieval.Verdict: "same person or not" for search hits
        # Pose2ID centralization for search: {"poses": M, "eta": eta, "steps": view DDIM steps}
        self.centralization: dict | None = None
        self._pose_lock = threading.Lock()
        self.identity_pids = np.asarray(identity_pids, dtype=np.int64)
        # the rows as the generator reads them: training identity k is identity_table[k]
        self.identity_table = generator.identity_rows().detach().float().cpu().numpy()
        # classifier-free guidance only where the generator learned a null identity
        self.guidance_scale = float(preset.guidance_scale) if generator.supports_guidance else 1.0
        self.guidance_steps = preset.guidance_steps or None
        self.guidance_start = preset.guidance_start
        self.guidance_every = preset.guidance_every
        # Img2ID guidance on the predicted image (`diffusion.identity_steer`; 0: off)
        self.identity_steer = float(preset.identity_steer)
        # a seeded picture is drawn this many times and Img2ID keeps the likeliest (`generate`)
        self.identity_candidates = int(preset.identity_candidates)
        self._photo_bank: tuple[torch.Tensor, torch.Tensor] | None = None  # `photo_bank`
        self._photo_bank_read = False
        self._row_index: dict[bytes, int] | None = None  # `table_rows`
        self.gallery: Gallery | None = None
        self._gallery_lock = threading.Lock()
        self._axes: np.ndarray | None = None
        self._explorer = None
        self.weights_dir: Path | None = None  # the folder it was loaded from (from_pretrained)

    # ------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike = "weights", device: str | None = None,
                        load_baseline: bool = True, precision: str = "fp32", pose_backend: str = "mediapipe",
                        threads: int | None = None) -> "ReIDEngine":
        """Load a weights folder (or Hub repo id). `precision` "fp32" or "bf16" (sampling);
        `pose_backend` the pose extractor's; `threads` sets torch's CPU threads (None: leave as is)."""
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        root = resolve_weights(path_or_repo)
        lacking = missing(root)
        if lacking:
            raise WeightsError(f"{root.name or root} is not a complete weights folder: missing {', '.join(lacking)} "
                               f"(train one with: python -m reid_core.training --data DIR --out {root.name or root})")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        preset = Preset.load(root / PRESET_FILE)
        gen, prior, img2id, img2noise = (load_component(root, c) for c in ("generator", "prior", "img2id", "img2noise"))
        ids_file = root / IDENTITIES_FILE
        pids = json.loads(ids_file.read_text())["pids"] if ids_file.exists() else \
            list(range(gen.config.num_identities))
        baseline = load_component(root, "baseline") if load_baseline and has_component(root, "baseline") else None
        pose_gen = pose_enc = None
        if has_component(root, "pose_encoder"):
            pose_enc = load_component(root, "pose_encoder")
            if preset.pose_tune_generator:  # else the guider steers the generator itself
                if not has_component(root, "pose_generator"):
                    raise WeightsError(f"{root.name or root}: pose_encoder was trained with a fine-tuned "
                                       "generator copy, and pose_generator is missing")
                pose_gen = load_component(root, "pose_generator")
        lib_file = root / POSE_LIBRARY_FILE
        library = json.loads(lib_file.read_text())["poses"] if lib_file.exists() else None
        unc = load_component(root, "uncertainty") if has_component(root, "uncertainty") else None
        engine = cls(preset, gen, prior, img2id, img2noise, pids, device, baseline, pose_gen, pose_enc, library,
                     precision, pose_backend, unc)
        if (root / VERDICT_FILE).exists():
            from .retrieval import Verdict
            engine.verdict = Verdict.load(root / VERDICT_FILE)
        if (root / CENTRALIZATION_FILE).exists() and engine.has_pose_model:
            engine.centralization = json.loads((root / CENTRALIZATION_FILE).read_text())
        engine.weights_dir = root
        return engine

    # ------------------------------------------------------------ helpers
    def _sampling_precision(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preset.image_size)

    @property
    def num_identities(self) -> int:
        return len(self.identity_table)

    @property
    def embed_size(self) -> tuple[int, int]:
        """(H, W) Img2ID reads: may be larger than the generator's (the stored 128x64 crops)."""
        return tuple(self.img2id.config.sample_size)

    def prepare(self, image, size: tuple[int, int] | None = None) -> np.ndarray:
        """Any image (path, bytes, PIL, array; any size/mode) -> uint8 (H, W, 3) at `size`
        (default: the generator's)."""
        return to_array(load_image(image), size or self.image_size)

    def _batch(self, images: Iterable) -> torch.Tensor:
        arrs = [self.prepare(im, self.embed_size) for im in images]
        if not arrs:
            raise ImageError("no images given")
        return to_tensor(np.stack(arrs)).to(self.device)

    def resolve_identity(self, identity) -> np.ndarray:
        """An int (row of the training table), a (id_dim,) vector or a (B, id_dim) batch -> (B, id_dim)."""
        if isinstance(identity, (int, np.integer)):
            if not 0 <= identity < self.num_identities:
                raise ValueError(f"identity index {identity} out of range 0..{self.num_identities - 1}")
            return self.identity_table[[int(identity)]]
        v = np.asarray(identity, dtype=np.float32)
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != self.preset.id_dim:
            raise ValueError(f"identity must be an index or vectors of size {self.preset.id_dim}, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("identity vector holds NaN or infinity")
        return v

    def known_identities(self, vectors: np.ndarray) -> np.ndarray:
        """(N,) the training identity each Img2ID vector (N, id_dim) is recognised as, -1 for a new
        person: the nearest row, where their cosine reaches the preset's `known_identity_cos`
        (0: never). Img2ID learned the rows as its class prototypes, so a photo the studio trained
        on lies close to its person's row and a stranger's photo does not: on the shipped weights
        every training photo but 3 of 6,272 reaches 0.40, while the test photos (people never
        trained on) reach it 0.25% (queries) / 1.0% (gallery) of the time."""
        v = np.asarray(vectors, np.float32)
        known = np.full(len(v), -1, np.int64)
        if self.preset.known_identity_cos <= 0 or not len(v):
            return known
        cos = (v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-12)) @ \
            (self.identity_table / np.linalg.norm(self.identity_table, axis=1, keepdims=True).clip(1e-12)).T
        best = cos.argmax(1)
        sure = cos[np.arange(len(v)), best] >= self.preset.known_identity_cos
        known[sure] = best[sure]
        return known

    def photo_identities(self, crops_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The identities to draw the people of uint8 photos (N, H, W, 3) under, (N, id_dim), and
        the training identity each is (`known_identities`; -1: a new person). A person the
        studio trained on is drawn under their row, which the generator learned from all their
        photos and renders recognisably; anyone else under Img2ID's vector of the photo, which
        is what lets the generator draw people it never saw. (`embed` stays the re-ID feature.)"""
        f = self.embed_arrays(crops_u8)
        known = self.known_identities(f)
        return np.where(known[:, None] >= 0, self.identity_table[known.clip(0)], f).astype(np.float32), known

    def photo_identity(self, image) -> tuple[np.ndarray, int | None]:
        """`photo_identities` of one photo (a path, PIL image or array): (id_dim,) and the
        training identity it is, or None for a new person."""
        v, known = self.photo_identities(self.prepare(image, self.embed_size)[None])
        return v[0], (int(known[0]) if known[0] >= 0 else None)

    def noise(self, seed: int | Sequence[int]) -> np.ndarray:
        """(B, 3, H, W) standard normal noise, one per seed, identical on every machine."""
        seeds = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
        h, w = self.image_size
        return np.stack([torch.randn((3, h, w), generator=torch.Generator().manual_seed(int(s))).numpy()
                         for s in seeds])

    # ------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, identity, seed: int | Sequence[int] | None = 0, noise: np.ndarray | None = None,
                 steps: int | None = None, pose=None, guidance_scale: float | None = None,
                 candidates: int | None = None) -> list[Image.Image]:
        """GEN(identity, noise[, pose]) -> list of PIL images at model size.

        identities (N) and seeds/noises (M) broadcast: N == 1 or M == 1 or N == M.
        `pose`: None (the identity-only generator), an index into `pose_library()`,
        (18, 3) OpenPose keypoints (x, y as fractions, confidence), or a photo whose
        pose is extracted (PoseNotFound when it shows no person). `guidance_scale`: instead
        of the engine's own (only where the generator learned a null identity).
        `candidates` (default: the engine's `identity_candidates`): a picture asked for by
        seed is drawn under that many noises, the seed's own and ones derived from it
        (`candidate_seeds`), and the one Img2ID finds likeliest to be the identity is kept
        (`best_of`). A picture asked for by `noise` is drawn under that noise only.
        """
        ids = self.resolve_identity(identity)
        seeds = z = None
        if noise is None:
            if seed is None:
                raise ValueError("give a seed or a noise")
            seeds = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
            k = self.candidate_count(candidates)
        else:
            z = np.asarray(noise, dtype=np.float32)
            z = z[None] if z.ndim == 3 else z
            if z.shape[1:] != (3, *self.image_size):
                raise ValueError(f"noise must have shape (B, 3, {self.image_size[0]}, {self.image_size[1]})")
        n, m = len(ids), len(seeds if z is None else z)
        if n != m:
            if n == 1:
                ids = np.repeat(ids, m, 0)
            elif m == 1:
                seeds, z = (seeds * n, None) if z is None else (None, np.repeat(z, n, 0))
            else:
                raise ValueError(f"{n} identities and {m} noises do not broadcast")
        z = self.candidate_noises(seeds, k) if z is None else z[None]
        return [Image.fromarray(a) for a in to_uint8(self._draw(ids, z, steps, pose, guidance_scale))]

    def candidate_noises(self, seeds: Sequence[int], k: int) -> np.ndarray:
        """(K, B, 3, H, W): the noises best of `k` draws pictures asked for by `seeds` under, the
        seed's own first, then the ones derived from it (`candidate_seeds`)."""
        return np.stack([self.noise(seeds), *(self.noise(candidate_seeds(seeds, j)) for j in range(1, k))])

    def candidate_count(self, candidates: int | None) -> int:
        """How many times a picture is drawn: `candidates`, else the engine's `identity_candidates`."""
        k = self.identity_candidates if candidates is None else int(candidates)
        if k < 1:
            raise ValueError("candidates must be at least 1")
        return k

    def _draw(self, ids: np.ndarray, noises: np.ndarray, steps: int | None = None, pose=None,
              guidance_scale: float | None = None, trace: list | None = None) -> torch.Tensor:
        """Identities (B, id_dim) under K candidate noises each (K, B, 3, H, W) -> (B, 3, H, W)
        images in [-1, 1]: the candidate Img2ID finds likeliest to be its identity (K = 1: the one).
        `trace`, when given, receives the kept candidates' sampling chains: per step
        (x, timestep, scale, prediction) as `ddim_sample` records them, each (B, ...)."""
        k, b = noises.shape[:2]
        ids_t = torch.from_numpy(ids).to(self.device).repeat(k, 1)
        chains = None if trace is None else []
        x = self._sample(ids_t, torch.from_numpy(noises.reshape(k * b, *noises.shape[2:])).to(self.device),
                         steps, pose, guidance_scale, trace=chains)
        pick = torch.zeros(b, dtype=torch.long, device=x.device)
        if k > 1:
            rows = np.tile(self.table_rows(ids), k)
            pick = self.identity_likeness(x, ids_t, rows).view(k, b).argmax(0)
        if trace is not None:
            trace.extend((best_of(xs.view(k, b, *xs.shape[1:]), pick), t, w,
                          best_of(e.view(k, b, *e.shape[1:]), pick)) for xs, t, w, e in chains)
        return best_of(x.view(k, b, *x.shape[1:]), pick)

    def identity_likeness(self, images: torch.Tensor, identities: torch.Tensor,
                          rows: np.ndarray | None = None) -> torch.Tensor:
        """How much each picture (B, 3, H, W) in [-1, 1] looks like its identity (B, id_dim), as
        Img2ID sees it, from the picture's Img2ID vector f (with its mirror image's). A training
        identity (`rows` (B,) >= 0) whose photos the weights carry (`photo_bank`): the log of its
        photos' share of the kernel mass exp(PHOTO_KERNEL * cos(f, photo)) over all training
        photos, a soft nearest-neighbour vote; any other identity: the cosine between f and the
        identity. Comparable among the pictures of one identity only. (B,)"""
        f = self._steering_encoder().embed(images.float()).float()
        score = torch.nn.functional.cosine_similarity(f, identities.float(), dim=1)
        bank = self.photo_bank if rows is not None else None
        if bank is None:
            return score
        feats, photo_rows = bank
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64, device=score.device)
        known = rows_t >= 0
        if known.any():
            logits = PHOTO_KERNEL * torch.nn.functional.normalize(f[known], dim=1) @ feats.T
            own = logits.masked_fill(photo_rows[None] != rows_t[known][:, None], float("-inf"))
            score[known] = own.logsumexp(1) - logits.logsumexp(1)
        return score

    @property
    def photo_bank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Img2ID's vectors of the training photos (N, id_dim), unit length, and each photo's
        table row (N,), as shipped with the weights (`weights.save_photo_features`), or None."""
        if not self._photo_bank_read:
            bank = None
            if self.weights_dir is not None:
                from .weights import load_photo_features
                bank = load_photo_features(self.weights_dir, self.cache_key("photo_features"),
                                           self.preset.id_dim, self.num_identities)
            self.set_photo_bank(*(bank if bank is not None else (None, None)))
        return self._photo_bank

    def set_photo_bank(self, features: np.ndarray | None, rows: np.ndarray | None) -> None:
        """Use these training-photo vectors (N, id_dim) and rows (N,) for best of K (None: the rows)."""
        self._photo_bank = None if features is None else (
            torch.nn.functional.normalize(torch.as_tensor(np.asarray(features, np.float32)), dim=1).to(self.device),
            torch.as_tensor(np.asarray(rows, np.int64)).to(self.device))
        self._photo_bank_read = True

    def table_rows(self, identities: np.ndarray) -> np.ndarray:
        """(B,) the table row each identity vector (B, id_dim) is, bit for bit, else -1: a
        training identity asked for by index, or a photo recognised as one, arrives as its row."""
        if self._row_index is None:
            index: dict[bytes, int] = {}
            for k, r in enumerate(np.ascontiguousarray(self.identity_table, np.float32)):
                index.setdefault(r.tobytes(), k)
            self._row_index = index
        v = np.ascontiguousarray(identities, np.float32)
        return np.array([self._row_index.get(x.tobytes(), -1) for x in v], np.int64)

    def _sample(self, ids: torch.Tensor, z: torch.Tensor, steps: int | None = None, pose=None,
                guidance_scale: float | None = None, steer: bool = True, trace: list | None = None) -> torch.Tensor:
        """GEN on tensors: identities (B, id_dim), noises (B, 3, H, W) -> images in [-1, 1].
        `steer`: Img2ID's guidance toward `ids` where the engine has it on (`identity_steer`)."""
        steps = steps or self.preset.sample_steps
        if not 1 <= steps <= 1000:
            raise ValueError("steps must lie in 1..1000")
        if pose is None:
            net, extra_fn = self.generator, None
        else:
            feats = map_features(lambda v: v.expand(len(ids), -1, -1, -1), self._pose_features(self.resolve_pose(pose)))
            net, extra_fn = self.pose_generator, (lambda: feats)
        with self._sampling_precision():
            scale = self.guidance_scale if guidance_scale is None or not self.generator.supports_guidance \
                else float(guidance_scale)
            steer_fn = identity_steer(self._steering_encoder(), ids, self.identity_steer,
                                      self.preset.identity_steer_blur) if steer and self.identity_steer > 0 else None
            return ddim_sample(net, ids, z, steps, extra_features_fn=extra_fn, guidance_scale=scale,
                               guidance_steps=self.guidance_steps, guidance_start=self.guidance_start,
                               guidance_every=self.guidance_every, steer=steer_fn,
                               steer_window=self.preset.identity_steer_window, trace=trace)

    def _steering_encoder(self):
        """Img2ID with its batch norms folded, made on first use (`IdentityEncoder.folded`)."""
        if self._folded_img2id is None:
            with torch.inference_mode(False):  # its weights take part in the steering's gradient
                self._folded_img2id = self.img2id.folded()
        return self._folded_img2id

    @torch.inference_mode()
    def pose_views(self, crops_u8: np.ndarray, images_u8: np.ndarray | None = None, poses: Sequence[int] | None = None,
                   steps: int = 5, batch_size: int = 64, progress: ProgressFn | None = None) -> np.ndarray:
        """Pose2ID's views of photos: each photo regenerated in each library pose, with its own
        identity (Img2ID of `crops_u8`, at `embed_size`) and its own noise (Img2Noise of
        `images_u8`, the same photos at the model's size; resized from the crops when not given).
        Returns uint8 (N, len(poses), H, W, 3) at the model's size."""
        if self.pose_generator is None:
            raise ValueError("these weights hold no pose-conditioned generator (train the 'pose' stage)")
        poses = list(range(len(self._pose_library))) if poses is None else [int(p) for p in poses]
        h, w = self.image_size
        out = np.zeros((len(crops_u8), len(poses), h, w, 3), np.uint8)
        for i in range(0, len(crops_u8), batch_size):
            crops = to_tensor(crops_u8[i:i + batch_size]).to(self.device)
            x = to_tensor(images_u8[i:i + batch_size]).to(self.device) if images_u8 is not None else \
                torch.nn.functional.interpolate(crops, size=(h, w), mode="bilinear", antialias=True)
            ident = self.img2id.embed(crops).float()
            z = self.img2noise(x, ident).float()
            for j, p in enumerate(poses):
                # unsteered: a search's views are many, and centralization was chosen without it
                out[i:i + len(x), j] = to_uint8(self._sample(ident, z, steps, p, steer=False))
            if progress is not None:
                progress(min(1.0, (i + len(x)) / len(crops_u8)), f"posed {min(i + len(x), len(crops_u8))}/{len(crops_u8)}")
        return out

    # ------------------------------------------------------------ poses
    @property
    def has_pose_model(self) -> bool:
        return self.pose_generator is not None

    def pose_library(self) -> list[np.ndarray]:
        """The representative poses shipped with the weights, (18, 3) each (Pose2ID's rule)."""
        return [k.copy() for k in self._pose_library]

    def extract_pose(self, image):
        """The 18 OpenPose keypoints of the person in a photo: a `reid_core.pose.PoseResult`
        (found=False with a message when there is nobody; never an exception for that)."""
        from .pose import get_pose_extractor
        img = load_image(image)
        with self._pose_lock:
            if self._pose_extractor is None:
                self._pose_extractor = get_pose_extractor(self.pose_backend)
            return self._pose_extractor(img)

    def render_pose(self, pose, size: tuple[int, int] | None = None) -> Image.Image:
        """A skeleton picture (OpenPose colours) of any pose `generate` accepts."""
        from .pose import render_skeleton
        h, w = self.image_size
        return render_skeleton(self.resolve_pose(pose), size or (4 * h, 4 * w))

    def resolve_pose(self, pose) -> np.ndarray:
        """A library index, (18, 3) keypoints or a photo -> (18, 3) keypoints."""
        if isinstance(pose, (int, np.integer)):
            if not 0 <= pose < len(self._pose_library):
                raise ValueError(f"pose index {pose} out of range: the library holds {len(self._pose_library)} poses")
            return self._pose_library[int(pose)]
        if isinstance(pose, (np.ndarray, list, tuple)) and np.asarray(pose).shape == (18, 3):
            k = np.asarray(pose, np.float32)
            if not np.isfinite(k).all():
                raise ValueError("pose keypoints hold NaN or infinity")
            return k
        res = self.extract_pose(pose)
        if not res.found:
            raise PoseNotFound(f"no pose to follow: {res.message}")
        return res.keypoints

    def _pose_features(self, keypoints: np.ndarray) -> torch.Tensor:
        from .pose import render_skeleton_array
        if self.pose_generator is None:
            raise ValueError("these weights hold no pose-conditioned generator (train the 'pose' stage)")
        s = self.pose_encoder.config.render_scale
        h, w = self.image_size
        skel = torch.from_numpy(render_skeleton_array(keypoints, (h * s, w * s)))[None].to(self.device)
        return self.pose_encoder(skel)

    def swap_noise(self, noise: np.ndarray, keep: float = SWAP_KEEP, seed: int = 0) -> np.ndarray:
        """A photo's inverted noise (3, H, W) or (B, 3, H, W) made ready for a swap: blended with
        fresh seeded noise (seeds seed, seed + 1, ...), sqrt(keep) z + sqrt(1 - keep) eps, which
        is N(0, I) again. keep 1 is the paper's swap on the photo's whole noise; 0 keeps nothing
        of the photo. The whole noise carries the photo's colours in fine speckles that another
        identity does not override. Measured (scripts/sweep_sampling.py --swap --keep 1 0.5 0.3
        0.15 0, 200 pairs of training images, seed 1; the judge names A / B's pose kept,
        PCK@0.2): keep 1: 29.0% / 88.6%; 0.5: 50.5% / 84.2%; 0.3: 50.5% / 82.2%; 0.15: 54.0% /
        79.3%; 0: 49.5% / 77.0% (the pose figure's floor: any standing person scores that
        against B). Half keeps B's pose and scene visibly and lets A's identity through."""
        n = 1 if np.ndim(noise) == 3 else len(noise)
        return self._swap_noise(noise, keep, range(int(seed), int(seed) + n))

    def _swap_noise(self, noise: np.ndarray, keep: float, seeds: Sequence[int]) -> np.ndarray:
        """`swap_noise` with the fresh noises' seeds given, one per noise."""
        if not 0.0 <= float(keep) <= 1.0:
            raise ValueError("keep must lie in 0..1")
        z = np.asarray(noise, np.float32)
        batched = z.ndim == 4
        z = z if batched else z[None]
        fresh = self.noise(list(seeds))
        out = (np.sqrt(keep) * z + np.sqrt(1.0 - keep) * fresh).astype(np.float32)
        return out if batched else out[0]

    def swap(self, identity, photo, method: str = "img2noise", keep: float = SWAP_KEEP, seed: int = 0) -> Image.Image:
        """The paper's identity swap: `identity` (a row index, a vector, or another photo, whose
        person is taken: `photo_identity`) rendered on the noise (pose, background, light) of `photo` (a photo or
        its `Inversion`), `keep` of it (`swap_noise`), at plain generation's guidance scale, which
        serves swaps best: judged as A on 200 other training pairs with the whole noise
        (scripts/sweep_sampling.py --swap), scale 1.5: 25.5%, 2: 27.5%, 3: 33.5%, 4.5: 30.0%,
        6: 26.5%, 8: 19.5%."""
        if not isinstance(identity, (int, np.integer, np.ndarray, list, tuple)):
            identity = self.photo_identity(identity)[0]
        inv = photo if isinstance(photo, Inversion) else self.invert(photo, method)
        return self.swap_arrays(self.resolve_identity(identity), inv.noise[None], keep, seed)[0]

    @torch.inference_mode()
    def swap_arrays(self, identities: np.ndarray, noises: np.ndarray, keep: float = SWAP_KEEP, seed: int = 0,
                    candidates: int | None = None) -> list[Image.Image]:
        """`swap` on batches: identities (B, id_dim) on inverted noises (B, 3, H, W), the fresh
        share seeded seed, seed + 1, ... Below keep 1 each swap is drawn `candidates` times
        (default: `identity_candidates`) under fresh shares seeded as `generate`'s candidates,
        and the one Img2ID finds likeliest to be its identity is kept."""
        ids = np.asarray(identities, np.float32)
        if ids.ndim != 2 or np.ndim(noises) != 4 or len(ids) != len(noises):
            raise ValueError("swap_arrays takes as many identities (B, id_dim) as noises (B, 3, H, W)")
        seeds = [int(seed) + i for i in range(len(noises))]
        k = 1 if float(keep) >= 1.0 else self.candidate_count(candidates)
        z = np.stack([self._swap_noise(noises, keep, seeds if j == 0 else candidate_seeds(seeds, j)) for j in range(k)])
        return [Image.fromarray(a) for a in to_uint8(self._draw(ids, z))]

    @torch.inference_mode()
    def sample_identities(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, id_dim) NEW identities drawn from the identity prior."""
        if not 1 <= n <= 10_000:
            raise ValueError("n must lie in 1..10000")
        g = torch.Generator().manual_seed(int(seed))
        z = sample_prior(self.prior, n, g, self.preset.prior_sample_steps, self.device).cpu().numpy()
        if self.generator.config.normalize_table:
            # the generator only ever saw identities on the unit sphere (its rows, Img2ID's
            # vectors): a prior sample off it (their norms came out 2-6) renders as noise
            z = l2_normalize(z)
        return z

    # ------------------------------------------------------------ latent axes (the sliders)
    @property
    def latent_axes(self) -> np.ndarray:
        """(num_axes, id_dim) orthonormal directions the sliders move along.

        Up to MAX_AXES dimensions they are the identity's own dimensions (the paper's
        Fig. 11 moves one of its 32). A wider identity is shown along its identity axes, the
        directions that most change who the generated person looks like, when the weights carry
        them (`evaluate.sensitive_axes`, found at export), else along the principal axes of the
        trained rows, largest variance first.
        """
        if self._axes is None:
            d = self.preset.id_dim
            shipped = None
            if d > MAX_AXES and self.weights_dir is not None:
                from .weights import load_slider_axes
                shipped = load_slider_axes(self.weights_dir, self.cache_key("slider_axes"), (MAX_AXES, d))
            if d <= MAX_AXES:
                axes, kind = np.eye(d, dtype=np.float32), "dimensions"
            elif shipped is not None:
                axes, kind = shipped, "identity axes"
            else:
                from .evaluate import fix_signs
                rows = self.identity_table - self.identity_table.mean(0)
                _, _, vt = np.linalg.svd(rows.astype(np.float64), full_matrices=False)
                axes, kind = fix_signs(vt[:MAX_AXES]).astype(np.float32), "principal axes"
            self._axes, self._axes_kind = axes, kind
        return self._axes

    @property
    def axes_are_dimensions(self) -> bool:
        return self.preset.id_dim <= MAX_AXES

    @property
    def axes_kind(self) -> str:
        """What the sliders move along: "dimensions", "identity axes" (the directions that most
        change who the generated person looks like) or "principal axes"."""
        self.latent_axes
        return self._axes_kind

    def reload_axes(self) -> None:
        """Forget the slider axes, so that the next use reads them again (after an export wrote them)."""
        self._axes = None

    @property
    def axis_spread(self) -> np.ndarray:
        """(num_axes,) standard deviation of the trained identities along each axis."""
        return (self.identity_table @ self.latent_axes.T).std(0)

    def to_axes(self, identity) -> np.ndarray:
        """One identity -> its (num_axes,) coordinates along `latent_axes`."""
        v = self.resolve_identity(identity)
        if len(v) != 1:
            raise ValueError("to_axes takes one identity")
        return (v[0] @ self.latent_axes.T).astype(np.float32)

    def from_axes(self, coords, base) -> np.ndarray:
        """The identity `base` with its coordinates along `latent_axes` set to `coords`; what
        lies outside the axes' span is kept. -> (id_dim,)"""
        v = self.resolve_identity(base)[0]
        c = np.asarray(coords, dtype=np.float32)
        if c.shape != (len(self.latent_axes),) or not np.isfinite(c).all():
            raise ValueError(f"need {len(self.latent_axes)} finite axis coordinates")
        return (v + (c - v @ self.latent_axes.T) @ self.latent_axes).astype(np.float32)

    def vary(self, identity, axis: int, values: Sequence[float], seed: int = 0) -> list[Image.Image]:
        """Move the identity along ONE latent axis through coordinates `values`, the noise fixed
        (paper Fig. 11: for identities of up to 32 dimensions an axis is a dimension)."""
        base = self.resolve_identity(identity)
        if len(base) != 1:
            raise ValueError("vary takes one identity")
        k = len(self.latent_axes)
        if not 0 <= axis < k:
            raise ValueError(f"axis (dim) must lie in 0..{k - 1}")
        coords = self.to_axes(base)
        ids = []
        for value in values:
            c = coords.copy()
            c[axis] = float(value)
            ids.append(self.from_axes(c, base))
        return self.generate(np.stack(ids), noise=self.noise(seed))

    # ------------------------------------------------------------ inversion
    @torch.inference_mode()
    def embed(self, images: Iterable, batch_size: int = 256) -> np.ndarray:
        """Img2ID: images -> (N, id_dim) identity vectors (the re-ID feature)."""
        images = list(images)
        out = []
        for i in range(0, len(images), batch_size):
            out.append(self.img2id.embed(self._batch(images[i:i + batch_size])).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.preset.id_dim), np.float32)

    @torch.inference_mode()
    def embed_arrays(self, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Img2ID on uint8 (N, H, W, 3) arrays, best at `embed_size` (other sizes are resized)."""
        out = []
        for i in range(0, len(images_u8), batch_size):
            x = to_tensor(images_u8[i:i + batch_size]).to(self.device)
            out.append(self.img2id.embed(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.preset.id_dim), np.float32)

    @torch.inference_mode()
    def _havana(self, images_u8: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """HAVANA head on uint8 photos: z_mu (N, latent_dim) and z_sigma (N, latent_dim), each the mean of
        the photo's and its mirror image's."""
        if self.uncertainty is None:
            raise ValueError("these weights hold no uncertainty head (train the 'uncertainty' stage)")
        mus, sigmas = [], []
        for i in range(0, len(images_u8), batch_size):
            x = to_tensor(images_u8[i:i + batch_size]).to(self.device)
            pooled = self.img2id.pooled(torch.cat([x, x.flip(3)]))
            mu, sigma = self.uncertainty(pooled)
            n = len(x)
            mus.append(((mu[:n] + mu[n:]) / 2).float().cpu().numpy())
            sigmas.append(((sigma[:n] + sigma[n:]) / 2).float().cpu().numpy() if sigma is not None
                          else np.full((n, mu.shape[1]), np.nan, np.float32))
        empty = np.zeros((0, self.uncertainty.config.latent_dim), np.float32)
        return (np.concatenate(mus), np.concatenate(sigmas)) if mus else (empty, empty)

    def havana_features(self, images_u8: np.ndarray) -> np.ndarray:
        """The HAVANA head's test feature z_mu (unit length), for `evaluate --model havana`."""
        return l2_normalize(self._havana(images_u8)[0])

    def identity_certainty(self, images: Iterable) -> list[Certainty]:
        """How sure the identity of each photo is: HAVANA's sigma, placed among the training photos'."""
        if self.uncertainty is None or not self.uncertainty.config.variational:
            raise ValueError("these weights hold no variational uncertainty head")
        arrs = np.stack([self.prepare(im, self.embed_size) for im in images])
        sigma = self._havana(arrs)[1].mean(1)
        return [Certainty(float(s), float(c)) for s, c in zip(sigma, self.uncertainty.certainty(sigma))]

    def _noise_of(self, x: torch.Tensor, ident: torch.Tensor, method: str) -> torch.Tensor:
        """The noise of images x (B, 3, H, W) under identities (B, id_dim): Img2Noise, Img2Noise
        refined through the sampling chain, or DDIM inversion."""
        if method == "img2noise":
            return self.img2noise(x, ident).float()
        if method == "refined":
            return self.refine_noise(x, ident, self.img2noise(x, ident).float())
        if method == "ddim":
            return ddim_invert(self.generator, x, ident, self.preset.sample_steps)
        raise ValueError(f"method must be one of {', '.join(INVERSION_METHODS)}")

    def refine_noise(self, x: torch.Tensor, ident: torch.Tensor, z: torch.Tensor,
                     steps: int = REFINE_STEPS, lr: float = REFINE_LR) -> torch.Tensor:
        """`steps` Adam steps on z against L1(GEN(z, identity), x) through the whole sampling
        chain: Img2Noise's own training loss (paper Sec. 4, eq. 2), spent on the photo at hand.
        Each photo keeps the noise of the visited ones that rebuilds it with the least squared
        error (what PSNR reads), so refining never loses to the noise it started from. Each
        step costs one chain forward and backward, the last check one forward; only z gets
        gradients."""
        with torch.inference_mode(False), torch.enable_grad():
            x, ident = x.clone().float(), ident.clone().float()
            z = z.clone().float().requires_grad_(True)
            best, best_err = z.detach().clone(), torch.full((len(x),), float("inf"), device=x.device)
            opt = torch.optim.Adam([z], lr=lr)
            for step in range(steps + 1):
                rec = ddim_sample(self.generator, ident, z, self.preset.sample_steps, grad=step < steps).float()
                err = (rec.detach() - x).pow(2).flatten(1).mean(1)
                better = err < best_err
                best[better], best_err[better] = z.detach()[better], err[better]
                if step < steps:
                    # summed per image: each photo's step is its own, whatever the batch
                    (z.grad,) = torch.autograd.grad(torch.nn.functional.l1_loss(rec, x, reduction="sum"), [z])
                    opt.step()
        return best

    @torch.inference_mode()
    def invert(self, image, method: str = "img2noise", identity=None) -> Inversion:
        """Image -> (identity, noise) with GEN(noise, identity) ~ image.

        method "img2noise" uses the trained network (one pass); "refined" refines its
        noise by `REFINE_STEPS` gradient steps through the sampling chain; "ddim" runs DDIM
        inversion with the generator (`sample_steps` passes). The identity is
        Img2ID's unless given.
        """
        img = load_image(image)
        arr = to_array(img, self.image_size)
        x = to_tensor(arr[None]).to(self.device)
        ident = torch.from_numpy(self.resolve_identity(identity)).to(self.device) if identity is not None \
            else self.img2id.embed(to_tensor(to_array(img, self.embed_size)[None]).to(self.device)).float()
        z = self._noise_of(x, ident, method)
        with self._sampling_precision():
            rec = to_uint8(ddim_sample(self.generator, ident, z, self.preset.sample_steps))[0]
        return Inversion(ident[0].cpu().numpy(), z[0].cpu().numpy(), Image.fromarray(arr),
                         Image.fromarray(rec), psnr(arr, rec), self.certainty_or_none(img))

    def certainty_or_none(self, image) -> "Certainty | None":
        """`identity_certainty` of one photo, or None when the weights hold no variational head."""
        head = self.uncertainty
        return self.identity_certainty([image])[0] if head is not None and head.config.variational else None

    @torch.inference_mode()
    def reconstruct_arrays(self, images_u8: np.ndarray, method: str = "img2noise", batch_size: int = 128,
                           crops_u8: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched `invert` on uint8 (N, H, W, 3) model-size images; Img2ID reads `crops_u8`
        (the same images at `embed_size`) when given.

        Returns reconstructions uint8 (N, H, W, 3), identities (N, id_dim), noises (N, 3, H, W).
        """
        recs, ids, zs = [], [], []
        crops_u8 = images_u8 if crops_u8 is None else crops_u8
        for i in range(0, len(images_u8), batch_size):
            x = to_tensor(images_u8[i:i + batch_size]).to(self.device)
            ident = self.img2id.embed(to_tensor(crops_u8[i:i + batch_size]).to(self.device)).float()
            z = self._noise_of(x, ident, method)
            with self._sampling_precision():
                recs.append(to_uint8(ddim_sample(self.generator, ident, z, self.preset.sample_steps)))
            ids.append(ident.cpu().numpy())
            zs.append(z.cpu().numpy())
        return np.concatenate(recs), np.concatenate(ids), np.concatenate(zs)

    # ------------------------------------------------------------ retrieval
    def nearest_identities(self, vector, k: int = 5) -> list[IdentityMatch]:
        """The k training identities closest (Euclidean) to an identity vector."""
        v = self.resolve_identity(vector)
        d = pairwise_distance(v, self.identity_table)[0]
        order = np.argsort(d, kind="stable")[:max(1, k)]
        return [IdentityMatch(int(i), int(self.identity_pids[i]), float(d[i])) for i in order]

    def index_gallery(self, folder: str | os.PathLike, progress: ProgressFn | None = None,
                      use_cache: bool = True) -> Gallery:
        """Embed every image of a folder (a Market layout's bounding_box_test, or plain images).

        Names that parse as Market-1501 give pid and camera (junk, pid -1, is dropped);
        other images get pid and camera -1.
        Features are cached on disk, keyed by the weights and the files' names and sizes.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise DatasetError(f"gallery folder {folder} does not exist")
        sub = folder / SPLIT_FOLDERS["gallery"]
        root = sub if sub.is_dir() else folder
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{root}: no images (.jpg, .png, .bmp) found")
        pids, camids, kept = [], [], []
        for p in files:
            try:
                pid, cam = parse_market_name(p.name)
            except DatasetError:
                pid, cam = -1, -1  # a plain photo: no identity known
            else:
                if pid == -1:
                    continue  # Market-1501 junk, dropped as its protocol does
            kept.append(p)
            pids.append(pid)
            camids.append(cam)
        files = kept
        key = hashlib.sha1(repr((self.fingerprint, [(str(p), p.stat().st_size) for p in files]))
                           .encode()).hexdigest()[:16]
        path = cache_dir() / f"gallery-{key}.npz"
        if use_cache and path.exists():
            with np.load(path, allow_pickle=False) as z:
                feats = z["features"]
        else:
            feats = np.zeros((len(files), self.preset.id_dim), np.float32)
            batch = 128
            for i in range(0, len(files), batch):
                chunk = []
                for p in files[i:i + batch]:
                    try:
                        chunk.append(self.prepare(p, self.embed_size))
                    except ImageError as e:
                        raise DatasetError(f"{p}: {e}") from None
                feats[i:i + len(chunk)] = self.embed_arrays(np.stack(chunk))
                if progress is not None:
                    progress(min(1.0, (i + len(chunk)) / len(files)), f"indexed {i + len(chunk)}/{len(files)}")
            if use_cache:
                atomic_savez(path, features=feats)
        gallery = Gallery(feats, [str(p) for p in files], np.array(pids), np.array(camids))
        with self._gallery_lock:
            self.gallery = gallery
        return gallery

    def gallery_from_photos(self, photos: Sequence, names: Sequence[str], base: Gallery | None = None,
                            limit: int | None = None) -> tuple[Gallery, list[str]]:
        """A new in-memory gallery: `base` plus the readable `photos` (kept at the model's size),
        never touching the indexed one. Returns it and one plain message per photo not added."""
        base = base if base is not None and len(base) else None
        have = len(base) if base is not None else 0
        good, good_names, problems = [], [], []
        for photo, name in zip(photos, names):
            if limit is not None and have + len(good) >= limit:
                problems.append(f"{name}: skipped, at most {limit} photos in a gallery")
                continue
            try:
                good.append(self.prepare(photo, self.embed_size))
                good_names.append(str(name))
            except ImageError as e:
                problems.append(f"{name}: {e}")
        if not good:
            return base if base is not None else Gallery(np.zeros((0, self.preset.id_dim), np.float32), [],
                                                         np.zeros(0, int), np.zeros(0, int), []), problems
        feats = self.embed_arrays(np.stack(good))
        small = [to_array(Image.fromarray(g), self.image_size) for g in good]
        new = Gallery(feats, good_names, -np.ones(len(good), int), -np.ones(len(good), int), small)
        if base is None:
            return new, problems
        return Gallery(np.concatenate([base.features, feats]), base.paths + good_names,
                       np.concatenate([base.pids, new.pids]), np.concatenate([base.camids, new.camids]),
                       list(base.images or []) + small), problems

    def gallery_picture(self, gallery: Gallery, index: int) -> Image.Image:
        """A gallery image at the model's size: from memory, else read from its file (a grey
        placeholder if the file went away since indexing)."""
        if gallery.images is not None:
            return Image.fromarray(gallery.images[index])
        try:
            return Image.fromarray(self.prepare(gallery.paths[index]))
        except (ImageError, OSError):
            h, w = self.image_size
            return Image.new("RGB", (w, h), (200, 200, 200))

    # ------------------------------------------------------------ Pose2ID centralization
    def centralize(self, crops_u8: np.ndarray, images_u8: np.ndarray | None = None,
                   features: np.ndarray | None = None) -> np.ndarray:
        """Pose2ID features of photos (uint8 at `embed_size`; `images_u8` the same at the model's
        size): Img2ID pulled towards the mean Img2ID of the photo redrawn in the first M library
        poses with its own noise, normalize(f + eta * mean_i f_i), M and eta from
        `centralization` (chosen on training identities by `python -m reid_core.evaluate
        --choose-centralization`)."""
        from .retrieval import pose_centralize
        c = self.centralization
        if c is None:
            raise ValueError("these weights hold no centralization settings (run python -m reid_core.evaluate "
                             "--choose-centralization)")
        views = self.pose_views(crops_u8, images_u8, poses=range(int(c["poses"])), steps=int(c["steps"]))
        vf = self.embed_arrays(views.reshape(-1, *views.shape[2:])).reshape(len(views), views.shape[1], -1)
        f = self.embed_arrays(crops_u8) if features is None else features   # Img2ID, when already known
        return pose_centralize(f, vf, float(c["eta"]))

    def centralize_gallery(self, gallery: Gallery | None = None, progress: ProgressFn | None = None,
                           use_cache: bool = True) -> Gallery:
        """Compute (once; kept on disk for an indexed folder) the centralized features of the
        indexed gallery, or of `gallery` (a visitor's uploads, redrawn from their pictures)."""
        g = self.gallery if gallery is None else gallery
        if g is None or not len(g):
            raise ValueError("no gallery indexed yet: index a folder or upload gallery photos first")
        if g.centralized is not None:
            return g
        if g.images is not None:
            small = np.stack(g.images)
            g.centralized = self.centralize(small, small)
            return g
        # the views are drawn by the pose guider from Img2ID's identity and Img2Noise's noise
        views = self.fingerprint_of("prior", "img2id", "img2noise", "pose_encoder")
        key = hashlib.sha1(repr((views, sorted(self.centralization.items()) if self.centralization else None,
                                 [(p, Path(p).stat().st_size if Path(p).exists() else -1) for p in g.paths]))
                           .encode()).hexdigest()[:16]
        path = cache_dir() / f"centralized-{key}.npz"
        if use_cache and path.exists():
            with np.load(path, allow_pickle=False) as z:
                g.centralized = z["features"]
            return g
        feats, batch = [], 64
        for i in range(0, len(g), batch):
            crops = np.stack([self.prepare(p, self.embed_size) for p in g.paths[i:i + batch]])
            small = np.stack([self.prepare(p) for p in g.paths[i:i + batch]])
            feats.append(self.centralize(crops, small))
            if progress is not None:
                done = min(i + batch, len(g))
                progress(done / len(g), f"redrew {done}/{len(g)} gallery photos in {self.centralization['poses']} poses")
        g.centralized = np.concatenate(feats)
        if use_cache:
            atomic_savez(path, features=g.centralized)
        return g

    def search(self, query, k: int = 10, uploads: Gallery | None = None, with_images: bool = False,
               skip_camera: int | None = None, centralize: bool = False) -> list[Match]:
        """The k images nearest to `query` (a photo, or an Img2ID vector) over the indexed gallery
        and `uploads` (a visitor's own, from `gallery_from_photos`), by Euclidean distance between
        Img2ID vectors; ties keep gallery order. `with_images` attaches each hit's picture;
        `skip_camera` leaves out the images of that camera (the query's own: the Market protocol
        asks for a match seen by another camera).

        `centralize` ranks by Pose2ID-centralized features (`centralize`; the gallery's come from
        `centralize_gallery`, computed here if missing). Each hit's distance and same-person
        probability stay those of the raw Img2ID vectors, on which the verdict was calibrated."""
        sources = [(name, g) for name, g in (("indexed", self.gallery), ("uploads", uploads))
                   if g is not None and len(g)]
        if not sources:
            raise ValueError("no gallery indexed yet: index a folder or upload gallery photos first")
        is_vector = isinstance(query, np.ndarray) and query.ndim == 1
        if is_vector:
            if centralize:
                raise ValueError("centralization needs the query photo, not its identity vector")
            q = np.asarray(query, np.float32)[None]
        else:
            crop = self.prepare(query, self.embed_size)
            q = self.embed_arrays(crop[None])
        d = np.concatenate([pairwise_distance(q, g.features)[0] for _, g in sources])
        rank_d = d
        if centralize:
            qc = self.centralize(crop[None], self.prepare(query)[None], features=q)
            rank_d = np.concatenate([pairwise_distance(qc, self.centralize_gallery(g).centralized)[0]
                                     for _, g in sources])
        if skip_camera is not None and skip_camera >= 0:
            cams = np.concatenate([g.camids for _, g in sources])
            rank_d = np.where(cams == skip_camera, np.inf, rank_d)
        owner = np.concatenate([np.full(len(g), s) for s, (_, g) in enumerate(sources)])
        row = np.concatenate([np.arange(len(g)) for _, g in sources])
        k = max(1, min(int(k), int(np.isfinite(rank_d).sum())))
        top = np.argsort(rank_d, kind="stable")[:k]
        top = top[np.isfinite(rank_d[top])]
        out = []
        for i in top:
            name, g = sources[owner[i]]
            j = int(row[i])
            out.append(Match(g.paths[j], int(g.pids[j]), int(g.camids[j]), float(d[i]), name,
                             self.gallery_picture(g, j) if with_images else None,
                             float(self.verdict.probability(d[i])) if self.verdict is not None else None))
        return out

    @property
    def explorer(self):
        """The engine's one `reid_core.explore.Explorer`: the results the apps remember
        (generated pictures, inversions, portraits, slider sensitivities, the identity map)."""
        if self._explorer is None:
            from .explore import Explorer
            with self._gallery_lock:
                if self._explorer is None:
                    self._explorer = Explorer(self)
        return self._explorer

    @property
    def fingerprint(self) -> str:
        """A short key of the loaded weights (preset, identity table, a slice of each network
        but the judge), for caches on disk: gallery features, examples, the page's first results."""
        return self.fingerprint_of("prior", "img2id", "img2noise")

    def fingerprint_of(self, *networks: str, seeded: bool = True) -> str:
        """A short key of the identity table, the generator and the named networks (of
        KEYED_NETWORKS): the preset's fields of the networks not named drop out, so that a cache
        made from some networks outlives a change to the others. `seeded` false: for what is
        drawn under given noises only, which best-of-K drawing (`identity_candidates`) leaves alone."""
        unknown = set(networks) - set(KEYED_NETWORKS)
        if unknown:
            raise ValueError(f"not a keyed network: {sorted(unknown)}")
        key = tuple(n for n in KEYED_NETWORKS if n in networks)
        if (key, seeded) not in self._fingerprints:
            # the uncertainty head is never keyed: adding it keeps every cache valid
            skip = {f.name for c in [UncertaintyConfig, *(KEYED_NETWORKS[n] for n in KEYED_NETWORKS if n not in key)]
                    for f in dataclasses.fields(c)} | UNKEYED_FIELDS | (set() if seeded else {"identity_candidates"})
            h = hashlib.sha1(json.dumps({k: v for k, v in dataclasses.asdict(self.preset).items() if k not in skip},
                                        indent=2).encode())
            h.update(np.ascontiguousarray(self.identity_table).tobytes())
            for name in ("generator", *key):
                net = getattr(self, name)
                if net is None:
                    h.update(f"no {name}".encode())
                    continue
                params = list(net.parameters())
                for p in params[:3] + params[-3:]:
                    h.update(p.detach().float().flatten()[:256].cpu().numpy().tobytes())
            self._fingerprints[key, seeded] = h.hexdigest()[:16]
        return self._fingerprints[key, seeded]

    def cache_key(self, part: str) -> str:
        """The key of a part precomputed at export (PRECOMPUTED_FROM): the fingerprint of the
        networks it is made from, and of no other."""
        return self.fingerprint_of(*PRECOMPUTED_FROM[part], seeded=part in DRAWN_BY_SEED)

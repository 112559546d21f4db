"""HAVANA's variational identity head (VNAE, digest §4) over Img2ID's frozen pooled feature.

    L = CE(cls(z_mu)) + L_JS-triplet(z_mu, z_sigma; margin 0.5) + alpha (L_recon + beta KL)

The pooled features of every training crop and its mirror image are computed once (the
trunk is frozen), so a step costs only the head: the whole stage takes minutes. What is saved
is the head without its training-only parts (decoder, classifier). With
`uncertainty_variational=False` the same head trains plainly (CE + batch-hard triplet on
z_mu): the comparison it must not fall behind. At the end the head stores the percentiles
of the mean sigma over the training photos, which turn a new photo's sigma into "surer than
x% of the training photos".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Preset
from ..losses import batch_hard_js_triplet_loss, batch_hard_triplet_loss, gaussian_kl_to_standard, label_smoothed_ce
from ..models import VariationalIdentityHead
from .augment import PKSampler
from .common import TrainData, finish, loss_record, write_log
from .joint import pooled_features
from .loop import TrainLoop, warmup_cosine

STAGE = "uncertainty"


def train_uncertainty(data: TrainData, img2id, preset: Preset, out: Path, *, device: str = "cpu",
                      resume: bool = False, progress: bool = True, component: str = STAGE,
                      pooled: torch.Tensor | None = None) -> VariationalIdentityHead:
    """`pooled`: Img2ID's pooled features of `data.crops` and their mirror images (2, N, F),
    when already computed (scripts/bench_havana.py trains several heads on one set)."""
    torch.manual_seed(preset.seed)
    img2id = img2id.to(device).eval().requires_grad_(False)
    if pooled is None:
        pooled = pooled_features(img2id, data.crops, device, progress=progress)  # (2, N, F): plain, mirrored
    head = VariationalIdentityHead(in_dim=img2id.feature_dim, latent_dim=preset.uncertainty_dim,
                                   hidden_dim=preset.uncertainty_hidden, num_classes=data.num_ids,
                                   variational=preset.uncertainty_variational).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=preset.uncertainty_lr, weight_decay=5e-4)
    steps = preset.uncertainty_steps
    sampler = PKSampler(data.labels, min(16, data.num_ids), 4)
    labels = data.labels_t
    loop = TrainLoop(component, out, seed=preset.seed, steps=steps, modules={component: head}, optimizer=opt,
                     schedules=[warmup_cosine(steps, max(1, steps // 20))], checkpoint_every=preset.checkpoint_every * 10,
                     resume=resume, progress=progress)

    def step_fn(step, rng, g):
        idx = torch.from_numpy(sampler.sample(rng))
        flip = (torch.rand(len(idx), generator=g) < 0.5).long()
        x = pooled[flip, idx].to(device)
        y = labels[idx].to(device)
        mu, sigma = head(x)
        if sigma is None:
            ce = label_smoothed_ce(head.logits(mu), y)
            return {"loss": ce + batch_hard_triplet_loss(mu, y, preset.triplet_margin), "ce": ce}
        z = mu + torch.randn(mu.shape, generator=g).to(device) * sigma
        ce = label_smoothed_ce(head.logits(z if preset.uncertainty_sampled_ce else mu), y)
        js = batch_hard_js_triplet_loss(mu, sigma, y, preset.uncertainty_margin)
        recon = F.mse_loss(head.decode(z), x)
        kl = gaussian_kl_to_standard(mu, sigma)
        elbo = recon + preset.uncertainty_beta * kl
        return {"loss": ce + js + preset.uncertainty_alpha * elbo, "ce": ce, "js": js, "recon": recon, "kl": kl}

    history = loop.run(step_fn)
    head.eval()
    if head.config.variational:
        with torch.no_grad():
            sig = torch.cat([head(pooled[0, i:i + 1024].to(device))[1] for i in range(0, pooled.shape[1], 1024)])
        quantiles = np.quantile(sig.mean(1).cpu().numpy(), np.linspace(0, 1, 21))
        head.register_to_config(sigma_quantiles=[float(v) for v in quantiles])
    head = head.for_inference()      # the decoder and classifier only train
    finish(head, out, component)
    write_log(out, component, loss_record(history, loop.minutes, variational=preset.uncertainty_variational))
    return head

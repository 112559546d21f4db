"""HAVANA's variation-normalized autoencoder (VNAE, Chen et al.; digest §4) over Img2ID's
pooled backbone feature: an identity head that says how sure it is.

    x (pooled feature) -> z_mu = f_mu(x), z_sigma = f_sigma(x)      (encoder, two MLPs)
    z = z_mu + eps * z_sigma                                         (reparameterised sample)
    x~ = decoder(z)                                                  (reconstruction of x)
    logits = classifier(z_mu)                                        (training identities)

Identity losses act on z_mu (CE) and on the distributions (Jensen-Shannon triplet); the
variance absorbs what varies within an identity. The test feature is z_mu; sigma is a
per-image uncertainty, which the engine turns into "how sure is this identity".
`variational=False` makes the same head without sigma and decoder: the plain comparison.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.BatchNorm1d(h), nn.SiLU(), nn.Linear(h, o))


class VariationalIdentityHead(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_dim: int = 1280, id_dim: int = 32, hidden_dim: int = 512, num_classes: int = 643,
                 variational: bool = True, sigma_quantiles: tuple = ()):
        """`sigma_quantiles`: the 0, 5, ..., 100th percentiles of the mean sigma over the training
        photos, set at the end of training: where a new photo's sigma falls among them."""
        super().__init__()
        self.f_mu = _mlp(in_dim, hidden_dim, id_dim)
        self.bnneck = nn.BatchNorm1d(id_dim)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(id_dim, num_classes, bias=False)
        if variational:
            self.f_sigma = _mlp(in_dim, hidden_dim, id_dim)
            self.decoder = _mlp(id_dim, hidden_dim, in_dim)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, in_dim) -> z_mu (B, id_dim), z_sigma (B, id_dim) > 0 (None when not variational)."""
        mu = self.f_mu(pooled)
        if not self.config.variational:
            return mu, None
        return mu, F.softplus(self.f_sigma(pooled)) + 1e-4

    def logits(self, mu: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bnneck(mu))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def certainty(self, mean_sigma):
        """Share of the training photos whose mean sigma is larger (less sure) than each of
        `mean_sigma` (array-like), in [0, 1]: 0.9 = surer than 90% of the training photos."""
        import numpy as np
        q = np.asarray(self.config.sigma_quantiles, np.float64)
        if q.size < 2:
            raise ValueError("this head was saved without its training sigma quantiles")
        pct = np.interp(np.asarray(mean_sigma, np.float64), q, np.linspace(0, 1, len(q)))
        return 1.0 - pct

"""HAVANA's variation-normalized autoencoder (VNAE, Chen et al.; digest §4) over Img2ID's
pooled backbone feature: an identity head that says how sure it is.

    h = encoder(x)                     x: Img2ID's pooled feature (frozen)
    z_mu = f_mu(h), z_sigma = f_sigma(h)
    z = z_mu + eps * z_sigma           (reparameterised sample)
    x~ = decoder(z)                    (reconstruction of x)
    logits = classifier(BNNeck(z_mu))  (training identities)

Identity losses act on z_mu (CE) and on the distributions (Jensen-Shannon triplet); the
variance absorbs what varies within an identity. The test feature is z_mu; sigma is a
per-image uncertainty, which the engine turns into "how sure is this identity".

Unlike the paper's two separate MLPs, f_mu and f_sigma share their hidden layer: the head
ships inside the 24 MB weights budget. The decoder and classifier only train: the shipped
head is `inference_only` (encoder, f_mu, f_sigma). `variational=False` makes the same head
without sigma and decoder: the plain comparison.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class VariationalIdentityHead(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_dim: int = 1280, latent_dim: int = 64, hidden_dim: int = 128, num_classes: int = 643,
                 variational: bool = True, inference_only: bool = False, sigma_quantiles: tuple = ()):
        """`sigma_quantiles`: the 0, 5, ..., 100th percentiles of the mean sigma over the training
        photos, set at the end of training: where a new photo's sigma falls among them."""
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.SiLU())
        self.f_mu = nn.Linear(hidden_dim, latent_dim)
        if variational:
            self.f_sigma = nn.Linear(hidden_dim, latent_dim)
        if not inference_only:
            self.bnneck = nn.BatchNorm1d(latent_dim)
            self.bnneck.bias.requires_grad_(False)
            self.classifier = nn.Linear(latent_dim, num_classes, bias=False)
            if variational:
                self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.SiLU(),
                                             nn.Linear(hidden_dim, in_dim))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, in_dim) -> z_mu (B, latent_dim), z_sigma (B, latent_dim) > 0 (None when not variational)."""
        h = self.encoder(pooled)
        mu = self.f_mu(h)
        if not self.config.variational:
            return mu, None
        return mu, F.softplus(self.f_sigma(h)) + 1e-4

    def logits(self, mu: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bnneck(mu))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def for_inference(self) -> "VariationalIdentityHead":
        """The same head without the parts that only train (decoder, classifier): what ships."""
        cfg = {k: v for k, v in self.config.items() if not k.startswith("_")}
        head = VariationalIdentityHead(**{**cfg, "inference_only": True})
        ours = head.state_dict()
        head.load_state_dict({k: v for k, v in self.state_dict().items() if k in ours}, strict=True)
        return head.eval()

    def certainty(self, mean_sigma):
        """Share of the training photos whose mean sigma is larger (less sure) than each of
        `mean_sigma` (array-like), in [0, 1]: 0.9 = surer than 90% of the training photos."""
        q = np.asarray(self.config.sigma_quantiles, np.float64)
        if q.size < 2:
            raise ValueError("this head was saved without its training sigma quantiles")
        pct = np.interp(np.asarray(mean_sigma, np.float64), q, np.linspace(0, 1, len(q)))
        return 1.0 - pct

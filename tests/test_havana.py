"""HAVANA's variational identity head: its losses, its training stage, and the engine's certainty."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_core.losses import batch_hard_js_triplet_loss, gaussian_js_divergence, gaussian_kl_to_standard
from reid_core.models import VariationalIdentityHead


def test_js_divergence_of_gaussians():
    mu = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    sigma = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [4.0, 4.0]])
    d = gaussian_js_divergence(mu, sigma)
    assert torch.allclose(d, d.T) and torch.allclose(d.diagonal(), torch.zeros(4), atol=1e-6)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-6)          # the same distribution
    assert d[0, 2] > 0 and d[0, 3] > 0                       # another mean, another spread
    # one dimension, equal variances: the moment-matched mixture has variance 1 + delta^2 / 4
    delta = 3.0
    vm = 1 + delta ** 2 / 4
    kl = 0.5 * (np.log(vm) + (1 + delta ** 2 / 4) / vm - 1)
    assert d[0, 2].item() == pytest.approx(kl, rel=1e-5)
    # a wide distribution is nearer to a far one than a narrow one is: the loss is variance aware
    wide = gaussian_js_divergence(torch.tensor([[0.0], [3.0]]), torch.tensor([[3.0], [1.0]]))[0, 1]
    narrow = gaussian_js_divergence(torch.tensor([[0.0], [3.0]]), torch.tensor([[0.3], [1.0]]))[0, 1]
    assert wide < narrow


def test_js_triplet_is_zero_when_identities_are_apart_and_positive_otherwise():
    y = torch.tensor([0, 0, 1, 1])
    sigma = torch.full((4, 8), 0.1)
    apart = torch.cat([torch.zeros(2, 8), torch.full((2, 8), 5.0)])
    assert batch_hard_js_triplet_loss(apart, sigma, y, margin=0.5).item() == pytest.approx(0.0, abs=1e-6)
    mixed = torch.tensor([[0.0] * 8, [5.0] * 8, [0.0] * 8, [5.0] * 8])
    assert batch_hard_js_triplet_loss(mixed, sigma, y, margin=0.5).item() > 1.0
    assert gaussian_kl_to_standard(torch.zeros(3, 4), torch.ones(3, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_certainty_places_sigma_among_the_training_photos():
    head = VariationalIdentityHead(in_dim=8, id_dim=4, hidden_dim=8, num_classes=3,
                                   sigma_quantiles=list(np.linspace(0.1, 0.3, 21)))
    c = head.certainty([0.05, 0.2, 0.5])
    np.testing.assert_allclose(c, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="quantiles"):
        VariationalIdentityHead(in_dim=8, id_dim=4, hidden_dim=8, num_classes=3).certainty([0.1])


def test_uncertainty_stage_ships_a_head_the_engine_uses(tiny_weights, synthetic_market):
    from reid_core.engine import ReIDEngine
    from reid_core.evaluate import evaluate
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    assert engine.uncertainty is not None and engine.uncertainty.config.variational
    q = np.asarray(engine.uncertainty.config.sigma_quantiles)
    assert len(q) == 21 and np.all(np.diff(q) >= 0) and q[0] > 0
    photos = sorted((synthetic_market / "query").glob("*.jpg"))[:3]
    sure = engine.identity_certainty(photos)
    assert len(sure) == 3 and all(0 <= s.certainty <= 1 and s.sigma > 0 for s in sure)
    assert "training photos" in sure[0].label
    # the same photo twice is as sure twice
    again = engine.identity_certainty([photos[0]])[0]
    assert again.sigma == pytest.approx(sure[0].sigma, rel=1e-5)
    res = evaluate(engine, synthetic_market, "havana", progress=False)
    assert 0 < res["mAP"] <= 1

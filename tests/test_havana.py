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
    head = VariationalIdentityHead(in_dim=8, latent_dim=4, hidden_dim=8, num_classes=3,
                                   sigma_quantiles=list(np.linspace(0.1, 0.3, 21)))
    c = head.certainty([0.05, 0.2, 0.5])
    np.testing.assert_allclose(c, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="quantiles"):
        VariationalIdentityHead(in_dim=8, latent_dim=4, hidden_dim=8, num_classes=3).certainty([0.1])


def test_the_shipped_head_keeps_only_what_inference_needs():
    torch.manual_seed(0)
    head = VariationalIdentityHead(in_dim=8, latent_dim=4, hidden_dim=8, num_classes=3).eval()
    small = head.for_inference()
    x = torch.randn(5, 8)
    for a, b in zip(head(x), small(x)):
        torch.testing.assert_close(a, b)
    assert not hasattr(small, "decoder") and not hasattr(small, "classifier") and small.config.inference_only
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in head.parameters())


def test_uncertainty_stage_ships_a_head_the_engine_uses(tiny_weights, synthetic_market):
    from reid_core.engine import ReIDEngine
    from reid_core.evaluate import evaluate
    engine = ReIDEngine.from_pretrained(tiny_weights, device="cpu")
    assert engine.uncertainty is not None and engine.uncertainty.config.variational
    assert engine.uncertainty.config.inference_only
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


def test_the_head_is_added_to_a_weights_folder_without_touching_the_rest(tiny_weights, tmp_path):
    """export_weights.py --only uncertainty: fp16 head in, training-log record kept, every cache key
    (the engine fingerprint) unchanged."""
    import json
    import shutil

    from conftest import script_module
    from safetensors.torch import load_file

    from reid_core.engine import PRECOMPUTED_FROM, ReIDEngine
    with script_module("export_weights") as mod:
        w = tmp_path / "w"
        shutil.copytree(tiny_weights, w)
        shutil.rmtree(w / "uncertainty")
        log = json.loads((w / "training_log.json").read_text())
        (w / "training_log.json").write_text(json.dumps({k: v for k, v in log.items() if k != "uncertainty"}))
        before = ReIDEngine.from_pretrained(w, device="cpu")
        assert before.uncertainty is None and before.certainty_or_none(before.generate(0)[0]) is None
        mod.export(tiny_weights, w, fp16=True, only=["uncertainty"])
    tensors = load_file(w / "uncertainty" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for k, v in tensors.items() if k.endswith("weight") and v.ndim == 2)
    assert all(v.dtype == torch.float32 for k, v in tensors.items() if "running" in k)
    after = ReIDEngine.from_pretrained(w, device="cpu")
    assert after.fingerprint == before.fingerprint and after.uncertainty is not None
    assert all(after.cache_key(part) == before.cache_key(part) for part in PRECOMPUTED_FROM)
    logged = json.loads((w / "training_log.json").read_text())
    assert "uncertainty" in logged and set(log) - {"uncertainty"} <= set(logged)
    assert logged["history"][-1]["what"] == "uncertainty"    # counted in the weights' training time

"""Schedule, DDIM sampling/inversion math and the networks' shapes, on tiny models."""
from __future__ import annotations

import math

import pytest
import torch

from reid_core.diffusion import ddim_invert, ddim_sample
from reid_core.models import IdentityEncoder, IdentityPrior, IdentityUNet
from reid_core.schedule import cosine_alphas_cumprod, make_scheduler


def test_schedule_matches_the_paper():
    acp = cosine_alphas_cumprod()
    signal = acp.sqrt()
    assert signal[-1].item() == pytest.approx(0.02, abs=1e-9)       # t = 1
    assert signal[0].item() == pytest.approx(math.cos(math.acos(0.95) + (math.acos(0.02) - math.acos(0.95)) / 1000))
    sched = make_scheduler()
    assert torch.allclose(sched.alphas_cumprod.double(), acp, atol=1e-6)
    sched.set_timesteps(10)
    # trailing spacing: t = 1.0, 0.9, ..., 0.1 as in the paper's Keras sampler
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]


class _ZeroEps(torch.nn.Module):
    def forward(self, x, noise_var, identity, extra_features=None):
        return torch.zeros_like(x)


def test_ddim_invert_then_sample_is_exact_for_a_fixed_point_model():
    # With eps = 0 every DDIM step is a pure rescaling, so inversion must undo sampling exactly.
    x0 = torch.rand(2, 3, 8, 4) * 2 - 1
    z = ddim_invert(_ZeroEps(), x0, torch.zeros(2, 4), steps=10)
    torch.testing.assert_close(ddim_sample(_ZeroEps(), torch.zeros(2, 4), z, steps=10), x0.clamp(-1, 1),
                               atol=1e-5, rtol=0)


def test_sampling_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1,
                        id_dim=4, num_identities=3).eval()
    torch.nn.init.normal_(unet.head.weight, std=0.1)  # the zero-initialised head would hide bugs
    ident = torch.randn(3, 4)
    noise = torch.randn(3, 3, 16, 8, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(unet, ident, noise)
    b = ddim_sample(unet, ident, noise)
    assert torch.equal(a, b)
    single = ddim_sample(unet, ident[1:2], noise[1:2])
    torch.testing.assert_close(single, a[1:2], atol=1e-5, rtol=0)


def test_network_shapes_and_identity_conditioning():
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16, 32), layers_per_block=2,
                        id_dim=4, num_identities=5)
    torch.nn.init.normal_(unet.head.weight, std=0.1)
    x = torch.randn(2, 3, 16, 8)
    var = torch.rand(2)
    out1 = unet(x, var, torch.zeros(2, 4))
    out2 = unet(x, var, torch.ones(2, 4))
    assert out1.shape == x.shape and not torch.allclose(out1, out2)
    with pytest.raises(ValueError, match="identity"):
        unet(x, var, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="divide"):
        IdentityUNet(sample_size=(10, 8), block_out_channels=(8, 16, 32))
    enc = IdentityEncoder(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4)
    assert enc(x).shape == (2, 4)
    prior = IdentityPrior(id_dim=4, hidden_dim=16, num_layers=2)
    assert prior(torch.randn(5, 4), torch.rand(5)).shape == (5, 4)


def test_paper_preset_has_the_papers_size():
    unet = IdentityUNet(sample_size=(64, 32), block_out_channels=(48, 96, 192, 384), layers_per_block=2,
                        id_dim=32, num_identities=0)
    n = sum(p.numel() for p in unet.parameters())
    assert 9.5e6 < n < 10.2e6  # the paper's Keras U-Net: 9.8 M

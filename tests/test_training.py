"""The training recipe: the loop's schedules, the joint stage's gradient paths, identity that
matters, and `--init` continuing from a weights folder. Tiny models on synthetic data."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from reid_core.config import PRESETS, Preset, get_preset
from reid_core.data import load_split, relabel
from reid_core.engine import ReIDEngine
from reid_core.evaluate import generate_rows
from reid_core.schedule import make_scheduler
from reid_core.training import train
from reid_core.training.common import new_generator, new_img2id
from reid_core.diffusion import gaussian_blur
from reid_core.training.joint import dcac_condition, joint_generator_loss, recognition_loss
from reid_core.training.loop import load_checkpoint, warmup_cosine
from reid_core.weights import load_component


def test_presets_round_trip_and_reject_unknown_fields(tmp_path):
    for name, preset in PRESETS.items():
        preset.save(tmp_path / f"{name}.json")
        assert Preset.load(tmp_path / f"{name}.json") == preset, name
    with pytest.raises(ValueError, match="unknown"):
        Preset.from_dict({"name": "x", "no_such_field": 1})
    with pytest.raises(ValueError, match="recipe"):
        get_preset("cpu", recipe="other")
    with pytest.raises(ValueError, match="FiLM"):
        get_preset("cpu", conditioning="concat")


def test_warmup_cosine_schedule():
    f = warmup_cosine(110, 10, floor=0.1, start=10)
    assert f(0) == 0.0 and f(9) == 0.0            # before its phase starts
    assert f(10) == pytest.approx(0.1) and f(19) == pytest.approx(1.0)
    assert f(20) == pytest.approx(1.0) and f(110) == pytest.approx(0.1)


def test_dcac_condition_mixes_unit_rows_by_class_probability():
    table = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    sharp = dcac_condition(torch.tensor([[50.0, 0.0]]), table, tau=1.0)
    torch.testing.assert_close(sharp, torch.tensor([[1.0, 0.0]]), atol=1e-6, rtol=0)
    even = dcac_condition(torch.tensor([[1.0, 1.0]]), table, tau=0.6)
    torch.testing.assert_close(even, torch.tensor([[0.5, 0.5]]))


def test_joint_stage_diffusion_gradients_reach_img2id_and_the_table():
    preset = get_preset("tiny", cond_from_image=0.0, identity_dropout=0.0)
    torch.manual_seed(0)
    gen, enc = new_generator(preset, num_ids=4), new_img2id(preset)
    torch.nn.init.normal_(gen.body.head.weight, std=0.1)  # a zero head passes no gradient back
    x0 = torch.rand(8, 3, *preset.image_size) * 2 - 1
    pooled = enc.pooled(x0).detach()
    y = torch.arange(4).repeat(2)
    losses = joint_generator_loss(gen, enc, make_scheduler(), x0, pooled, y, preset, torch.Generator().manual_seed(0))
    losses["diffusion"].backward()  # the diffusion term alone
    table_grad = gen.identity_embedding.weight.grad
    head_grads = [p.grad for n, p in enc.named_parameters() if not n.startswith("trunk")]
    assert table_grad is not None and table_grad.abs().sum() > 0
    assert all(g is not None for g in head_grads) and sum(g.abs().sum() for g in head_grads) > 0
    assert all(p.grad is None for n, p in enc.named_parameters() if n.startswith("trunk"))


def test_recognition_loss_trains_the_generator_not_the_recogniser():
    """With `id_loss_weight`, Img2ID (frozen, eval mode) recognises the generator's predicted
    clean image: the gradient reaches the U-Net (and, through the condition c, what c is made
    of, as the diffusion loss does), never Img2ID as a recogniser: no trunk gradient, no BN
    statistics moved, and the recogniser alone passes gradient only to the image."""
    preset = get_preset("tiny", cond_from_image=0.0, identity_dropout=0.0, id_loss_weight=1.0, id_loss_max_t=1000)
    torch.manual_seed(0)
    gen, enc = new_generator(preset, num_ids=4), new_img2id(preset)
    torch.nn.init.normal_(gen.body.head.weight, std=0.1)
    x0 = torch.rand(8, 3, *preset.image_size) * 2 - 1
    pooled = enc.pooled(x0).detach()
    y = torch.arange(4).repeat(2)
    buffers = {n: b.clone() for n, b in enc.named_buffers()}
    losses = joint_generator_loss(gen, enc, make_scheduler(), x0, pooled, y, preset, torch.Generator().manual_seed(0))
    assert enc.training and losses["identity"] > 0
    losses["identity"].backward()  # the recognition term alone
    unet_grad = sum(p.grad.abs().sum() for n, p in gen.named_parameters()
                    if p.grad is not None and not n.startswith("identity_embedding"))
    assert unet_grad > 0
    assert all(p.grad is None for n, p in enc.named_parameters() if n.startswith("trunk"))
    assert all(torch.equal(b, buffers[n]) for n, b in enc.named_buffers())

    enc.zero_grad(set_to_none=True)
    table = gen.identity_embedding.weight.detach().clone().requires_grad_(True)
    images = x0.clone().requires_grad_(True)
    recognition_loss(enc, images, table, y, preset).backward()
    assert images.grad.abs().sum() > 0
    assert table.grad is None and all(p.grad is None for p in enc.parameters())


def test_gaussian_blur_keeps_flat_images_and_removes_fine_texture():
    flat = torch.full((2, 3, 16, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0), flat)
    checker = (torch.arange(16)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1  # the finest texture there is
    x = checker.expand(1, 3, 16, 8)
    assert gaussian_blur(x, 1.0).abs().max() < 0.2 and torch.equal(gaussian_blur(x, 0.0), x)


@pytest.fixture(scope="module")
def identity_run(tmp_path_factory, synthetic_market):
    """The tiny joint recipe: a few hundred generator steps."""
    out = tmp_path_factory.mktemp("identity-run")
    train(synthetic_market, get_preset("tiny"), out, stages=["joint", "prior", "img2noise"],
          progress=False)
    return out


def test_identity_matters_after_a_few_hundred_steps(identity_run, synthetic_market):
    """Two identities under the same noise give clearly different people, and each generated
    person looks most like the training images of the identity asked for."""
    engine = ReIDEngine.from_pretrained(identity_run, load_baseline=False)
    n = engine.num_identities
    imgs = generate_rows(engine, np.arange(n), range(4)).astype(np.float32)  # (n * 4, H, W, 3)
    same_noise = imgs.reshape(n, 4, *imgs.shape[1:])
    across_ids = np.mean([np.abs(same_noise[a] - same_noise[b]).mean() for a in range(n) for b in range(a)])
    assert across_ids > 15, across_ids  # grey levels; identity moved ~0.2 in the shipped model of 2026-11-21
    train_split = load_split(synthetic_market, "train", engine.image_size, progress=False)
    labels, _ = relabel(train_split.pids)
    means = np.stack([train_split.images[labels == k].astype(np.float32).mean(0) for k in range(n)])
    nearest = ((imgs[:, None] - means[None]) ** 2).mean((2, 3, 4)).argmin(1)
    assert np.mean(nearest == np.repeat(np.arange(n), 4)) >= 0.5  # chance: 1/8


def test_init_continues_from_a_weights_folder(identity_run, synthetic_market, tmp_path):
    preset = get_preset("tiny", img2id_steps=0, gen_steps=3)
    out = train(synthetic_market, preset, tmp_path / "more", stages=["joint"], init=identity_run, progress=False)
    first = load_checkpoint(out / "checkpoints" / "joint.pt")["history"][0]
    fresh = train(synthetic_market, preset, tmp_path / "fresh", stages=["joint"], progress=False)
    assert first < 0.7 * load_checkpoint(fresh / "checkpoints" / "joint.pt")["history"][0]
    started = load_component(out, "img2id")  # no Img2ID phase: its trunk is the init's, unchanged
    for k, v in load_component(identity_run, "img2id").state_dict().items():
        if k.startswith("trunk"):
            assert torch.equal(v, started.state_dict()[k]), k
    with pytest.raises(ValueError, match="cond_dim"):
        train(synthetic_market, get_preset("tiny", cond_dim=8), tmp_path / "other", stages=["joint"],
              init=identity_run, progress=False)


def test_img2noise_chain_loss_reads_real_images_without_inverted_targets(identity_run, synthetic_market, tmp_path,
                                                                         monkeypatch):
    """With `img2noise_recon_all_real` the loss through the sampling chain reads every real
    image, while the target loss keeps to the DDIM-inverted subset; without it both read the subset."""
    import reid_core.training.img2noise as stage
    from reid_core.training.common import load_train_data

    seen = []
    real_sample = stage.ddim_sample

    def spy(generator, ids, *a, **kw):
        seen.append(ids[: len(ids) // 2].detach().clone())  # the batch's real half comes first
        return real_sample(generator, ids, *a, **kw)

    monkeypatch.setattr(stage, "ddim_sample", spy)
    preset = get_preset("tiny", img2noise_steps=8, img2noise_recon_every=1, img2noise_recon_weight=1.0,
                        img2noise_real_images=4, img2noise_recon_loss="mse")
    data = load_train_data(synthetic_market, preset, progress=False)
    parts = {c: load_component(identity_run, c) for c in ("generator", "prior", "img2id")}
    all_ids = stage.embed_crops(parts["img2id"], data.crops, "cpu")

    def crops_read(all_real):
        seen.clear()
        p = dataclasses.replace(preset, img2noise_recon_all_real=all_real)
        stage.train_img2noise(data, parts["generator"], parts["prior"], parts["img2id"], p,
                              tmp_path / str(all_real), progress=False)
        ids = torch.cat(seen)
        return {int(((all_ids - v) ** 2).sum(1).argmin()) for v in ids}

    subset = crops_read(False)
    assert len(subset) <= 4
    assert len(crops_read(True) - subset) > 0
    with pytest.raises(ValueError, match="img2noise_recon_loss"):
        get_preset("tiny", img2noise_recon_loss="l2")


def test_img2noise_stage_trains_the_identity_input_when_asked(synthetic_market, identity_run, tmp_path):
    """`noise_id_hidden` > 0: the stage builds an Img2Noise that reads the batch's identities,
    the identity MLP gets trained (its zero-started output layer moves), and the saved net
    loads back reading them: one photo under two identities gets two noises."""
    import reid_core.training.img2noise as stage
    from reid_core.training.common import load_train_data

    preset = get_preset("tiny", img2noise_steps=6, img2noise_recon_every=2, img2noise_real_images=4,
                        noise_id_hidden=8)
    data = load_train_data(synthetic_market, preset, progress=False)
    parts = {c: load_component(identity_run, c) for c in ("generator", "prior", "img2id")}
    stage.train_img2noise(data, parts["generator"], parts["prior"], parts["img2id"], preset, tmp_path,
                          progress=False)
    net = load_component(tmp_path, "img2noise")
    assert net.reads_identity and net.config.id_dim == preset.id_dim
    assert net.identity_shift[-1].weight.abs().max() > 0
    x = data.images[:1].expand(2, -1, -1, -1)
    with torch.no_grad():
        z = net(x, parts["generator"].identity_rows(torch.tensor([0, 1])))
    assert (z[0] - z[1]).abs().max() > 0


def test_psnr_loss_is_the_mean_per_image_psnr():
    """`img2noise_recon_loss="psnr"` optimises the benchmark's figure: log10(4) minus the mean
    of each image's PSNR (peak-to-peak 2 on [-1, 1]) over 10, the images' PSNRs averaged, not
    the PSNR of the batch's pooled error."""
    from skimage.metrics import peak_signal_noise_ratio
    from reid_core.training.img2noise import psnr_loss
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 4, generator=g) * 2 - 1
    rec = x + torch.tensor([0.01, 0.1, 0.3])[:, None, None, None] * torch.randn(x.shape, generator=g)
    each = [peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=2.0) for a, b in zip(x.double(), rec.double())]
    assert psnr_loss(rec, x).item() == pytest.approx(math.log10(4) - np.mean(each) / 10, abs=1e-4)
    pooled = peak_signal_noise_ratio(x.numpy(), rec.numpy(), data_range=2.0)
    assert abs(np.mean(each) - pooled) > 1  # the two figures differ: the loss is the first


def test_img2noise_batch_mirrors_real_images_and_drops_their_targets():
    """`img2noise_flip` shows that share of the real photos mirrored; a mirrored photo has no
    known noise, so only the chain loss reads it. Bank images are never mirrored, and the
    draw is a function of the step's rng (resume stays exact)."""
    from reid_core.training.img2noise import draw_batch

    images = torch.arange(10 * 3 * 4 * 2, dtype=torch.float32).reshape(10, 3, 4, 2)
    bank = -torch.arange(6 * 3 * 4 * 2, dtype=torch.float32).reshape(6, 3, 4, 2) - 1
    target_of = torch.tensor([0, -1, 1, -1, 2, -1, 3, -1, 4, -1])

    def draw(flip, seed=3):
        return draw_batch(np.random.default_rng(seed), images, target_of, bank,
                          get_preset("tiny", img2noise_batch=64, img2noise_flip=flip))

    i, j, x, has = draw(0.0)
    assert torch.equal(x[:32], images[i]) and torch.equal(x[32:], bank[j])
    assert torch.equal(has, torch.cat([target_of[i] >= 0, torch.ones(32, dtype=torch.bool)]))
    i, j, x, has = draw(0.5)
    mirrored = torch.tensor([torch.equal(x[k], images[i[k]].flip(2)) for k in range(32)])
    assert 0 < int(mirrored.sum()) < 32  # about half, never the bank
    assert all(torch.equal(x[k], images[i[k]]) for k in range(32) if not mirrored[k])
    assert torch.equal(x[32:], bank[j])
    assert not has[:32][mirrored].any() and has[32:].all()
    assert torch.equal(has[:32][~mirrored], target_of[i][~mirrored] >= 0)
    i, _, x, has = draw(1.0)
    assert torch.equal(x[:32], images[i].flip(3)) and not has[:32].any()
    for a, b in zip(draw(0.5), draw(0.5)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="chain loss"):
        get_preset("tiny", img2noise_flip=0.5, img2noise_recon_weight=0.0)
    with pytest.raises(ValueError, match="share"):
        get_preset("tiny", img2noise_flip=1.5)


def test_inverted_noise_cache_belongs_to_its_subset(identity_run, tmp_path, monkeypatch):
    """The DDIM-inverted targets are cached per run; a cache made for another subset of real
    images (another seed picks another one) is made anew, not read as this subset's."""
    import reid_core.training.img2noise as stage

    calls = []
    real_invert = stage.ddim_invert
    monkeypatch.setattr(stage, "ddim_invert", lambda *a, **kw: calls.append(1) or real_invert(*a, **kw))
    gen = load_component(identity_run, "generator")
    preset = get_preset("tiny")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, *preset.image_size, generator=g) * 2 - 1
    ids = torch.nn.functional.normalize(torch.randn(6, preset.id_dim, generator=g), dim=1)
    (tmp_path / "checkpoints").mkdir()

    def invert(subset):
        return stage.inverted_noise(gen, images[:3], ids[:3], np.asarray(subset), preset, tmp_path, "cpu", False)

    first = invert([0, 2, 4])
    assert len(calls) == 1 and torch.equal(invert([0, 2, 4]), first) and len(calls) == 1
    invert([1, 2, 4])
    assert len(calls) == 2


def test_distill_from_the_engines_kept_chains(identity_run, synthetic_market, tmp_path):
    """distill_bank_sampler 'engine': the bank holds the chains the --init weights' engine keeps
    when it draws training rows by seed (guidance, Img2ID's steer, best of 2): stepping each
    chain's last state with its stored prediction gives the picture Generate shows, and the first
    state is one of that seed's candidate noises. The student, taught each step's prediction,
    then lands nearer those pictures in one pass a step than the teacher's one pass does."""
    import shutil
    from reid_core.diffusion import ddim_sample
    from reid_core.training.distill import chain_ends, engine_bank_plan
    from reid_core.weights import PRESET_FILE
    init = tmp_path / "init"
    shutil.copytree(identity_run, init, ignore=shutil.ignore_patterns("checkpoints", "snapshots"))
    sampling = dict(guidance_scale=3.0, guidance_start=2, identity_candidates=2, identity_steer=0.3)
    dataclasses.replace(Preset.load(init / PRESET_FILE), **sampling).save(init / PRESET_FILE)
    preset = get_preset("tiny", **sampling, distill_steps=300, distill_lr=1e-3, distill_warmup=5, distill_bank=12,
                        distill_bank_sampler="engine")
    out = train(synthetic_market, preset, tmp_path / "d", stages=["distill"], init=init, progress=False)

    engine = ReIDEngine.from_pretrained(init, load_baseline=False)
    rows, seeds, _ = engine_bank_plan(engine, 12)
    assert rows.tolist() == [k % engine.num_identities for k in range(12)]
    with np.load(out / "checkpoints" / "distill_bank.npz") as z:
        bank = {k: torch.from_numpy(z[k]) for k in ("states", "targets", "ids", "timesteps", "scales")}
    assert torch.equal(bank["ids"], torch.from_numpy(engine.identity_table[rows]))
    assert bank["scales"].tolist() == [[1.0, 1.0] + [3.0] * (preset.sample_steps - 2)] * 12
    for i in (0, 5, 11):
        shown = np.asarray(engine.generate(engine.identity_table[rows[i]], seed=int(seeds[i]))[0], np.float32)
        chain = bank | {k: bank[k][i:i + 1] for k in ("states", "targets", "ids")}
        rebuilt = (chain_ends(chain, engine.generator)[0].permute(1, 2, 0).numpy() + 1) * 127.5
        assert np.abs(rebuilt - shown).mean() < 1.0, i  # grey levels: the chain is stored at fp16
        starts = torch.from_numpy(engine.candidate_noises([int(seeds[i])], 2)[:, 0]).half()
        assert min(float((bank["states"][i, 0] - s).abs().max()) for s in starts) == 0.0

    # one pass a step from the chains' noises now lands nearer the pictures Generate kept than the
    # teacher's one-pass (unguided, unsteered) chain does
    teacher, student = load_component(init, "generator"), load_component(out, "generator")
    ends, z, c = chain_ends(bank, teacher), bank["states"][:, 0].float(), bank["ids"]
    calls = []
    student.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    with torch.no_grad():
        plain = (ddim_sample(teacher, c, z, preset.sample_steps) - ends).abs().mean()
        fast = (ddim_sample(student, c, z, preset.sample_steps, guidance_scale=3.0, guidance_start=2) - ends).abs().mean()
    assert calls == [12] * preset.sample_steps
    assert fast < 0.8 * plain, (float(fast), float(plain))


def test_set_takes_json_values_and_bare_words():
    from reid_core.training.pipeline import _set_value
    assert _set_value("300") == 300 and _set_value("2e-4") == 2e-4 and _set_value("true") is True
    assert _set_value("[64, 32]") == [64, 32] and _set_value('"mse"') == "mse"
    assert _set_value("mse") == "mse" and _set_value("l1") == "l1"


def test_distill_stage_learns_guidance_in_one_pass(identity_run, synthetic_market, tmp_path):
    """Guidance distillation: the student's one pass at scale w lands much nearer the teacher's
    two-pass guided prediction than the teacher's own conditional does, w = 1 stays the
    conditional prediction, the table is untouched, and sampling costs one pass per step."""
    from reid_core.diffusion import ddim_sample, guided_eps
    from reid_core.schedule import noise_variance
    preset = get_preset("tiny", guidance_scale=3.0, guidance_start=2, distill_steps=300, distill_lr=1e-3,
                        distill_warmup=5, distill_bank=32)
    out = train(synthetic_market, preset, tmp_path / "d", stages=["distill"], init=identity_run, progress=False)
    with np.load(out / "checkpoints" / "distill_bank.npz") as bank:  # the teacher's chains, as the engine samples
        assert bank["states"].shape == (32, preset.sample_steps, 3, *preset.image_size)
        deployed = [1.0, 1.0] + [3.0] * (preset.sample_steps - 2)
        assert bank["scales"].tolist() == [deployed] * 24 + [[1.0] * preset.sample_steps] * 8
    teacher, student = load_component(identity_run, "generator"), load_component(out, "generator")
    assert student.distilled_guidance and not teacher.distilled_guidance
    assert torch.equal(student.identity_embedding.weight, teacher.identity_embedding.weight)

    g = torch.Generator().manual_seed(0)
    split = load_split(synthetic_market, "train", preset.image_size, progress=False)
    x0 = torch.from_numpy(split.images[::7][:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    c = teacher.identity_rows(torch.from_numpy(relabel(split.pids)[0][::7][:16]))
    sched = make_scheduler()
    t = torch.randint(100, 900, (len(x0),), generator=g)
    x_t = sched.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    var = noise_variance(sched, t)
    with torch.no_grad():
        cond = teacher(x_t, var, c)
        for w, share in ((3.0, 0.5), (5.0, 0.75)):  # the preset's scale is drawn more often
            target = guided_eps(teacher, x_t, var, c, w)
            before = (cond - target).abs().mean()
            after = (student(x_t, var, c, guidance=torch.full((len(x0),), w)) - target).abs().mean()
            assert after < share * before, (w, float(after), float(before))
        assert (student(x_t, var, c) - cond).abs().mean() < 0.5 * (cond - guided_eps(teacher, x_t, var, c, 3.0)).abs().mean()

    calls = []
    student.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    ddim_sample(student, c[:1], torch.randn(1, 3, *preset.image_size, generator=g), guidance_scale=3.0,
                guidance_start=2)
    assert calls == [1] * preset.sample_steps  # one pass per step, guided or not


def test_joint_stage_learns_the_pictures_generate_keeps(identity_run, synthetic_market, tmp_path):
    """gen_bank: the pictures the --init weights' engine shows for training rows by seed (guidance,
    Img2ID's steer, best of 2) are drawn once and cached, and a share of each generator batch is
    made of them under their rows: the generator then denoises those pictures better than the
    same run without them does (rejection-sampling fine-tuning)."""
    import shutil
    from reid_core.data import to_tensor
    from reid_core.schedule import make_scheduler
    from reid_core.training.common import diffusion_loss
    from reid_core.training.distill import engine_bank_plan
    from reid_core.weights import PRESET_FILE
    init = tmp_path / "init"
    shutil.copytree(identity_run, init, ignore=shutil.ignore_patterns("checkpoints", "snapshots"))
    sampling = dict(guidance_scale=3.0, guidance_start=2, identity_candidates=2, identity_steer=0.3)
    dataclasses.replace(Preset.load(init / PRESET_FILE), **sampling).save(init / PRESET_FILE)
    run = dict(**sampling, img2id_steps=0, gen_steps=200, gen_lr=1e-3, gen_warmup=5)
    with_bank = train(synthetic_market, get_preset("tiny", **run, gen_bank=12, gen_bank_share=0.5),
                      tmp_path / "b", stages=["joint"], init=init, progress=False)
    without = train(synthetic_market, get_preset("tiny", **run), tmp_path / "n", stages=["joint"], init=init,
                    progress=False)

    engine = ReIDEngine.from_pretrained(init, load_baseline=False)
    rows, seeds, _ = engine_bank_plan(engine, 12, "deployed pictures")
    with np.load(with_bank / "checkpoints" / "deployed_pictures.npz") as z:
        images, bank_rows = z["images"], z["rows"]
    assert bank_rows.tolist() == rows.tolist()
    shown = np.stack([np.asarray(engine.generate(engine.identity_table[r], seed=int(s))[0]) for r, s in zip(rows, seeds)])
    assert np.abs(images.astype(int) - shown).max() <= 1

    def loss_on_bank(gen) -> float:  # the training loss, on the same noises and levels for both
        with torch.no_grad():
            return float(diffusion_loss(gen, make_scheduler(), to_tensor(images).repeat(8, 1, 1, 1),
                                        gen.identity_rows(torch.from_numpy(bank_rows).long()).repeat(8, 1),
                                        torch.Generator().manual_seed(0)))
    learned, plain = loss_on_bank(load_component(with_bank, "generator")), loss_on_bank(load_component(without, "generator"))
    assert learned < 0.9 * plain, (learned, plain)

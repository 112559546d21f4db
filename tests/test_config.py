"""Presets: one small config per component, merged into one flat, round-tripping file."""
from __future__ import annotations

import dataclasses
import json

import pytest

from reid_core.config import COMPONENTS, PRESETS, BaselineConfig, PoseConfig, Preset, PriorConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_its_file(name, tmp_path):
    preset = PRESETS[name]
    assert Preset.from_dict(json.loads(preset.to_json())) == preset
    preset.save(tmp_path / "preset.json")
    assert Preset.load(tmp_path / "preset.json") == preset


def test_components_partition_the_preset():
    own = [f.name for c in COMPONENTS for f in dataclasses.fields(c)]
    assert len(own) == len(set(own)), "a field belongs to one component"
    shared = {"name", "recipe", "image_size", "id_dim", "seed", "sample_steps", "guidance_scale", "guidance_steps",
              "guidance_start", "guidance_every", "identity_steer", "identity_steer_window", "identity_steer_blur",
              "identity_candidates", "known_identity_cos",
              "checkpoint_every", "snapshot_every"}
    assert set(own) | shared == {f.name for f in dataclasses.fields(Preset)} and not set(own) & shared


@pytest.mark.parametrize("cls", COMPONENTS, ids=lambda c: c.__name__)
def test_each_component_config_round_trips(cls):
    part = PRESETS["cpu"].component(cls)
    assert isinstance(part, cls)
    back = json.loads(json.dumps(dataclasses.asdict(part)))
    assert cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in back.items()}) == part
    for f in dataclasses.fields(cls):
        assert getattr(part, f.name) == getattr(PRESETS["cpu"], f.name)


def test_a_preset_file_from_before_the_split_loads_with_the_settings_it_was_trained_with():
    old = json.loads(PRESETS["cpu"].to_json())
    for new_field in ("prior_warmup", "img2id_warmup_fraction", "img2id_K", "img2noise_warmup", "pose_warmup",
                      "baseline_warmup_fraction", "baseline_weight_decay", "baseline_P", "baseline_K"):
        del old[new_field]
    p = Preset.from_dict(old)
    # the values that were written into the training code before they became fields
    assert (p.prior_warmup, p.img2noise_warmup, p.pose_warmup) == (100, 100, 200)
    assert (p.img2id_warmup_fraction, p.baseline_warmup_fraction, p.baseline_weight_decay) == (0.1, 0.1, 5e-4)
    assert (p.baseline_P, p.baseline_K, p.img2id_K) == (16, 4, 4)
    assert p == PRESETS["cpu"]


def test_overrides_and_unknown_fields():
    p = get_preset("tiny", pose_warmup=7, baseline_P=8)
    assert p.component(PoseConfig).pose_warmup == 7 and p.component(BaselineConfig).baseline_P == 8
    assert p.component(PriorConfig) == PRESETS["tiny"].component(PriorConfig)
    with pytest.raises(ValueError, match="unknown preset fields"):
        Preset.from_dict({"gen_lr": 1e-3, "not_a_field": 1})
    with pytest.raises(ValueError, match="recipe"):
        Preset(recipe="nope")


def test_two_downstream_invocations_each_record_only_their_own_fields(tmp_path):
    """Pose in one process and img2noise in another, each with its own step count: the run's
    preset.json ends with both (whichever wrote last), and a shared field that disagrees with
    what the earlier stages trained with is refused plainly."""
    from reid_core.training.pipeline import RECIPE_STAGES, record_preset
    path, order = tmp_path / "preset.json", RECIPE_STAGES["joint"]
    record_preset(path, get_preset("tiny", seed=5), order, order)
    record_preset(path, get_preset("tiny", seed=5, pose_steps=11, img2noise_steps=999), ["pose"], order)
    record_preset(path, get_preset("tiny", seed=5, img2noise_steps=22, synth_images=33, pose_steps=999),
                  ["prior", "img2noise", "uncertainty"], order)
    saved = Preset.load(path)
    assert (saved.pose_steps, saved.img2noise_steps, saved.synth_images, saved.seed) == (11, 22, 33, 5)
    with pytest.raises(ValueError, match="seed"):
        record_preset(path, get_preset("tiny", seed=0), ["pose"], order)
    assert Preset.load(path) == saved

"""The toy ViT's pre-training on the synthetic scenes (ovis.train.vision_pretrain, `ovis pretrain-vision`)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import ovis
from ovis.cli import main
from ovis.data import synth
from ovis.errors import ConfigError
from ovis.train import vision_pretrain
from ovis.train.vision_pretrain import VisionPretrainConfig, pretrain_vision, quarter_of_patches


@pytest.fixture
def toy(one_thread):
    torch.manual_seed(0)
    return ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_quarters_of_a_four_by_four_grid():
    # raster order: rows of four patches; the top-left quarter is patches 0, 1, 4, 5
    assert quarter_of_patches(4).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert quarter_of_patches(2).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="even patch grid"):
        quarter_of_patches(3)


def test_the_backbone_learns_the_scenes_and_nothing_else_changes(toy):
    model, processor = toy
    before = pretrain_vision(model, processor, VisionPretrainConfig(steps=0, measure_scenes=128), progress=False)
    others = {name: _state(getattr(model, name)) for name in ("llm", "vte")}
    head = _state(model.visual_tokenizer.head)
    backbone = _state(model.visual_tokenizer.backbone)
    flags = [p.requires_grad for p in model.parameters()]

    after = pretrain_vision(
        model, processor, VisionPretrainConfig(steps=60, batch_size=32, measure_scenes=128), progress=False
    )
    # Measured on scenes it never trained on: shapes are learned.
    assert after.shape_accuracy > before.shape_accuracy + 0.15, (before, after)
    assert after.colour_accuracy >= 0.9, after
    # ...and each patch's quarter (from 0.25 untrained): what lets a visual word say where it is.
    assert after.quarter_accuracy > before.quarter_accuracy + 0.2, (before, after)
    assert after.final_loss is not None and before.final_loss is None
    changed = [k for k, v in _state(model.visual_tokenizer.backbone).items() if not torch.equal(v, backbone[k])]
    assert changed, "the backbone did not train"
    for name, state in others.items():
        assert all(torch.equal(v, state[k]) for k, v in getattr(model, name).state_dict().items()), name
    assert all(torch.equal(v, head[k]) for k, v in model.visual_tokenizer.head.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_same_seed_same_weights_and_held_out_pairs_never_drawn(toy, monkeypatch):
    drawn = []
    real = synth.random_scene

    def spy(rng, **kwargs):
        scene = real(rng, **kwargs)
        drawn.append(scene)
        return scene

    monkeypatch.setattr(vision_pretrain, "random_scene", spy)
    model, processor = toy
    start = _state(model.visual_tokenizer.backbone)
    config = VisionPretrainConfig(steps=3, batch_size=16, measure_scenes=8, seed=5)
    pretrain_vision(model, processor, config, progress=False)
    first = _state(model.visual_tokenizer.backbone)
    model.visual_tokenizer.backbone.load_state_dict(start)
    pretrain_vision(model, processor, config, progress=False)
    assert all(torch.equal(v, first[k]) for k, v in model.visual_tokenizer.backbone.state_dict().items())
    pairs = {(t.colour, t.shape) for scene in drawn for t in scene}
    assert len(drawn) == 2 * (3 * 16 + 8)
    assert not pairs & set(synth.HELD_OUT_PAIRS), pairs & set(synth.HELD_OUT_PAIRS)


def test_the_rate_warms_up_then_decays_to_a_tenth():
    config = VisionPretrainConfig(steps=100, warmup_steps=10)
    rates = [vision_pretrain._rate_factor(step, config) for step in range(1, 101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # warm-up, then the peak
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))  # never rises again
    assert rates[-1] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "field, value", [("steps", -1), ("batch_size", 0), ("lr", 0.0), ("measure_scenes", 0), ("position_weight", -1.0)]
)
def test_bad_settings_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        VisionPretrainConfig(**{field: value})


def test_the_command_writes_the_model_and_its_report(tmp_path, one_thread):
    torch.manual_seed(0)
    ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, out=tmp_path / "composed")
    code = main(
        [
            "pretrain-vision",
            "--model",
            str(tmp_path / "composed"),
            "--out",
            str(tmp_path / "vision"),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--position-weight",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "vision" / vision_pretrain.REPORT_FILE).read_text())
    assert report["steps"] == 2 and 0 <= report["shape_accuracy"] <= 1
    assert report["quarter_accuracy"] is None  # --position-weight 0: no quarter read-out trained
    composed, _ = ovis.load(tmp_path / "composed")
    trained, _ = ovis.load(tmp_path / "vision")
    a, b = composed.visual_tokenizer.backbone.state_dict(), trained.visual_tokenizer.backbone.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(composed.vte.state_dict()[k], v) for k, v in trained.vte.state_dict().items())

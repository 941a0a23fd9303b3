"""benchmarks/cell_source.py: each question is paired with the answer of its mirrored cell, and the
reversal it measures reaches the language model (and is undone afterwards). benchmarks/
cell_experiments.py: its caption style, its training-time shuffle of the cell tokens, one tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ovis.data.synth import CELLS, SynthSpec, write_synthetic_dataset


@pytest.fixture(scope="module")
def cell_source(repo_script):
    return repo_script("benchmarks/cell_source.py")


def test_every_question_is_paired_with_its_mirrored_cells_answer(cell_source, tmp_path):
    write_synthetic_dataset(
        tmp_path, SynthSpec(train_images=2, eval_images=200, compositional_images=0, text_scenes=1), progress=False
    )
    items = cell_source.questions(tmp_path / "eval.json")
    colour = [i for i in items if i["type"] == "colour"]
    position = [i for i in items if i["type"] == "position"]
    assert len(position) == 40 and 0 < len(colour) < 40  # colour only where the mirror holds another colour
    for item in colour:
        asked = CELLS.index(item["question"].split("at the ")[1].rstrip("?"))
        there = cell_source.objects(item["scene"])
        assert there[asked] == item["answer"] and there[3 - asked] == item["mirrored"] != item["answer"]
    for item in position:
        assert item["mirrored"] == CELLS[3 - CELLS.index(item["answer"])]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished quick-start of two steps a stage: every directory the scripts read, in seconds."""
    from ovis.quickstart import STAGES, quickstart

    out = tmp_path_factory.mktemp("tiny-run")
    quickstart(
        out,
        steps=dict.fromkeys(("vision", *STAGES), 2),
        train_images=48,
        eval_images=40,
        compositional_images=0,
        progress=False,
        log=lambda *_: None,
        vocabulary_scenes=0,
    )
    return out


def test_the_reversed_tokens_reach_the_model_and_are_put_back(cell_source, tiny_run):
    import torch

    import ovis
    from ovis.eval.synth import evaluate_synth

    tmp_path = tiny_run
    rows = cell_source.measure(tmp_path)
    assert [(r["tokens"], r["question"]) for r in rows] == [
        ("as drawn", "colour"),
        ("as drawn", "position"),
        ("reversed", "colour"),
        ("reversed", "position"),
    ]
    # As drawn, "content's answer" is the plain evaluation's accuracy on the same questions.
    items = cell_source.questions(tmp_path / "data" / "eval.json")
    (tmp_path / "data" / "subset.json").write_text(json.dumps(items))
    model, processor = ovis.load(tmp_path / "stage3" / "final", dtype="float32")
    plain = evaluate_synth(model, processor, tmp_path / "data" / "subset.json", progress=False).by_type()
    assert rows[1]["content"] == plain["position"] and rows[1]["n"] == 8
    # The reversal is applied after the visual path: the cell tokens come out in reverse order.
    image = Image.open(tmp_path / "data" / "images" / items[0]["image"]).convert("RGB")
    pixels = processor([[{"role": "user", "content": "<image>\nhi"}]], [[image]])["pixel_values"]
    drawn = model.encode_images(pixels)
    assert not torch.equal(drawn[:, 1], drawn[:, 4])
    reversed_ = cell_source.reversing(model.encode_images)(pixels)
    assert torch.equal(reversed_[:, 1:5], drawn[:, 1:5].flip(1)) and torch.equal(reversed_[:, ::5], drawn[:, ::5])


@pytest.fixture(scope="module")
def experiments(repo_script):
    return repo_script("benchmarks/cell_experiments.py")


def test_the_cell_caption_names_every_cell_in_order(experiments):
    from ovis.data.synth import Thing

    scene = [Thing("cross", "blue", 3), Thing("circle", "red", 0)]
    assert experiments.cell_caption(scene) == (
        "top left: a red circle. top right: nothing. bottom left: nothing. bottom right: a blue cross."
    )


def test_cell_tokens_are_shuffled_in_training_only_and_indicators_stay(experiments):
    import torch

    class Model:
        training = True

    tokens = torch.arange(6.0).repeat(200, 1).unsqueeze(-1)  # 200 images, [indicator, 4 cells, indicator]
    shuffled = experiments.shuffling_cells(lambda self, pixels: tokens)
    out = shuffled(Model(), None)[..., 0]
    assert (out[:, 0] == 0).all() and (out[:, 5] == 5).all()
    assert (out[:, 1:5].sort(dim=1).values == torch.tensor([1.0, 2, 3, 4])).all()  # a permutation of the cells
    assert len({tuple(row.tolist()) for row in out[:, 1:5]}) > 12  # many orders, not one
    Model.training = False
    assert torch.equal(shuffled(Model(), None), tokens)


def test_an_experiment_trains_from_stage_2_with_both_changes_and_restores_the_model_class(
    experiments, tiny_run, tmp_path
):
    from ovis.model.modeling_ovis import OvisForCausalLM

    encode = OvisForCausalLM.encode_images
    result = experiments.run(tiny_run, tmp_path, cell_captions=True, shuffle_cells=True, steps=2, progress=False)
    assert OvisForCausalLM.encode_images is encode
    captions = [c["caption"] for c in json.loads((tmp_path / "data" / "captions.json").read_text())]
    assert any(c.startswith("top left: ") for c in captions) and any(c.startswith("a ") for c in captions)
    assert len(json.loads((tmp_path / "data" / "eval.json").read_text())) == 40  # the run's own spec
    assert (tmp_path / "stage3" / "final" / "model.safetensors").is_file()
    assert result["eval.json"]["by_type"].keys() == {"colour", "shape", "position", "count", "exists"}
    assert json.loads((tmp_path / "result.json").read_text()) == json.loads(json.dumps(result))


def test_an_experiment_takes_stage_3_config_overrides(experiments, tiny_run, tmp_path):
    result = experiments.run(
        tiny_run,
        tmp_path,
        cell_captions=False,
        shuffle_cells=False,
        steps=3,
        overrides=["per_device_batch_size=5", "muon_lr=0.001"],
        progress=False,
    )
    records = [json.loads(line) for line in (tmp_path / "stage3" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in records] == [5, 5, 5]
    config = (tmp_path / "stage3" / "train_config.yaml").read_text()
    assert "muon_lr: 0.001" in config and "per_device_batch_size: 5" in config
    assert result["overrides"] == ["per_device_batch_size=5", "muon_lr=0.001"] and result["train_seconds"] > 0
    from ovis.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'no_such_key'"):
        experiments.run(
            tiny_run,
            tmp_path / "bad",
            cell_captions=False,
            shuffle_cells=False,
            steps=1,
            overrides=["no_such_key=1"],
            progress=False,
        )


@pytest.fixture(scope="module")
def word_cells(repo_script):
    return repo_script("benchmarks/word_cells.py")


def test_word_cells_tells_aligns_and_trains_or_takes_a_built_llm(word_cells, tiny_run, tmp_path):
    import argparse

    from safetensors.torch import load_file

    def args(out, **extra):
        settings = dict(base=tiny_run, out=out, told_llm=None, told_steps=2, align_steps=2, stage3_steps=2)
        return argparse.Namespace(**(settings | extra), stage3=["per_device_batch_size=4"], progress=False)

    result = word_cells.run(args(tmp_path / "here"))
    assert {"told", "aligned", "stage3-2-per_device_batch_size=4"} <= result.keys()
    assert json.loads((tmp_path / "here" / "result.json").read_text()) == json.loads(json.dumps(result))
    # the told run trained the LLM only, from the run's pre-trained ViT
    vision = load_file(tiny_run / "vision" / "model.safetensors")
    told = load_file(tmp_path / "here" / "told" / "final" / "model.safetensors")
    assert all(torch.equal(vision[k], told[k]) for k in vision if not k.startswith("llm."))
    assert any(not torch.equal(vision[k], told[k]) for k in vision if k.startswith("llm."))
    # a built LLM (here: that one's, saved alone) goes into the run's model in place of the told run
    import ovis

    model, _ = ovis.load(tmp_path / "here" / "told" / "final", dtype="float32")
    model.llm.save_pretrained(tmp_path / "llm")
    result = word_cells.run(args(tmp_path / "taken", told_llm=tmp_path / "llm"))
    taken = load_file(tmp_path / "taken" / "told" / "final" / "model.safetensors")
    assert taken.keys() == told.keys() and all(torch.equal(told[k], taken[k]) for k in told)
    assert result["told_llm"] == str(tmp_path / "llm") and "told_seconds" not in result

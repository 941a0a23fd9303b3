"""benchmarks/cell_source.py: each question is paired with the answer of its mirrored cell, and the
reversal it measures reaches the language model (and is undone afterwards)."""

from __future__ import annotations

import json

import pytest
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


def test_the_reversed_tokens_reach_the_model_and_are_put_back(cell_source, tmp_path):
    import torch

    import ovis
    from ovis.eval.synth import evaluate_synth
    from ovis.quickstart import STAGES, quickstart

    quickstart(
        tmp_path,
        steps=dict.fromkeys(("vision", *STAGES), 2),
        train_images=48,
        eval_images=40,
        compositional_images=0,
        progress=False,
        log=lambda *_: None,
        vocabulary_scenes=0,
    )
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

"""The main job end to end on a small budget: data, compose, three stages, held-out report."""

from __future__ import annotations

import json

import pytest

from ovis.data.synth import QUESTION_TYPES, SynthSpec, answer_vocabulary, question, random_scene


def test_every_question_has_one_right_answer_that_depends_on_the_scene():
    import random

    rng = random.Random(0)
    answers = {kind: set() for kind in QUESTION_TYPES}
    for _ in range(400):
        scene = random_scene(rng)
        assert len({t.colour for t in scene}) == len(scene) and len({t.cell for t in scene}) == len(scene)
        for kind in QUESTION_TYPES:
            qa = question(kind, scene, rng)
            assert qa.answer in answer_vocabulary()
            answers[kind].add(qa.answer)
    # Every type has several possible answers, so no fixed guess can score highly.
    assert {k: len(v) > 1 for k, v in answers.items()} == dict.fromkeys(QUESTION_TYPES, True)
    exists = [question("exists", random_scene(rng), rng).answer for _ in range(600)]
    assert 0.4 < exists.count("yes") / len(exists) < 0.6


def test_blank_spec_draws_empty_images(tmp_path):
    from PIL import Image

    from ovis.data.synth import write_synthetic_dataset

    info = write_synthetic_dataset(tmp_path, SynthSpec(train_images=3, eval_images=2, blank=True), progress=False)
    assert info.name == "dataset_info.json"
    for path in (tmp_path / "images").iterdir():
        assert len(Image.open(path).getcolors()) == 1


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_the_model_learns(tmp_path):
    from ovis.quickstart import quickstart

    result = quickstart(tmp_path, stage3_steps=500, easy_steps=200, train_images=1500, eval_images=200,
                        progress=False, curve_every=250, curve_questions=100, log=lambda *_: None)
    report = json.loads((tmp_path / "report.json").read_text())
    # The learning curve over both parts of stage 3 (200 + 500 steps): at the end of the first part,
    # then every 250 steps of the second, counted from the start of stage 3; in time order; a chart.
    assert [p["step"] for p in report["curve"]] == [200, 450, 700]
    seconds = [p["seconds"] for p in report["curve"]]
    assert 0 < seconds[0] < seconds[1] < seconds[2]
    assert set(report["curve"][1]["by_type"]) == set(QUESTION_TYPES)
    assert (tmp_path / "curve.png").is_file()
    assert report["questions"] == 200 and set(report["by_type"]) == set(QUESTION_TYPES)
    for stage in ("stage1", "stage2", "stage3-easy", "stage3"):
        assert (tmp_path / stage / "final" / "config.json").is_file()
        metrics = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        assert metrics, stage
    losses = [json.loads(line)["loss"] for line in (tmp_path / "stage3" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:50]) / 50
    # 500 steps are enough to learn to count from the image (chance: 25%).
    assert report["by_type"]["count"] > 0.5, report
    assert result.total_seconds > 0


def test_curve_chart_draws_every_series(tmp_path):
    from PIL import Image

    from ovis.quickstart import draw_curve

    points = [{"seconds": 60.0 * i, "accuracy": 0.2 + 0.1 * i,
               "by_type": {k: min(1.0, 0.1 * i + j / 10) for j, k in enumerate(QUESTION_TYPES)}} for i in range(1, 6)]
    path = draw_curve(points, tmp_path / "c.png", title="test")
    image = Image.open(path).convert("RGB")
    assert image.size == (720, 420)
    colours = {c for _, c in image.getcolors(720 * 420)}
    assert (0, 0, 0) in colours and (214, 39, 40) in colours and (255, 127, 14) in colours  # all, colour, exists


def test_easy_subsets_hold_the_small_scenes_only(tmp_path):
    from ovis.data.synth import write_synthetic_dataset

    info = json.loads(write_synthetic_dataset(tmp_path, SynthSpec(train_images=60, eval_images=2), progress=False)
                      .read_text())
    assert info["synth-conversations-easy"]["meta_file"] == "conversations-easy.json"
    captions = json.loads((tmp_path / "captions.json").read_text())
    easy = json.loads((tmp_path / "captions-easy.json").read_text())
    objects = {c["image_path"]: c["caption"].count(" at the ") for c in captions}
    assert {c["image_path"] for c in easy} == {k for k, n in objects.items() if n <= 2}
    assert 0 < len(easy) < len(captions)
    conversations = json.loads((tmp_path / "conversations.json").read_text())
    easy_conversations = json.loads((tmp_path / "conversations-easy.json").read_text())
    assert easy_conversations == [c for c in conversations if objects[c["image"]] <= 2]


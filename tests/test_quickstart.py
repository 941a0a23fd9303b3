"""The main job and what it is made of: the synthetic task (held-out pairs, caption styles, the
curriculum subsets, the text-only data), its stage configs, the chart, and a small end-to-end run."""

from __future__ import annotations

import itertools
import json

import pytest

from ovis.data.synth import (
    CAPTION_STYLES,
    COLOURS,
    GENERATOR_VERSION,
    HELD_OUT_PAIRS,
    QUESTION_TYPES,
    SHAPES,
    SynthSpec,
    Thing,
    answer_vocabulary,
    caption,
    question,
    random_scene,
    write_synthetic_dataset,
)
from ovis.errors import OutputExistsError


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


def test_yes_no_questions_are_balanced_per_pair_so_a_blind_guess_is_chance():
    """A guess from the question alone (the majority answer of each pair, learned on one sample)
    scores 50% on another: 54.6% with the earlier generator, which asked of random scenes, where
    the pairs of colours with four training shapes (purple, white) are rarer than the others."""
    import random
    from collections import Counter

    from ovis.data.synth import training_item

    def sample(seed: int, n: int = 20000) -> list[tuple[str, str, list[Thing]]]:
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            scene, (qa,) = training_item(rng, ["exists"], HELD_OUT_PAIRS)
            out.append((qa.question, qa.answer, scene))
        return out

    train, held = sample(0), sample(1)
    votes = Counter((q, a) for q, a, _ in train)
    majority = {q: max(("yes", "no"), key=lambda a, q=q: votes[q, a]) for q, _, _ in train}
    blind = sum(majority[q] == a for q, a, _ in held) / len(held)
    assert abs(blind - 0.5) < 0.012, blind
    for colours in (("purple", "white"), ("red", "green", "blue", "yellow")):
        answers = [a for q, a, _ in held if q.split()[3] in colours]
        assert abs(answers.count("yes") / len(answers) - 0.5) < 0.02, colours
    for question_text, answer, scene in held[:2000]:
        colour, shape = question_text.removeprefix("Is there a ").rstrip("?").split()
        assert (colour, shape) not in HELD_OUT_PAIRS
        present = {(t.colour, t.shape) for t in scene}
        assert ((colour, shape) in present) == (answer == "yes")
        # A "no" is a near miss: the colour or the shape asked about is in the scene.
        assert any(t.colour == colour or t.shape == shape for t in scene)


def test_blank_spec_draws_empty_images(tmp_path):
    from PIL import Image

    info = write_synthetic_dataset(tmp_path, SynthSpec(train_images=3, eval_images=2, blank=True), progress=False)
    assert info.name == "dataset_info.json"
    for path in (tmp_path / "images").iterdir():
        assert len(Image.open(path).getcolors()) == 1


def _pairs_named(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a text names as "<colour> <shape>"."""
    return {(c, s) for c in COLOURS for s in SHAPES if f"{c} {s}" in text}


def test_held_out_pairs_appear_only_in_the_compositional_split(tmp_path):
    spec = SynthSpec(train_images=400, eval_images=100, compositional_images=80, text_scenes=400)
    write_synthetic_dataset(tmp_path, spec, progress=False)
    held_out = set(HELD_OUT_PAIRS)
    training = ["captions.json", "conversations.json", "scene-text.json", "captions-max1.json", "eval.json"]
    for name in training:
        text = (tmp_path / name).read_text()
        assert not _pairs_named(text) & held_out, name
        assert _pairs_named(text), name  # the check can see pairs: the files do name them
    items = json.loads((tmp_path / "eval-compositional.json").read_text())
    assert len(items) == 80
    assert {item["type"] for item in items} == {"colour", "shape", "position", "exists"}
    for item in items:
        # Every item asks about a held-out pair: named in the question, or the object looked up by
        # its colour is one (its scene says so).
        asked = _pairs_named(item["question"]) or _pairs_named(item["scene"])
        assert asked & held_out, item
    exists = [item["answer"] for item in items if item["type"] == "exists"]
    assert 0.25 < exists.count("yes") / len(exists) < 0.75


def test_caption_styles_word_the_scene_three_ways():
    import random

    scene = [Thing("circle", "red", 0), Thing("cross", "blue", 3), Thing("square", "green", 1)]
    assert caption(scene) == (
        "a red circle at the top left, a green square at the top right, a blue cross at the bottom right."
    )
    rng = random.Random(3)
    shuffled = {caption(scene, "shuffled", rng) for _ in range(30)}
    parts = sorted(caption(scene).rstrip(".").split(", "))
    assert len(shuffled) > 1 and all(sorted(c.rstrip(".").split(", ")) == parts for c in shuffled)
    positions = caption(scene, "colour-positions", rng)
    assert positions.startswith("objects: ") and "blue bottom right" in positions and "circle" not in positions
    with pytest.raises(ValueError, match="caption style 'fancy'"):
        caption(scene, "fancy")


def test_training_captions_mix_the_styles(tmp_path):
    write_synthetic_dataset(
        tmp_path, SynthSpec(train_images=90, eval_images=1, compositional_images=0, text_scenes=1), progress=False
    )
    captions = [c["caption"] for c in json.loads((tmp_path / "captions.json").read_text())]
    styles = {"colour-positions" if c.startswith("objects: ") else "worded" for c in captions}
    assert styles == {"colour-positions", "worded"} and len(CAPTION_STYLES) == 3


def test_curriculum_subsets_hold_the_small_scenes_only(tmp_path):
    info = json.loads(
        write_synthetic_dataset(tmp_path, SynthSpec(train_images=60, eval_images=2), progress=False).read_text()
    )
    conversations = json.loads((tmp_path / "conversations.json").read_text())
    # Objects per scene, from the count question or else from the image's caption.
    captions = {c["image_path"]: c["caption"] for c in json.loads((tmp_path / "captions.json").read_text())}
    objects = {k: c.count(",") + 1 for k, c in captions.items()}
    for level in (1, 2):
        assert info[f"synth-conversations-max{level}"]["meta_file"] == f"conversations-max{level}.json"
        subset = json.loads((tmp_path / f"captions-max{level}.json").read_text())
        assert {c["image_path"] for c in subset} == {k for k, n in objects.items() if n <= level}
        assert 0 < len(subset) < len(captions)
        chosen = json.loads((tmp_path / f"conversations-max{level}.json").read_text())
        assert chosen == [c for c in conversations if objects[c["image"]] <= level]


def test_text_only_data_tells_the_scene_and_has_no_image(tmp_path):
    info = json.loads(
        write_synthetic_dataset(
            tmp_path, SynthSpec(train_images=2, eval_images=3, text_scenes=5), progress=False
        ).read_text()
    )
    assert "image_dir" not in info["synth-scene-text"]
    records = json.loads((tmp_path / "scene-text.json").read_text())
    assert len(records) == 5
    for record in records:
        assert "image" not in record
        first = record["conversations"][0]["value"]
        assert first.startswith("The picture shows a ") and "<image>" not in first
    for item in json.loads((tmp_path / "eval.json").read_text()):
        assert item["scene"].startswith("The picture shows ")


def test_bad_synth_specs_are_refused():
    with pytest.raises(ValueError, match="held_out_pairs"):
        SynthSpec(held_out_pairs=(("pink", "circle"),))
    with pytest.raises(ValueError, match="curriculum"):
        SynthSpec(curriculum=(0,))


def test_every_toy_word_is_one_token():
    from importlib import resources

    from ovis_qwen.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("offline:qwen-toy")
    lines = (resources.files("ovis_qwen") / "resources" / "toy_words.txt").read_text().splitlines()
    words = [w for line in lines if not line.startswith("#") for w in line.split()]
    assert len(words) > 30
    long = {w: (len(tokenizer.encode(w)), len(tokenizer.encode(" " + w))) for w in words}
    assert {w: n for w, n in long.items() if n != (1, 1)} == {}
    # Every answer of the task too (cells are two words, each listed).
    assert {w for a in answer_vocabulary() for w in a.split()} <= set(words)


# -- the stage configs ------------------------------------------------------------------------------
def test_quickstart_configs_are_the_stages_and_chain():
    from ovis.quickstart import STAGES, configs_dir
    from ovis.train import load_train_config

    assert sorted(p.stem for p in configs_dir().glob("*.yaml")) == sorted(STAGES)
    configs = [load_train_config(configs_dir() / f"{name}.yaml") for name in STAGES]
    assert configs[0].model.name == "vision"  # the composed model with its ViT pre-trained (ovis pretrain-vision)
    for earlier, later in itertools.pairwise(configs):
        assert later.model == earlier.output_dir / "final", later.output_dir
    assert [c.stage for c in configs] == [1, 2, 3]
    # Every stage trains on images; the pre-trained ViT stays frozen, and the pretrained (told) LLM
    # trains only in stage 3.
    assert all("scene-text" not in d for c in configs for d in c.data.datasets)
    assert [sorted(c.train_modules) for c in configs] == (
        [["visual_tokenizer.head", "vte"]] * 2 + [["llm", "visual_tokenizer.head", "vte"]]
    )
    assert not any(c.reinit_last_block for c in configs)
    assert configs[2].data.datasets == ["synth-conversations", "synth-captions"]  # every scene, no curriculum
    # Precision fits the hardware in every stage, resolved here to something this machine runs.
    assert {c.precision for c in configs} == {"auto"}
    assert {c.resolved_precision() for c in configs} <= {"bf16", "fp32"}


def test_chart_draws_every_series(tmp_path):
    from PIL import Image

    from ovis.charts import TYPE_COLOURS, accuracy_curve

    points = [
        {
            "seconds": 60.0 * i,
            "accuracy": 0.2 + 0.1 * i,
            "by_type": {k: min(1.0, 0.1 * i + j / 10) for j, k in enumerate(QUESTION_TYPES)},
        }
        for i in range(1, 6)
    ]
    path = accuracy_curve(
        points,
        tmp_path / "c.png",
        title="test",
        types=QUESTION_TYPES,
        spans=[("stage1", 0, 100), ("stage3", 100, 300)],
        ceiling=0.8,
    )
    image = Image.open(path).convert("RGB")
    colours = {c for _, c in image.getcolors(image.width * image.height)}

    def rgb(hex_colour: str) -> tuple[int, ...]:
        return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))

    assert (0, 0, 0) in colours  # the overall line
    assert {rgb(c) for c in TYPE_COLOURS} <= colours  # one line per question type
    with pytest.raises(ValueError, match="at least one point"):
        accuracy_curve([], tmp_path / "d.png", title="empty", types=QUESTION_TYPES)


# -- end to end -------------------------------------------------------------------------------------
SMALL = {"vision": 100, "stage1": 20, "stage2": 20, "stage3": 650}


def vision_recipe() -> dict:
    """The ViT pre-training's settings as ``report["recipe"]["vision"]`` records them (its steps and
    seed are recorded beside it)."""
    from ovis.train.vision_pretrain import VisionPretrainConfig

    key = VisionPretrainConfig().key()
    return json.loads(json.dumps({k: v for k, v in key.items() if k not in ("seed", "steps")}))


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_the_model_learns(tmp_path):
    import hashlib
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from ovis.plugin_host import get_host
    from ovis.quickstart import quickstart
    from ovis.toy import TOLD_LLM

    small = {
        "steps": SMALL,
        "train_images": 1500,
        "eval_images": 200,
        "compositional_images": 40,
        "progress": False,
        "log": lambda *_: None,
    }
    result = quickstart(tmp_path, curve_every=150, curve_questions=100, **small)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["questions"] == 200 and set(report["by_type"]) == set(QUESTION_TYPES)
    assert set(report["seconds"]) == {"data", "compose", *SMALL, "evaluate"}
    assert report["precision"].startswith("precision: ") and report["machine"]["cores"]
    assert report["machine"]["threads"] == torch.get_num_threads()
    assert report["recipe"] == {"seed": 0, "steps": SMALL, "train_images": 1500, "eval_images": 200,
                                "compositional_images": 40, "vision": vision_recipe()}
    # The vision step trained the ViT alone and learned the scenes' shapes (chance: 1 in 5).
    composed = load_file(tmp_path / "composed" / "model.safetensors")
    vision = load_file(tmp_path / "vision" / "model.safetensors")
    backbone = [k for k in composed if k.startswith("visual_tokenizer.backbone.")]
    assert backbone and any(not torch.equal(composed[k], vision[k]) for k in backbone)
    assert all(torch.equal(composed[k], vision[k]) for k in composed if k not in backbone)
    assert report["vision_pretraining"]["steps"] == 100 and report["vision_pretraining"]["shape_accuracy"] > 0.5
    # The LLM is the shipped told preset, untouched until stage 3; the ViT stays as pre-trained to the end.
    told = report["told_llm"]
    weights = Path(get_host().llm(TOLD_LLM).spec.weights) / "model.safetensors"
    preset = load_file(weights)
    assert told["preset"] == TOLD_LLM and told["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # (A stage's weights are exported in its precision: bf16 where `auto` picks it, on a CPU with AMX.)
    def same(exported: torch.Tensor, before: torch.Tensor) -> bool:
        return torch.equal(exported, before.to(exported.dtype))

    aligned = load_file(tmp_path / "stage2" / "final" / "model.safetensors")
    assert all(same(aligned["llm." + k], v) for k, v in preset.items())
    final = load_file(tmp_path / "stage3" / "final" / "model.safetensors")
    assert all(same(final[k], vision[k]) for k in backbone)
    assert any(not same(final["llm." + k], v) for k, v in preset.items())
    # The ceiling (the told LLM answering from the scene told in words) and the compositional split
    # are there, per type; the told LLM was built on this world and answers most of it.
    assert told["questions"] == 200 and told["compositional"]["questions"] == 40
    assert told["accuracy"] > 0.7 and told["by_type"]["shape"] > 0.9, told
    assert told["build_seconds"] > 0 and told["steps"] == 4500
    assert report["compositional"]["questions"] == 40
    assert set(report["compositional"]["by_type"]) == {"colour", "shape", "position", "exists"}
    # The curve: points in every stage, in time order, and a chart.
    stages = [p["stage"] for p in report["curve"]]
    assert stages[0] == "stage1" and stages[-1] == "stage3"
    seconds = [p["seconds"] for p in report["curve"]]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert (tmp_path / "curve.png").is_file()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "stage3" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    # Within this budget the model learns to count from the image (chance: 25%).
    assert report["by_type"]["count"] > 0.5, report
    assert result.total_seconds > 0

    # Run again: everything is reused. With another adapter the composed model is not.
    again = quickstart(tmp_path, **small)
    assert again.stage_seconds["stage3"] < result.stage_seconds["stage3"] / 3
    with pytest.raises(OutputExistsError, match=r"compose result made with other settings \(adapter differs\)"):
        quickstart(tmp_path, adapter="mlp", **small)
    with pytest.raises(OutputExistsError, match=r"data result made with other settings \(blank differs\)"):
        quickstart(tmp_path, blind=True, **small)


def test_the_report_names_the_thread_count_it_ran_with():
    # One thread and two give different runs (float32 sums in another order), so the report says which.
    import torch

    from ovis.precision import machine

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert machine()["threads"] == threads
    finally:
        torch.set_num_threads(before)


def test_quickstart_records_the_visual_vocabulary_after_every_stage(tmp_path):
    from ovis.composer import load
    from ovis.inspect import FIGURES, vocab_usage, vocabulary_figures
    from ovis.inspect.meaning import synthetic_scenes
    from ovis.quickstart import STAGES, quickstart

    tiny = {
        "steps": dict.fromkeys(("vision", *STAGES), 2),
        "train_images": 48,
        "eval_images": 6,
        "compositional_images": 0,
        "progress": False,
        "log": lambda *_: None,
    }
    result = quickstart(tmp_path, vocabulary_scenes=3, **tiny)
    report = json.loads((tmp_path / "report.json").read_text())
    # The report says what produced it: steps as run, data sizes, seed.
    assert report["recipe"] == {"seed": 0, "steps": tiny["steps"], "train_images": 48, "eval_images": 6,
                                "compositional_images": 0, "vision": vision_recipe()}
    vocabulary = report["vocabulary"]
    assert vocabulary["scenes"] == 3 and list(vocabulary["by_stage"]) == ["vision", *STAGES]
    for figures in vocabulary["by_stage"].values():
        assert set(FIGURES) <= set(figures) and figures["images"] == 3 and figures["vocab_size"] == 1022
    assert set(vocabulary["seconds"]) == {"vision", *STAGES}
    assert (tmp_path / vocabulary["chart"]).stat().st_size > 10_000
    assert result.report["vocabulary"] == vocabulary
    # The vision step's figures are its model's, on the same scenes; the usage counted in the
    # figures' one pass is what vocab_usage counts on its own. (Not bit for bit: a random head's
    # logits are nearly equal, and its LayerNorm magnifies float rounding.)
    model, processor = load(tmp_path / "vision", dtype="float32")
    scenes = synthetic_scenes(3, 64, 0)
    before = vocabulary["by_stage"]["vision"]
    assert before == pytest.approx(vocabulary_figures(model.eval(), processor, scenes), rel=1e-3)
    usage = vocab_usage(model, processor, [image for image, _ in scenes]).summary()
    assert before["words_used"] == usage["words_used"]
    assert before["usage_perplexity"] == pytest.approx(usage["usage_perplexity"], rel=1e-3)
    assert before["mean_token_entropy"] == pytest.approx(usage["mean_token_entropy"], rel=1e-3)
    with pytest.raises(ValueError, match="no scenes"):
        vocabulary_figures(model, processor, [])
    # Skipped on request (everything else is reused).
    quickstart(tmp_path, vocabulary_scenes=0, **tiny)
    assert "vocabulary" not in json.loads((tmp_path / "report.json").read_text())
    with pytest.raises(ValueError, match="vocabulary_scenes must be 0"):
        quickstart(tmp_path, vocabulary_scenes=-1, **tiny)


def test_a_stage_redone_otherwise_is_not_followed_by_the_old_later_stages(tmp_path):
    """Stage configs name their input only by path; a stage 2 remade with other settings (its
    directory deleted first, as the error asks) must not be followed by the stage 3 made from the
    old one. Nor may stages made from deleted-and-remade data be reused."""
    import shutil

    from ovis.quickstart import STAGES, quickstart

    tiny = {
        "train_images": 48,
        "eval_images": 6,
        "compositional_images": 0,
        "progress": False,
        "log": lambda *_: None,
        "vocabulary_scenes": 0,
    }
    steps = dict.fromkeys(("vision", *STAGES), 2)
    quickstart(tmp_path, steps=steps, **tiny)
    shutil.rmtree(tmp_path / "stage2")
    with pytest.raises(OutputExistsError, match=r"stage3 result made with other settings \(input differs\)"):
        quickstart(tmp_path, steps={**steps, "stage2": 3}, **tiny)
    shutil.rmtree(tmp_path / "stage3")
    quickstart(tmp_path, steps={**steps, "stage2": 3}, **tiny)  # now it goes through, and is reused:
    made = (tmp_path / "stage3" / "final" / "model.safetensors").stat().st_mtime_ns
    quickstart(tmp_path, steps={**steps, "stage2": 3}, **tiny)
    assert (tmp_path / "stage3" / "final" / "model.safetensors").stat().st_mtime_ns == made
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(OutputExistsError, match=r"stage1 result made with other settings \(data differs\)"):
        quickstart(tmp_path, steps={**steps, "stage2": 3}, **{**tiny, "train_images": 50})


def test_cli_vocabulary_scenes_option(tmp_path, capsys):
    from ovis.cli import main

    assert main(["quickstart", "--vocabulary-scenes", "-1", "--out", str(tmp_path / "q")]) == 2
    assert "vocabulary_scenes must be 0 (skip) or more, got -1" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_quickstart_refuses_unknown_stage_names(tmp_path):
    from ovis.quickstart import quickstart

    with pytest.raises(ValueError, match="unknown stage.*stage3-easy"):
        quickstart(tmp_path, steps={"stage3-easy": 5}, log=lambda *_: None)
    with pytest.raises(ValueError, match="steps must be 0 or more"):
        quickstart(tmp_path, steps={"vision": -1}, log=lambda *_: None)
    assert not any(tmp_path.iterdir())


def test_cli_steps_option_names_the_stages(capsys):
    from ovis.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--steps", "stage3-easy=5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'stage3-easy=5': expected STAGE=N" in err and "stage1" in err and "vision" in err
    # vision=0 is allowed (the ViT stays random); a training stage needs at least one step.
    with pytest.raises(SystemExit):
        main(["quickstart", "--steps", "stage1=0"])
    assert "'stage1=0': expected STAGE=N with N >= 1" in capsys.readouterr().err


def test_text_mode_asks_with_the_scene_in_words_and_blind_mode_blanks_the_image(tmp_path):
    from PIL import Image

    from ovis.eval.synth import _prompt

    (tmp_path / "a.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    item = {
        "id": "q1",
        "image": "a.png",
        "question": "How many objects are there?",
        "scene": "The picture shows a red circle at the top left.\n",
    }
    text, images = _prompt(item, "text", tmp_path)
    assert text == "The picture shows a red circle at the top left.\nHow many objects are there?" and images == []
    text, (image,) = _prompt(item, "image", tmp_path)
    assert text.startswith("<image>\n") and image.getpixel((0, 0)) == (255, 0, 0)
    _, (blank,) = _prompt(item, "blind", tmp_path)
    assert len(blank.getcolors()) == 1 and blank.getpixel((0, 0)) != (255, 0, 0)
    with pytest.raises(ValueError, match="'q2' has no 'scene' text"):
        _prompt({"id": "q2", "image": "a.png", "question": "?"}, "text", tmp_path)


def test_cli_data_synth_writes_every_split(tmp_path, capsys):
    from ovis.cli import main

    out = tmp_path / "d"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--train-images",
                "6",
                "--eval-images",
                "2",
                "--compositional-images",
                "4",
                "--text-scenes",
                "3",
            ]
        )
        == 0
    )
    assert "4 compositional images, 3 text-only scenes" in capsys.readouterr().out
    assert len(json.loads((out / "eval-compositional.json").read_text())) == 4
    assert len(json.loads((out / "scene-text.json").read_text())) == 3
    spec = json.loads((out / "synth_spec.json").read_text())
    assert spec["train_images"] == 6 and [tuple(p) for p in spec["held_out_pairs"]] == list(HELD_OUT_PAIRS)
    assert spec["generator"] == GENERATOR_VERSION  # data of another generator is other data


def test_data_made_by_another_generator_version_is_not_reused(tmp_path, monkeypatch):
    import ovis.data.synth as synth
    from ovis.quickstart import _Run

    run = _Run(tmp_path, blind=False, seed=0, progress=False, log=lambda *_: None)
    spec = SynthSpec(train_images=4, eval_images=2, compositional_images=0, text_scenes=2)
    run.make_data(spec)
    made = (tmp_path / "data" / "eval.json").read_text()
    run.make_data(spec)  # the same generator: reused
    assert (tmp_path / "data" / "eval.json").read_text() == made
    monkeypatch.setattr(synth, "GENERATOR_VERSION", synth.GENERATOR_VERSION + 1)
    with pytest.raises(OutputExistsError, match=r"data result made with other settings \(generator differs\)"):
        run.make_data(spec)

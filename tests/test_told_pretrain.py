"""ovis.told_pretrain: the scene read back from an image's pixels is the scene drawn; a told image
puts each cell's words, summed, where the visual path puts the cell's token; the build trains only
the LLM, learns, and gives the same bytes twice; benchmarks/word_cells.py runs its steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovis.data.synth import CELLS, HELD_OUT_PAIRS, draw_scene, random_scene
from ovis.errors import ConfigError
from ovis.told_pretrain import (
    REPORT_FILE,
    build_told_llm,
    cell_word_ids,
    decode_scenes,
    telling,
    told_embeddings,
)


@pytest.fixture(scope="module")
def toy():
    import ovis

    torch.manual_seed(0)
    return ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, hidden_stride=2)


def test_scenes_are_read_back_from_pixels(toy):
    _, processor = toy
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(200)]
    scenes += [random_scene(rng, exclude=HELD_OUT_PAIRS, with_pair=pair) for pair in HELD_OUT_PAIRS for _ in range(5)]
    pixels = processor.image_processor([draw_scene(scene, 64, rng) for scene in scenes])
    for scene, read in zip(scenes, decode_scenes(pixels, processor.image_processor), strict=True):
        at = {t.cell: (t.colour, t.shape) for t in scene}
        assert read == [at.get(c) for c in range(len(CELLS))], scene


def test_a_told_image_holds_the_cells_words_and_only_inside(toy):
    model, processor = toy
    rng = random.Random(1)
    scene = random_scene(rng, max_objects=3)  # at least one empty cell
    pixels = processor.image_processor([draw_scene(scene, 64, rng)])
    plain = model.encode_images(pixels)
    table = model.llm.get_input_embeddings().weight

    def row(word: str) -> torch.Tensor:
        (i,) = processor.tokenizer.encode(word, add_special_tokens=False)
        return table[i]

    with telling(model, processor):
        told = model.encode_images(pixels)
    at = {t.cell: t for t in scene}
    for cell in range(len(CELLS)):
        want = row(" " + at[cell].colour) + row(" " + at[cell].shape) if cell in at else row("no")
        torch.testing.assert_close(told[0, 1 + cell], want)
    torch.testing.assert_close(told[0, [0, 5]], plain[0, [0, 5]])  # the indicators are the model's own
    torch.testing.assert_close(model.encode_images(pixels), plain)  # and the model is itself again after


def test_telling_needs_one_token_per_cell():
    import ovis

    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, hidden_stride=1)
    with pytest.raises(ConfigError, match="one visual token per cell.*gives 16"):
        with telling(model, processor):
            pass


def test_an_mlp_adapter_is_told_the_same_way():
    """The MLP projector's image block has the same layout (indicators around one token per cell),
    so its told ceiling is measured as the structural adapter's."""
    import ovis

    torch.manual_seed(0)
    model, processor = ovis.compose(vit="clip-toy", llm="qwen-toy", hidden_stride=2, adapter="mlp")
    rng = random.Random(2)
    scene = random_scene(rng)
    pixels = processor.image_processor([draw_scene(scene, 64, rng)])
    plain = model.encode_images(pixels)
    ids = cell_word_ids(decode_scenes(pixels, processor.image_processor), processor.tokenizer)
    with telling(model, processor):
        told = model.encode_images(pixels)
    torch.testing.assert_close(told[0, 1:5], told_embeddings(model.llm.get_input_embeddings(), ids)[0])
    torch.testing.assert_close(told[0, [0, 5]], plain[0, [0, 5]])


def test_a_word_the_tokenizer_splits_is_refused():
    class Splitting:
        def encode(self, text, add_special_tokens=False):
            return [1, 2] if "triangle" in text else [3]

    with pytest.raises(ConfigError, match="splits ' triangle' into 2 tokens"):
        cell_word_ids([[None] * 4], Splitting())


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("told")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bytes every time needs one thread
    try:
        reports = [
            build_told_llm(root / name, steps=steps, images=64, progress=False, log=lambda _: None)
            for name, steps in (("a", 40), ("b", 40))
        ]
    finally:
        torch.set_num_threads(threads)
    return root, reports


@pytest.mark.slow
def test_the_build_trains_only_the_llm_learns_and_repeats_bit_for_bit(tiny_builds):
    root, (a, b) = tiny_builds
    assert a["sha256"] == b["sha256"]
    assert (root / "a" / "model.safetensors").read_bytes() == (root / "b" / "model.safetensors").read_bytes()
    assert a["loss"]["last"] < 0.7 * a["loss"]["first"], a["loss"]
    assert json.loads((root / "a" / REPORT_FILE).read_text())["steps"] == 40
    assert a["machine"]["threads"] == 1 and set(a["told_accuracy"]) == {"eval.json", "eval-compositional.json"}
    # only the LLM trained: the visual side of the run's export is the composed model's
    composed = load_file(root / "a" / "build" / "composed" / "model.safetensors")
    told = load_file(root / "a" / "build" / "told" / "final" / "model.safetensors")
    visual = [k for k in composed if not k.startswith("llm.")]
    assert visual and all(torch.equal(composed[k], told[k]) for k in visual)
    assert any(not torch.equal(composed[k], told[k]) for k in composed if k.startswith("llm."))


@pytest.mark.slow
def test_compose_takes_the_built_llm_as_its_weights(tiny_builds):
    import ovis

    root, _ = tiny_builds
    model, _ = ovis.compose(
        vit="clip-toy", llm="qwen-toy", visual_vocab_size=64, hidden_stride=2, llm_weights=str(root / "a")
    )
    built, state = load_file(root / "a" / "model.safetensors"), model.llm.state_dict()
    assert len(built) > 20 and built.keys() <= state.keys()
    assert all(torch.equal(state[name], value) for name, value in built.items())


def test_the_shipped_preset_is_this_recipe_and_compose_loads_it():
    """qwen-toy-told's weights were built by the recipe in the repository now: a changed config or
    data generator means the preset must be rebuilt (python -m ovis.told_pretrain)."""
    import ovis
    from ovis.data.synth import GENERATOR_VERSION
    from ovis.plugin_host import get_host
    from ovis.told_pretrain import CONFIG
    from ovis.train import load_train_config

    folder = get_host().llm("qwen-toy-told").spec.weights
    report = json.loads((Path(folder) / REPORT_FILE).read_text())
    recipe = load_train_config(CONFIG).model_dump(mode="json")
    paths = {"model", "output_dir", "data"}
    assert {k: v for k, v in report["recipe"].items() if k not in paths} == {
        k: v for k, v in recipe.items() if k not in paths
    }
    assert report["recipe"]["data"]["datasets"] == recipe["data"]["datasets"]
    assert report["generator"] == GENERATOR_VERSION and report["machine"]["threads"] == 1
    model, _ = ovis.compose(vit="clip-toy", llm="qwen-toy-told", visual_vocab_size=64, hidden_stride=2)
    shipped = load_file(Path(folder) / "model.safetensors")
    state = model.llm.state_dict()
    assert all(torch.equal(state[name], value) for name, value in shipped.items())


def test_cli_passes_the_build_options(monkeypatch, tmp_path):
    from ovis import told_pretrain

    calls = []
    monkeypatch.setattr(told_pretrain, "build_told_llm", lambda out, **kw: calls.append((out, kw)))
    assert told_pretrain.main(["--out", str(tmp_path), "--steps", "6000", "--train-images", "24000"]) == 0
    assert calls == [(tmp_path, {"steps": 6000, "seed": 0, "train_images": 24000, "progress": True})]
    told_pretrain.main(["--out", str(tmp_path), "--no-progress"])
    assert calls[-1][1] == {"steps": None, "seed": 0, "train_images": None, "progress": False}

"""The example third-party plugin's LLM family, used through ovis: compose, train step, generate, reload.

The example (examples/ovis-plugin-example) is registered in-process on the process-wide host by the
``example_plugin`` fixture; ``test_plugin_host.py`` installs it with pip and finds it by entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from .conftest import EXAMPLE_PLUGIN

DIALOGUE = [
    {"role": "user", "content": "<image>\nWhat colour is the square?"},
    {"role": "assistant", "content": "Red."},
]
PROMPT = [{"role": "user", "content": "<image>\nDescribe it."}]


def _image(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (40, 30), colour)


@pytest.fixture
def example_ovis(example_plugin):
    import torch

    import ovis

    torch.manual_seed(0)
    return ovis.compose(vit="example-vit", llm="example-llm", visual_vocab_size=64)


def test_the_example_llm_family_is_registered(example_plugin):
    from ovis.plugin_host import get_host

    host = get_host()
    entry = host.llm("example-lm")  # the alias
    assert entry.spec.name == "example-llm" and entry.plugin == "example"
    assert entry.factory.__name__ == "ExampleLLM"
    assert host.chat_formats()["example-chat"] == "example"
    assert host.chat_format(entry.spec.chat_format).end_of_turn == "<|end|>"
    assert not host.plugins["example"].errors


def test_an_ovis_model_with_the_example_llm_trains_a_step_and_generates(example_ovis):
    import torch

    model, processor = example_ovis
    assert model.llm.config.model_type == "llama" and processor.chat_format.name == "example-chat"
    batch = processor.collate([processor.encode(DIALOGUE, [_image((255, 0, 0))])])
    assert (batch["labels"] != -100).sum() == len("Red.") + 1  # one token per byte, then <|end|>
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.vte.weight.grad.abs().sum() > 0

    model.eval()
    prompts = processor([PROMPT, PROMPT], [[_image((255, 0, 0))], [_image((0, 0, 255))]])
    new = model.generate(prompts["input_ids"], prompts["pixel_values"], prompts["attention_mask"],
                         max_new_tokens=5, do_sample=False)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 5
    assert all(isinstance(processor.decode(row), str) for row in new)


def test_a_saved_model_loads_without_building_the_tokenizer_again(example_ovis, tmp_path, monkeypatch):
    import torch
    from ovis_example_plugin.llm import ExampleLLM

    import ovis

    model, processor = example_ovis
    ovis.save(model, processor, tmp_path / "m")

    def no_rebuild(self):
        raise AssertionError("build_tokenizer ran at load time")

    monkeypatch.setattr(ExampleLLM, "build_tokenizer", no_rebuild)
    loaded, loaded_processor = ovis.load(tmp_path / "m")
    batch = processor([PROMPT], [[_image((0, 255, 0))]])
    again = loaded_processor([PROMPT], [[_image((0, 255, 0))]])
    assert torch.equal(batch["input_ids"], again["input_ids"])
    assert loaded_processor.tokenizer.chat_template == processor.tokenizer.chat_template
    with torch.no_grad():
        expected = model.eval()(**batch).logits
        assert torch.allclose(loaded.eval()(**again).logits, expected, atol=1e-5)


@pytest.mark.slow
def test_the_examples_own_tests_pass():
    """The example's tests (its chat format against its tokenizer's template, its spec against the
    model) pass when run as the plugin's author runs them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE_PLUGIN), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE_PLUGIN, env=env, capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]

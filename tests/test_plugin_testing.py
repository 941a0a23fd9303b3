"""ovis.testing, the contract checks plugin authors run: they pass on good plugins (a ViT that
transformers saves under other names included) and fail, naming the fault, on broken ones."""

from __future__ import annotations

import pytest
import torch

from ovis.interfaces import Segment
from ovis.testing import check_chat_format, check_vision_backbone
from tests import hf_vit_plugin
from tests.conftest import EXAMPLE_PLUGIN


@pytest.fixture
def hf_vit(ovis_plugin):
    hf_vit_plugin._register_fused_mapping()
    ovis_plugin("hf-vit-test", hf_vit_plugin.Plugin())


def test_a_backbone_that_transformers_renames_keeps_the_contract(hf_vit, tmp_path):
    check_vision_backbone("hf-vit-renamed", tmp_path)


def test_a_backbone_that_keeps_its_class_token_fails_it(hf_vit, tmp_path):
    with pytest.raises(AssertionError, match=r"hf-vit-keeps-cls: forward gave \(3, 17, 32\).*not \(3, 16, 32\)"):
        check_vision_backbone("hf-vit-keeps-cls", tmp_path)


@pytest.fixture
def example_chat():
    import sys

    sys.path.insert(0, str(EXAMPLE_PLUGIN))
    try:
        from ovis_example_plugin.chat import END, ExampleChatFormat
        from ovis_example_plugin.llm import build_byte_tokenizer

        yield ExampleChatFormat, END, build_byte_tokenizer()
    finally:
        sys.path.remove(str(EXAMPLE_PLUGIN))


def test_a_format_that_does_not_learn_its_end_of_turn_fails(example_chat):
    base, end, tokenizer = example_chat

    class Unlearned(base):
        name = "unlearned"

        def segments(self, messages, *, add_generation_prompt=False):
            out = []
            for segment in super().segments(messages, add_generation_prompt=add_generation_prompt):
                if segment.learn and segment.text.endswith(end):  # the reply learned, its <|end|> not
                    out += [Segment(text=segment.text[: -len(end)], learn=True), Segment(text=end)]
                else:
                    out.append(segment)
            return out

    check_chat_format(base(), tokenizer)  # the control passes
    with pytest.raises(AssertionError, match="0 end-of-turn tokens are learned for 1 assistant replies"):
        check_chat_format(Unlearned(), tokenizer)


def test_a_format_that_renders_otherwise_than_the_template_fails(example_chat):
    base, _, tokenizer = example_chat

    class Shouting(base):
        name = "shouting"

        def segments(self, messages, *, add_generation_prompt=False):
            return [
                Segment(text=s.text.replace("<|user|>", "<|user|>!"), learn=s.learn)
                for s in super().segments(messages, add_generation_prompt=add_generation_prompt)
            ]

    with pytest.raises(AssertionError, match="render\\(\\) gives"):
        check_chat_format(Shouting(), tokenizer)


def test_the_checks_fixture_registers_for_one_test_only(ovis_plugin):
    from ovis.plugin_host import get_host

    ovis_plugin("hf-vit-test", hf_vit_plugin.Plugin())
    assert get_host().vision("hf-vit-renamed").plugin == "hf-vit-test"


def test_and_it_is_gone_after():
    from ovis.plugin_host import UnknownNameError, get_host

    with pytest.raises(UnknownNameError):
        get_host().vision("hf-vit-renamed")


def test_the_pytest_plugin_is_registered_and_light():
    """Every pytest session of an environment with ovis loads ovis.testing (entry point pytest11):
    it must not import torch or transformers."""
    import subprocess
    import sys
    from importlib import metadata

    assert [e.value for e in metadata.entry_points(group="pytest11") if e.name == "ovis"] == ["ovis.testing"]
    code = "import sys, ovis.testing; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_backbone_that_ignores_its_image_fails(hf_vit, ovis_plugin, tmp_path):
    from ovis.interfaces import hookimpl

    class Blind(hf_vit_plugin.HFViT):
        def forward(self, pixel_values):
            return super().forward(torch.zeros_like(pixel_values))

    class Plugin:
        @hookimpl
        def register_vision_backbones(self, register):
            register(hf_vit_plugin._spec("blind-vit", "blind-vit"), Blind)

    ovis_plugin("blind", Plugin())
    with pytest.raises(AssertionError, match="blind-vit: forward gave the same features for two different images"):
        check_vision_backbone("blind-vit", tmp_path)


def test_an_llm_whose_architecture_names_an_eos_the_tokenizer_lacks_fails(example_plugin, ovis_plugin):
    from ovis.interfaces import hookimpl
    from ovis.plugin_host import get_host
    from ovis.testing import check_llm

    entry = get_host().llm("example-llm")
    check_llm("example-llm")  # the control passes
    spec = entry.spec.model_copy(
        update={"name": "example-llm-bad-eos", "aliases": [], "architecture": {**entry.spec.architecture,
                                                                              "eos_token_id": 100}}
    )

    class Plugin:
        @hookimpl
        def register_llms(self, register):
            register(spec, entry.factory)

    ovis_plugin("bad-eos", Plugin())
    with pytest.raises(AssertionError, match=r"example-llm-bad-eos: the architecture's eos_token_id is 100 .*not a "
                                             r"special token of the tokenizer"):
        check_llm("example-llm-bad-eos")

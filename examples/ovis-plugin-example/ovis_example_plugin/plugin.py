"""The plugin module named by the ``ovis.plugins`` entry point: registers what this package adds.

The ViT's spec is built in code, the LLM's is read from a YAML preset file: a plugin may do either.
Each spec's ``plugin`` names this distribution (``ovis-plugin-example``), which the host checks.
"""

from __future__ import annotations

from pathlib import Path

from ovis.interfaces import ImagePreprocessSpec, VisionSpec, hookimpl, load_preset_file
from ovis_example_plugin.chat import ExampleChatFormat, PlainChatFormat
from ovis_example_plugin.llm import ExampleLLM
from ovis_example_plugin.vit import ExampleViT

EXAMPLE_VIT = VisionSpec(
    name="example-vit",
    aliases=["example"],
    family="example",
    builder="example-vit",
    plugin="ovis-plugin-example",
    source="other",
    description="A 2-layer pure-PyTorch ViT (width 32, 32 px, patch 8): 16 patches",
    tiny=True,
    hidden_size=32,
    image_size=32,
    patch_size=8,
    num_layers=2,
    num_heads=2,
    has_cls_token=False,
    preprocess=ImagePreprocessSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash"),
)

#: the LLM's spec is a preset file beside this module (a plugin may keep a folder of them)
EXAMPLE_LLM = load_preset_file(Path(__file__).with_name("example-llm.yaml"), "llm")


@hookimpl
def register_vision_backbones(register):
    register(EXAMPLE_VIT, ExampleViT)


@hookimpl
def register_llms(register):
    register(EXAMPLE_LLM, ExampleLLM)


@hookimpl
def register_chat_formats(register):
    register(PlainChatFormat())
    register(ExampleChatFormat())

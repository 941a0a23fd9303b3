"""The plugin module named by the ``ovis.plugins`` entry point: registers what this package adds.

The spec is built in code here; a plugin could equally read YAML presets of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from ovis.interfaces import ChatFormat, ImagePreprocessSpec, Message, Segment, VisionSpec, hookimpl
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


class PlainChatFormat(ChatFormat):
    """``User: ...\\nAssistant: ...\\n`` with no special tokens at all."""

    name = "example-plain"

    def segments(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> list[Segment]:
        out = []
        for message in self.coerce(messages):
            header = f"{message.role.capitalize()}: "
            if message.role == "assistant":
                out += [Segment(text=header), Segment(text=message.content + "\n", learn=True)]
            else:
                out.append(Segment(text=header + message.content + "\n"))
        if add_generation_prompt:
            out.append(Segment(text="Assistant: "))
        return out


@hookimpl
def register_vision_backbones(register):
    register(EXAMPLE_VIT, ExampleViT)


@hookimpl
def register_chat_formats(register):
    register(PlainChatFormat())

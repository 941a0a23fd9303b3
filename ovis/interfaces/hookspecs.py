"""The pluggy hooks a plugin may implement.

Each hook receives a ``register`` callback, in the style of simonw/llm and tox: a plugin calls it
once per thing it provides. A plugin module looks like::

    from ovis.interfaces import hookimpl

    @hookimpl
    def register_vision_backbones(register):
        register(MY_SPEC, MyBackbone)

and is made discoverable with an entry point in its own ``pyproject.toml``::

    [project.entry-points."ovis.plugins"]
    my-plugin = "my_package.plugin"
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # annotations only: the backbone bases import torch, which listing must not pay for
    from ovis.interfaces.chat import ChatFormat
    from ovis.interfaces.llm import LLMBackbone
    from ovis.interfaces.specs import LLMSpec, VisionSpec
    from ovis.interfaces.vision import VisionBackbone

PROJECT = "ovis"
ENTRY_POINT_GROUP = "ovis.plugins"
#: set to 1 / true / yes to turn plugin and preset failures into errors with a traceback
STRICT_ENV = "OVIS_STRICT_PLUGINS"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

RegisterVision = Callable[["VisionSpec", "type[VisionBackbone]"], None]
RegisterLLM = Callable[["LLMSpec", "type[LLMBackbone]"], None]
RegisterChatFormat = Callable[["ChatFormat"], None]


def strict_from_env() -> bool:
    """Whether ``OVIS_STRICT_PLUGINS`` asks for plugin failures to raise."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes"}


@hookspec
def register_vision_backbones(register: RegisterVision) -> None:
    """Call ``register(spec, backbone_class)`` for each vision encoder this plugin provides.
    ``backbone_class.from_spec(spec, pretrained=...)`` must build it."""


@hookspec
def register_llms(register: RegisterLLM) -> None:
    """Call ``register(spec, llm_class)`` for each LLM this plugin provides; ``llm_class(spec)``
    gives the model, tokenizer and chat-format name."""


@hookspec
def register_chat_formats(register: RegisterChatFormat) -> None:
    """Call ``register(chat_format)`` for each chat format (an instance with a unique ``name``)."""

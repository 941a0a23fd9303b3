"""The ``ovis.plugins`` entry point: registers the Llama 3 / 3.2 presets and the ``llama3`` and
``llama3.2`` formats."""

from __future__ import annotations

from ovis.interfaces import hookimpl, iter_presets
from ovis_llama.chat_format import LLAMA3, LLAMA32

BUILDER = "llama3"
#: imported when a model is built, not when the plugin is listed (torch stays out of `ovis list`)
FACTORY = "ovis_llama.backbone:Llama3LLM"


@hookimpl
def register_llms(register) -> None:
    for spec in iter_presets("llm", builders={BUILDER}):
        register(spec, FACTORY)


@hookimpl
def register_chat_formats(register) -> None:
    register(LLAMA3)
    register(LLAMA32)

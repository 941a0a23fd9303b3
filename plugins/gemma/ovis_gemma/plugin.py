"""The ``ovis.plugins`` entry point: registers the Gemma presets and the ``gemma`` chat format."""

from __future__ import annotations

from ovis.interfaces import hookimpl, iter_presets
from ovis_gemma.chat_format import GEMMA

BUILDER = "gemma"
#: imported when a model is built, not when the plugin is listed (torch stays out of `ovis list`)
FACTORY = "ovis_gemma.backbone:GemmaLLM"


@hookimpl
def register_llms(register) -> None:
    for spec in iter_presets("llm", builders={BUILDER}):
        register(spec, FACTORY)


@hookimpl
def register_chat_formats(register) -> None:
    register(GEMMA)

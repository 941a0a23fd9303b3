"""The ``ovis.plugins`` entry point: registers the Qwen presets and the ChatML formats (chatml, qwen2.5, qwen3)."""

from __future__ import annotations

from ovis.interfaces import hookimpl, iter_presets
from ovis_qwen.chat_format import CHATML, QWEN3, QWEN25

BUILDER = "qwen"
#: imported when a model is built, not when the plugin is listed (torch stays out of `ovis list`)
FACTORY = "ovis_qwen.backbone:QwenLLM"


@hookimpl
def register_llms(register) -> None:
    for spec in iter_presets("llm", builders={BUILDER}):
        register(spec, FACTORY)


@hookimpl
def register_chat_formats(register) -> None:
    register(CHATML)
    register(QWEN25)
    register(QWEN3)

"""The contracts between the ovis core and its plugins (the lowest layer, beside ``ovis.errors``).

Plugins import from here and nowhere else in ovis. Depends on torch, transformers, pydantic,
pluggy and pillow only. The specs, chat formats, hooks and presets import without torch; the
names that need torch or transformers (the backbone bases, image preprocessing) are imported on
first use, so that listing plugins and ``ovis --help`` start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ovis.interfaces.chat import (
    IGNORE_INDEX,
    IMAGE_MARKER,
    IMAGE_PLACEHOLDER_ID,
    ChatFormat,
    ChatFormatError,
    Message,
    Segment,
    tokenize_segments,
)
from ovis.interfaces.hookspecs import ENTRY_POINT_GROUP, hookimpl, hookspec
from ovis.interfaces.presets import PresetError, iter_presets, load_preset_file
from ovis.interfaces.specs import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, LLMSpec, VisionSpec

if TYPE_CHECKING:
    from ovis.interfaces.image import ImageError, ImageInput, ImageProcessor, load_image
    from ovis.interfaces.llm import HFCausalLM, LLMBackbone
    from ovis.interfaces.vision import VisionBackbone

# Lazy for start-up speed: these modules import torch (and transformers) at the top.
_LAZY = {
    "HFCausalLM": "ovis.interfaces.llm",
    "LLMBackbone": "ovis.interfaces.llm",
    "VisionBackbone": "ovis.interfaces.vision",
    "ImageError": "ovis.interfaces.image",
    "ImageInput": "ovis.interfaces.image",
    "ImageProcessor": "ovis.interfaces.image",
    "load_image": "ovis.interfaces.image",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ENTRY_POINT_GROUP",
    "IGNORE_INDEX",
    "IMAGE_MARKER",
    "IMAGE_PLACEHOLDER_ID",
    "ChatFormat",
    "ChatFormatError",
    "HFCausalLM",
    "ImageError",
    "ImageInput",
    "ImagePreprocessSpec",
    "ImageProcessor",
    "LLMBackbone",
    "LLMSpec",
    "Message",
    "PresetError",
    "Segment",
    "VisionBackbone",
    "VisionSpec",
    "hookimpl",
    "hookspec",
    "iter_presets",
    "load_image",
    "load_preset_file",
    "tokenize_segments",
]

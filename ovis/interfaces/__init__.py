"""Layer 1: the contracts between the ovis core and its plugins.

Plugins import from here and nowhere else in ovis. Depends on torch, transformers, pydantic,
pluggy and pillow only.
"""

from ovis.interfaces.chat import IMAGE_MARKER, ChatFormat, ChatFormatError, Message, Segment
from ovis.interfaces.hookspecs import ENTRY_POINT_GROUP, hookimpl, hookspec
from ovis.interfaces.image import ImageError, ImageProcessor, load_image
from ovis.interfaces.llm import HFCausalLM, LLMBackbone
from ovis.interfaces.presets import PresetError, iter_presets, load_preset_file
from ovis.interfaces.specs import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, LLMSpec, VisionSpec
from ovis.interfaces.vision import VisionBackbone

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ENTRY_POINT_GROUP",
    "IMAGE_MARKER",
    "ChatFormat",
    "ChatFormatError",
    "HFCausalLM",
    "ImageError",
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
]

"""Interoperability with other checkpoint layouts.

* :mod:`ovis.interop.original`: the original Ovis v1 format (``AIDC-AI/Ovis-Clip-*``): detect,
  load (also directly through ``OvisForCausalLM.from_pretrained`` / ``ovis.load``), convert, write.
* :mod:`ovis.interop.vit_layouts`: one CLIP ViT's weights in the transformers, open_clip and timm
  layouts, converted between each other.
"""

from ovis.interop.original import (
    ConversionError,
    ConversionReport,
    MissingShardError,
    NotAnOvisCheckpointError,
    ShapeMismatchError,
    UnknownFormatterError,
    UnsupportedError,
    checkpoint_format,
    convert,
    is_original_checkpoint,
    load_original,
    save_original,
)
from ovis.interop.vit_layouts import (
    LAYOUTS,
    ViTLayoutError,
    clip_vision_config,
    convert_vit_state_dict,
    load_vit_state_dict,
)

__all__ = [
    "LAYOUTS",
    "ConversionError",
    "ConversionReport",
    "MissingShardError",
    "NotAnOvisCheckpointError",
    "ShapeMismatchError",
    "UnknownFormatterError",
    "UnsupportedError",
    "ViTLayoutError",
    "checkpoint_format",
    "clip_vision_config",
    "convert",
    "convert_vit_state_dict",
    "is_original_checkpoint",
    "load_original",
    "load_vit_state_dict",
    "save_original",
]

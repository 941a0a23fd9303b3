"""Interoperability with other checkpoint layouts.

* :mod:`ovis.interop.original`: the original Ovis v1 format (``AIDC-AI/Ovis-Clip-*``): load, convert
  (:mod:`ovis.interop.v1_writer` writes it). Detecting and reading it is the model layer's
  (:mod:`ovis.model.v1_format`, :mod:`ovis.model.v1_weights`), so that
  ``OvisForCausalLM.from_pretrained`` / ``ovis.load`` read v1 directories directly.
* One CLIP ViT's weights in the transformers, open_clip and timm layouts, converted between each
  other: :mod:`ovis.model.vit_layouts`, re-exported here.
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
from ovis.model.vit_layouts import (
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

"""Interoperability with other checkpoint layouts.

* :mod:`ovis.interop.original`: the original Ovis v1 format (``AIDC-AI/Ovis-Clip-*``): load, convert
  (:mod:`ovis.interop.v1_writer` writes it). Detecting and reading it is the model layer's
  (:mod:`ovis.model.v1_format`, :mod:`ovis.model.v1_weights`), so that
  ``OvisForCausalLM.from_pretrained`` / ``ovis.load`` read v1 directories directly.
* :mod:`ovis.interop.hf_ovis2`: transformers' native Ovis2 layout (``Ovis2ForConditionalGeneration``,
  "hf-ovis2"): load, write; reading it is :mod:`ovis.model.ovis2_format`'s.
* :mod:`ovis.interop.ovis2_release`: the AIDC-AI Ovis2 release layout ("ovis2"): load, write; reading
  it is :mod:`ovis.model.ovis2_release_format`'s.
* :func:`convert` (:mod:`ovis.interop.conversion`) converts between all of them.
* One CLIP ViT's weights in the transformers, open_clip and timm layouts, converted between each
  other: :mod:`ovis.model.vit_layouts`, re-exported here.
"""

from ovis.interop.conversion import FORMATS, convert
from ovis.interop.hf_ovis2 import load_hf_ovis2, save_hf_ovis2
from ovis.interop.original import (
    ConversionError,
    ConversionReport,
    MissingShardError,
    NotAnOvisCheckpointError,
    ShapeMismatchError,
    UnknownFormatterError,
    UnsupportedError,
    checkpoint_format,
    is_original_checkpoint,
    load_original,
    save_original,
)
from ovis.interop.ovis2_release import load_release, save_release
from ovis.model.ovis2_format import is_hf_ovis2_checkpoint
from ovis.model.ovis2_release_format import is_release_checkpoint
from ovis.model.vit_layouts import (
    LAYOUTS,
    ViTLayoutError,
    clip_vision_config,
    convert_vit_state_dict,
    load_vit_state_dict,
)

__all__ = [
    "FORMATS",
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
    "is_hf_ovis2_checkpoint",
    "is_original_checkpoint",
    "is_release_checkpoint",
    "load_hf_ovis2",
    "load_original",
    "load_release",
    "load_vit_state_dict",
    "save_hf_ovis2",
    "save_original",
    "save_release",
]

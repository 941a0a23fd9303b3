"""Interop with original Ovis v1 checkpoints: load one as an ovis model, convert between the two
formats. What a v1 directory holds is described in :mod:`ovis.model.v1_format` (detection and
config translation) and :mod:`ovis.model.v1_weights`; writing one is :mod:`ovis.interop.v1_writer`.
The names of those modules are re-exported here, the public home of v1 interop."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ovis.composer import DTYPES, load, save
from ovis.errors import ConfigError
from ovis.fsutil import check_output_dir
from ovis.interop.foreign import load_foreign
from ovis.interop.v1_writer import original_config, parse_size, save_original
from ovis.model.modeling_ovis import read_original
from ovis.model.v1_format import (
    ConfigTranslation,
    ConversionError,
    MissingShardError,
    NotAnOvisCheckpointError,
    ShapeMismatchError,
    UnknownFormatterError,
    UnsupportedError,
    chat_format_for,
    checkpoint_format,
    is_original_checkpoint,
    is_original_config,
    read_config,
    translate_config,
)
from ovis.model.v1_weights import OriginalCheckpoint, check_state_dict, find_weight_files, read_state_dict
from ovis.processing import load_original_processor

__all__ = [
    "ConfigTranslation",
    "ConversionError",
    "ConversionReport",
    "MissingShardError",
    "NotAnOvisCheckpointError",
    "OriginalCheckpoint",
    "ShapeMismatchError",
    "UnknownFormatterError",
    "UnsupportedError",
    "chat_format_for",
    "check_state_dict",
    "checkpoint_format",
    "convert",
    "find_weight_files",
    "is_original_checkpoint",
    "is_original_config",
    "load_original",
    "load_original_processor",
    "original_config",
    "parse_size",
    "read_config",
    "read_original",
    "read_state_dict",
    "save_original",
    "translate_config",
]


def load_original(directory: str | Path, *, dtype: str | torch.dtype | None = None):
    """``(model, processor, notes)`` from a v1 directory."""
    model, processor, notes = load_foreign(directory, read_original, load_original_processor, dtype)
    _sync_generation(model, processor)
    return model, processor, notes


def _sync_generation(model, processor) -> None:
    generation = model.llm.generation_config
    generation.pad_token_id = processor.tokenizer.pad_token_id
    if processor.tokenizer.eos_token_id is not None:
        generation.eos_token_id = processor.tokenizer.eos_token_id


@dataclass
class ConversionReport:
    source: Path
    out: Path
    source_format: str
    target_format: str
    notes: list[str]


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: Literal["ovis", "original"],
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    safetensors: bool = False,
    code_from: str | Path | None = None,
) -> ConversionReport:
    """Convert a checkpoint directory: ``to="ovis"`` reads an original Ovis v1 checkpoint and writes
    an ovis model; ``to="original"`` reads an ovis model (or a v1 checkpoint) and writes the v1
    layout. ``out`` is written to a temporary sibling and renamed: an error leaves nothing there."""
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source_format = checkpoint_format(src)
    check_output_dir(out, overwrite=overwrite, sources=(src,))
    if to == "ovis":
        if source_format != "original":
            raise ConversionError(
                f"{src} is already in ovis format; --from original reads an original Ovis v1 checkpoint "
                "(use --to original to write one)"
            )
        model, processor, notes = load_original(src, dtype=DTYPES[dtype] if dtype else None)
        save(model, processor, out, overwrite=overwrite)
    elif to == "original":
        if source_format == "original":
            model, processor, notes = load_original(src, dtype=DTYPES[dtype] if dtype else None)
        else:
            model, processor = load(src, dtype=dtype)
            notes = []
        notes += save_original(
            model,
            processor,
            out,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            safetensors=safetensors,
            code_from=code_from,
        )
    else:
        raise ConfigError(f"to must be 'ovis' or 'original', got {to!r}")
    return ConversionReport(src, out, source_format, to, notes)

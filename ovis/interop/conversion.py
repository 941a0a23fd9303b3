"""``convert``: one entry point for every checkpoint format ovis reads and writes: ``ovis`` (its own),
``original`` (Ovis v1, :mod:`ovis.interop.original`) and ``hf-ovis2`` (transformers' Ovis2,
:mod:`ovis.interop.hf_ovis2`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ovis.composer import DTYPES, load, save
from ovis.errors import ConfigError
from ovis.fsutil import check_output_dir
from ovis.interop import original
from ovis.interop.hf_ovis2 import load_hf_ovis2, save_hf_ovis2
from ovis.interop.original import ConversionReport, load_original
from ovis.model.v1_format import ConversionError, checkpoint_format

FORMATS = ("ovis", "original", "hf-ovis2")


def _read(src: Path, source_format: str, dtype: str | None):
    """``(model, processor, notes)`` of a checkpoint in any format."""
    torch_dtype = DTYPES[dtype] if dtype else None
    if source_format == "original":
        return load_original(src, dtype=torch_dtype)
    if source_format == "hf-ovis2":
        return load_hf_ovis2(src, dtype=torch_dtype)
    model, processor = load(src, dtype=dtype)
    return model, processor, []


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: Literal["ovis", "original", "hf-ovis2"],
    from_format: Literal["original", "hf-ovis2"] | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    safetensors: bool = False,
    code_from: str | Path | None = None,
    keep_unnormalised: bool = False,
) -> ConversionReport:
    """Convert a checkpoint directory to ``to``. ``from_format`` (``to="ovis"``): the format SRC must be
    in (detected from its config.json otherwise). ``out`` is written to a temporary sibling and renamed:
    an error leaves nothing there."""
    if to not in FORMATS:
        raise ConfigError(f"to must be one of {', '.join(FORMATS)}, got {to!r}")
    if to == "original" or (
        to == "ovis" and from_format in (None, "original") and checkpoint_format(src) != "hf-ovis2"
    ):
        return original.convert(
            src,
            out,
            to=to,
            overwrite=overwrite,
            dtype=dtype,
            max_shard_size=max_shard_size,
            safetensors=safetensors,
            code_from=code_from,
        )
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source_format = checkpoint_format(src)
    check_output_dir(out, overwrite=overwrite, sources=(src,))
    if to == "ovis":
        if source_format != from_format and from_format is not None:
            raise ConversionError(f"{src} is in the {source_format!r} format, not {from_format!r}")
        model, processor, notes = _read(src, source_format, dtype)
        save(model, processor, out, overwrite=overwrite)
    else:
        model, processor, notes = _read(src, source_format, dtype)
        notes += save_hf_ovis2(
            model,
            processor,
            out,
            overwrite=overwrite,
            max_shard_size=max_shard_size,
            keep_unnormalised=keep_unnormalised,
        )
    return ConversionReport(src, out, source_format, to, notes)

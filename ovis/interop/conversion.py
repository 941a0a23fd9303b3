"""``convert``: one entry point for every checkpoint format ovis reads and writes: ``ovis`` (its own),
``original`` (Ovis v1, :mod:`ovis.interop.original`), ``hf-ovis2`` (transformers' Ovis2,
:mod:`ovis.interop.hf_ovis2`) and ``ovis2`` (the AIDC-AI Ovis2 release, :mod:`ovis.interop.ovis2_release`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ovis.composer import DTYPES, load, save
from ovis.errors import ConfigError
from ovis.fsutil import check_output_dir
from ovis.interop import original
from ovis.interop.hf_ovis2 import load_hf_ovis2, save_hf_ovis2
from ovis.interop.original import ConversionReport, load_original
from ovis.interop.ovis2_release import load_release, save_release
from ovis.model.v1_format import ConversionError, checkpoint_format

FORMATS = ("ovis", "original", "hf-ovis2", "ovis2")
_LOADERS = {"original": load_original, "hf-ovis2": load_hf_ovis2, "ovis2": load_release}


def _read(src: Path, source_format: str, dtype: str | None):
    """``(model, processor, notes)`` of a checkpoint in any format."""
    if source_format in _LOADERS:
        return _LOADERS[source_format](src, dtype=DTYPES[dtype] if dtype else None)
    model, processor = load(src, dtype=dtype)
    return model, processor, []


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: Literal["ovis", "original", "hf-ovis2", "ovis2"],
    from_format: Literal["original", "hf-ovis2", "ovis2"] | None = None,
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
    source_format = checkpoint_format(src)
    if to == "original" or (to == "ovis" and from_format in (None, "original") and source_format in FORMATS[:2]):
        # v1 conversions (and their messages) are ovis.interop.original's
        return original.convert(
            src, out, to=to, overwrite=overwrite, dtype=dtype, max_shard_size=max_shard_size,
            safetensors=safetensors, code_from=code_from,
        )  # fmt: skip
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if from_format is not None and source_format != from_format:
        raise ConversionError(f"{src} is in the {source_format!r} format, not {from_format!r}")
    if to == "ovis" and source_format == "ovis":
        raise ConversionError(f"{src} is already in ovis format")
    check_output_dir(out, overwrite=overwrite, sources=(src,))
    model, processor, notes = _read(src, source_format, dtype)
    if to == "ovis":
        save(model, processor, out, overwrite=overwrite)
    elif to == "hf-ovis2":
        notes += save_hf_ovis2(
            model, processor, out, overwrite=overwrite, max_shard_size=max_shard_size,
            keep_unnormalised=keep_unnormalised,
        )  # fmt: skip
    else:
        notes += save_release(
            model, processor, out, overwrite=overwrite, max_shard_size=max_shard_size, code_from=code_from
        )
    return ConversionReport(src, out, source_format, to, notes)

"""Check an ovis-format model directory before anything is loaded from it.

transformers reports a damaged directory with tracebacks that name neither the file nor the tensor
(a missing directory reads as a bad hub repo id, a truncated safetensors file as a header error).
:func:`check_model_directory` reads only ``config.json`` and the safetensors headers (never a
tensor) and raises an :class:`~ovis.errors.OvisError` naming what is wrong:

* a missing directory, or one without ``config.json`` or without weights: ``InputFileError``;
* ``config.json`` that is not a JSON object: ``ConfigError`` with the line and column;
* only pickle weights (``pytorch_model*.bin``): they are not loaded, convert them to safetensors;
* a truncated or corrupt safetensors file, or a shard the index names that is absent;
* (:func:`check_tensor_shapes`) a tensor whose shape is not the one the config implies;
* (:func:`check_missing_weights`) a weight the model needs that no file holds (transformers would
  initialise it at random and go on).

An original Ovis v1 directory is left to its own reader (:mod:`ovis.model.v1_weights`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ovis.errors import InputFileError
from ovis.json_files import read_json_object
from ovis.model.v1_format import (
    BIN_INDEX,
    CONFIG_FILE,
    SAFE_INDEX,
    SAFE_NAME,
    ConversionError,
    ShapeMismatchError,
    config_format,
)

WRITTEN_BY = "give a directory written by `ovis compose`, `ovis train` or `ovis quickstart`"
#: an upper bound on a safetensors JSON header (the format itself caps it at 100 MB)
_MAX_HEADER = 100_000_000


class CorruptWeightsError(ConversionError):
    """A weight file that cannot be read: truncated, corrupt, pickle-only or missing from its index."""


def read_model_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of ``directory`` as a dict; a clean error when it is absent or not JSON."""
    if not directory.exists():
        raise InputFileError(f"model directory {str(directory)!r} does not exist; {WRITTEN_BY}")
    if not directory.is_dir():
        raise InputFileError(f"model directory {str(directory)!r} is not a directory; {WRITTEN_BY}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise InputFileError(f"{directory} has no {CONFIG_FILE}, so it holds no model; {WRITTEN_BY}")
    return read_json_object(path, "the model config")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor entries (name -> dtype, shape, data_offsets) of a safetensors file, checked against
    the file's size, so that a truncated or corrupt file is named before anything reads it."""

    def corrupt(why: str) -> CorruptWeightsError:
        return CorruptWeightsError(f"{path}: corrupt or truncated safetensors file ({why}); "
                                   "copy or write it again")

    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                raise corrupt(f"its header claims {length} bytes but the file holds {size}")
            raw = handle.read(length)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(f"its header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise corrupt("its header is not a JSON object")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        try:
            start, stop = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise corrupt(f"the header entry of tensor {name!r} is malformed") from exc
        if not 0 <= start <= stop or any(d < 0 for d in shape):
            raise corrupt(f"the header entry of tensor {name!r} is malformed")
        end = max(end, stop)
    if 8 + length + end != size:
        raise corrupt(f"its tensors need {8 + length + end} bytes, the file holds {size}")
    return tensors


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of an ovis-format directory (its index's shards, or ``model.safetensors``)."""
    index = directory / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptWeightsError(f"{index}: not a valid safetensors index (a JSON object with a "
                                      f"'weight_map' of tensor name -> shard file): {exc}") from exc
        files = [directory / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CorruptWeightsError(f"{index} names weight files that are absent from {directory}: "
                                      f"{', '.join(missing)}")
        return files
    single = directory / SAFE_NAME
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in directory.glob("pytorch_model*.bin"))
    if pickles or (directory / BIN_INDEX).is_file():
        found = ", ".join(pickles) or BIN_INDEX
        raise CorruptWeightsError(
            f"{directory} holds only pickle weights ({found}): pickle weights are not loaded (a pickle can run "
            f"code); convert them to safetensors ({SAFE_NAME}), e.g. load them in a trusted session and "
            "save_pretrained(..., safe_serialization=True)"
        )
    raise InputFileError(f"{directory} has no weights ({SAFE_NAME} or {SAFE_INDEX}); {WRITTEN_BY}")


def check_model_directory(directory: str | Path) -> dict[str, dict[str, list[int]]] | None:
    """Check ``directory`` without loading a tensor; ``None`` for an original v1 checkpoint (its
    reader checks it), else ``{file: {tensor: shape}}`` from the safetensors headers."""
    directory = Path(directory)
    config = read_model_config(directory)
    if config_format(config, directory) == "original":
        return None
    shapes: dict[str, dict[str, list[int]]] = {}
    for path in _weight_files(directory):
        header = safetensors_header(path)
        shapes[path.name] = {name: [int(d) for d in entry["shape"]] for name, entry in header.items()}
    return shapes


def check_tensor_shapes(
    shapes: Mapping[str, Mapping[str, list[int]]],
    expected: Mapping[str, tuple[int, ...]],
    directory: str | Path,
    renamed: Mapping[str, str] | None = None,
) -> None:
    """Name the first tensor of ``shapes`` (per file) whose shape differs from ``expected`` (the
    model's own state-dict shapes; ``renamed``: stored name -> the model's, where they differ);
    tensors the model does not hold are left to the loader."""
    renamed = renamed or {}
    for file, tensors in shapes.items():
        for name, shape in tensors.items():
            want = expected.get(renamed.get(name, name))
            if want is not None and tuple(shape) != tuple(want):
                if math.prod(shape) == 0 and math.prod(want) == 0:
                    continue
                raise ShapeMismatchError(
                    f"{Path(directory) / file}: tensor {name!r} has shape {list(shape)}, but the model its "
                    f"config.json describes expects {list(want)}; the weights and config.json do not belong together"
                )


def check_missing_weights(
    model_names: Sequence[Sequence[str]],
    stored: set[str],
    directory: str | Path,
    renamed: Mapping[str, str] | None = None,
) -> None:
    """Name the weights the model needs that ``stored`` (the tensor names of the directory's files)
    lacks. ``model_names``: per parameter, every name it has in the model (tied weights have two; a
    file holds one of them); ``renamed``: stored name -> the model's, where they differ."""
    renamed = renamed or {}
    present = {renamed.get(name, name) for name in stored}
    missing = [names[0] for names in model_names if not set(names) & present]
    if missing:
        raise InputFileError(
            f"{directory}: {len(missing)} weight(s) the model needs are not in its files, e.g. "
            f"{', '.join(missing[:3])}; the files are incomplete or were written for another model "
            "(a model loaded without them would run on random values)"
        )


#: suffixes of weight files: a name ending so is a path, never a hub id
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def check_weights_source(source: str, option: str) -> None:
    """Check weights a user names for a backbone (``--vit-weights`` / ``--llm-weights``) before a
    library reads them: a path that does not exist is named as such (not as a malformed hub id), and a
    directory of transformers pickle weights only (``pytorch_model*.bin``) is refused with what to do
    (transformers' own refusal suggests loading it unsafely). A hub id (``ORG/NAME``) passes."""
    path = Path(source).expanduser()
    if path.is_dir():
        pickles = any(path.glob("pytorch_model*.bin")) or (path / BIN_INDEX).is_file()
        if pickles and not any(path.glob("*.safetensors")):
            found = ", ".join(sorted(p.name for p in path.glob("pytorch_model*.bin"))) or BIN_INDEX
            raise CorruptWeightsError(
                f"{option} {source}: the directory holds only pickle weights ({found}), which are not loaded "
                "(a pickle can run code); convert them to safetensors, e.g. load them in a trusted session and "
                "save_pretrained(..., safe_serialization=True)"
            )
        return
    if path.exists():
        return
    looks_like_a_path = (
        path.is_absolute()
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or source.endswith(_WEIGHT_SUFFIXES)
    )
    if looks_like_a_path:
        raise InputFileError(f"{option} {source}: no such file or directory (a hub id is written ORG/NAME)")

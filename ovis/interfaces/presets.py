"""Reading named presets (``registry/*/*.yaml``) for plugins.

Adding a size of an existing family is a new data file, not new code: a plugin asks for the
presets whose ``builder`` it implements and registers one spec per file. Extra preset folders can
be added with ``OVIS_REGISTRY_PATH`` (``os.pathsep``-separated), laid out like ``registry/``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import ValidationError

from ovis.errors import OvisError
from ovis.interfaces.hookspecs import strict_from_env
from ovis.interfaces.specs import Kind, LLMSpec, VisionSpec
from ovis.yaml_errors import yaml_problem

SpecT = TypeVar("SpecT", VisionSpec, LLMSpec)
_SPEC_TYPES: dict[str, type] = {"vision": VisionSpec, "llm": LLMSpec}


class PresetError(OvisError, ValueError):
    """A preset file that is not valid YAML or does not match its spec."""


def registry_dirs() -> list[Path]:
    """The bundled registry first, then any from ``OVIS_REGISTRY_PATH``."""
    dirs = [Path(str(resources.files("ovis_registry")))]
    extra = os.environ.get("OVIS_REGISTRY_PATH", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs


def preset_files(kind: Kind) -> list[Path]:
    files: list[Path] = []
    for root in registry_dirs():
        files += sorted((root / kind).glob("*.yaml"))
    return files


def load_preset_file(path: Path, kind: Kind) -> VisionSpec | LLMSpec:
    try:
        raw = path.read_bytes()
    except IsADirectoryError as exc:
        raise PresetError(f"{path}: a directory, not a preset file") from exc
    except OSError as exc:
        raise PresetError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PresetError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML ({yaml_problem(exc, text)})") from exc
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        spec = _SPEC_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}" for err in exc.errors()
        )
        raise PresetError(f"{path}: {problems}") from exc
    if spec.name != path.stem:
        raise PresetError(f"{path}: name {spec.name!r} must match the file name {path.stem!r}")
    return _beside(spec, path)


def _beside(spec: VisionSpec | LLMSpec, path: Path) -> VisionSpec | LLMSpec:
    """A preset's ``weights`` (and an LLM's ``tokenizer``) written ``./DIR`` name a directory beside
    its file: weights shipped with the preset, found wherever the registry is installed."""
    update = {}
    for field in ("weights", "tokenizer"):
        value = getattr(spec, field, None)
        if isinstance(value, str) and value.startswith("./"):
            folder = (path.parent / value).resolve()
            if not folder.is_dir():
                raise PresetError(f"{path}: {field} {value!r}: no directory {folder}")
            update[field] = str(folder)
    return spec.model_copy(update=update) if update else spec


# Where iter_presets records the files it skips: a PluginHost sets its own dict while plugins
# register, so each host owns its report and nothing outlives it.
_SKIPPED: ContextVar[dict[str, str] | None] = ContextVar("ovis_skipped_presets", default=None)


@contextmanager
def recording_preset_errors(errors: dict[str, str]) -> Iterator[dict[str, str]]:
    """Within the block, :func:`iter_presets` records each invalid file it skips in ``errors``
    (path -> message) instead of warning."""
    token = _SKIPPED.set(errors)
    try:
        yield errors
    finally:
        _SKIPPED.reset(token)


def iter_presets(
    kind: Kind, *, builders: set[str] | None = None, strict: bool = False
) -> Iterator[VisionSpec | LLMSpec]:
    """Specs of every preset of ``kind`` (only those with a builder in ``builders`` if given).

    A bad file is skipped (so one broken preset does not take down every other preset of the
    plugin) and recorded by the plugin host that is loading the plugin (``ovis plugins`` lists
    it), or warned about outside a host; ``strict=True`` or ``OVIS_STRICT_PLUGINS=1`` raises.
    """
    strict = strict or strict_from_env()
    for path in preset_files(kind):
        try:
            spec = load_preset_file(path, kind)
        except PresetError as exc:
            if strict:
                raise
            skipped = _SKIPPED.get()
            if skipped is None:
                warnings.warn(f"skipped invalid preset {exc}", stacklevel=2)
            else:
                skipped[str(path)] = str(exc)
            continue
        if builders is None or spec.builder in builders:
            yield spec

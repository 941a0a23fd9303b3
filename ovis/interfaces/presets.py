"""Reading named presets (``registry/*/*.yaml``) for plugins.

Adding a size of an existing family is a new data file, not new code: a plugin asks for the
presets whose ``builder`` it implements and registers one spec per file. Extra preset folders can
be added with ``OVIS_REGISTRY_PATH`` (``os.pathsep``-separated), laid out like ``registry/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import ValidationError

from ovis.errors import OvisError
from ovis.interfaces.specs import LLMSpec, VisionSpec

Kind = Literal["vision", "llm"]
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
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML ({exc})") from exc
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
    return spec


#: preset files that failed to load, path -> message; the plugin host reports them
PRESET_ERRORS: dict[str, str] = {}


def iter_presets(
    kind: Kind, *, builders: set[str] | None = None, strict: bool = False
) -> Iterator[VisionSpec | LLMSpec]:
    """Specs of every preset of ``kind`` (only those with a builder in ``builders`` if given).

    A bad file is skipped and recorded in ``PRESET_ERRORS`` (so one broken preset does not take
    down every other preset of the plugin); ``strict=True`` or ``OVIS_STRICT_PLUGINS=1`` raises.
    """
    strict = strict or os.environ.get("OVIS_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}
    for path in preset_files(kind):
        try:
            spec = load_preset_file(path, kind)
        except PresetError as exc:
            if strict:
                raise
            PRESET_ERRORS[str(path)] = str(exc)
            continue
        if builders is None or spec.builder in builders:
            yield spec

"""Reading a JSON file that must hold one object (a model config, a weight index...), with errors
that name the file, the line and the column, and say what the file was expected to be."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovis.errors import ConfigError, InputFileError


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The object in ``path``; ``what`` ("the model config") is named in errors. A missing file is
    the caller's to handle (FileNotFoundError passes through, so format detection can use it)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what} as JSON") from exc
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} "
                          f"(expected {what})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object ({what}), got {type(data).__name__}")
    return data

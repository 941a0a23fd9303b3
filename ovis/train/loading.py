"""Reading a ``TrainConfig``: a YAML file plus ``key.sub=value`` overrides, and writing it back.

Unknown keys are reported with the valid keys at their level; a value pydantic refuses becomes a
:class:`~ovis.errors.ConfigError` naming the file and the dotted field.

Relative paths (:data:`~ovis.train.config.PATH_KEYS`): a path written in the YAML file resolves
against **the YAML file's directory** (a config keeps working wherever it is run from); a path
given as an override (``--set``) resolves against the **current directory**, as any command-line
path does. ``deepspeed`` may also name a built-in config (``zero2``, ``zero3``) or be null.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ovis.errors import ConfigError, InputFileError, validation_message
from ovis.train.config import PATH_KEYS, TrainConfig
from ovis.train.deepspeed_config import BUILTIN_DEEPSPEED
from ovis.yaml_errors import line_column, safe_load_unique, yaml_problem


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


#: names other trainers use for a key, and ours
_KNOWN_AS = {
    "learning_rate": "lr",
    "batch_size": "per_device_batch_size",
    "per_device_train_batch_size": "per_device_batch_size",
    "train_batch_size": "per_device_batch_size",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "output": "output_dir",
    "model_name_or_path": "model",
    "bf16": "precision",
    "fp16": "precision",
}


def check_keys(
    raw: dict[str, Any], model: type[BaseModel] = TrainConfig, prefix: str = "", source: Path | None = None
) -> None:
    """Raise ``ConfigError`` naming the first unknown key (dotted; and the file it is in, ``source``),
    the key meant where it is a close match or another trainer's name for one, and the valid keys."""
    for key, value in raw.items():
        _check_key(model, prefix, key, source)
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, f"{prefix}{key}.", source)


def _check_key(model: type[BaseModel], prefix: str, key: str, source: Path | None = None) -> None:
    if key in model.model_fields:
        return
    where = f" under {prefix[:-1]!r}" if prefix else ""
    meant = _KNOWN_AS.get(str(key).lower()) if model is TrainConfig else None
    if meant not in model.model_fields:
        close = difflib.get_close_matches(str(key), list(model.model_fields), n=1, cutoff=0.6)
        meant = close[0] if close else None
    hint = f"; did you mean {prefix + meant!r}?" if meant else ""
    raise ConfigError(
        f"{f'{source}: ' if source else ''}unknown config key {prefix + str(key)!r}{hint} "
        f"Valid keys{where}: {', '.join(model.model_fields)}"
    )


def apply_override(raw: dict[str, Any], override: str, base_dir: Path | None = None) -> None:
    """Apply one ``key.sub=value`` (value parsed as YAML) to ``raw`` in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value (e.g. lr=1e-4)")
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({yaml_problem(exc, text)})") from exc
    parts = dotted.split(".")
    model: type[BaseModel] | None = TrainConfig
    node = raw
    for depth, key in enumerate(parts):
        prefix = ".".join(parts[:depth]) + ("." if depth else "")
        if model is None:
            raise ConfigError(f"config key {prefix[:-1]!r} has no sub-keys (override {override!r})")
        _check_key(model, prefix, key)
        if depth == len(parts) - 1:
            if dotted in PATH_KEYS and isinstance(value, str):
                value = _resolve_path(dotted, value, base_dir or Path.cwd())
            node[key] = value
            return
        model = _submodel(model, key)
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} is not a mapping")


def _resolve_path(dotted: str, value: str, base: Path) -> str:
    if dotted == "deepspeed" and value in BUILTIN_DEEPSPEED:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for dotted in PATH_KEYS:
        *parents, last = dotted.split(".")
        node: Any = raw
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = _resolve_path(dotted, node[last], base)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputFileError(f"training config {path} not found") from exc
    except IsADirectoryError as exc:
        raise InputFileError(f"training config {path} is a directory, not a YAML file") from exc
    except OSError as exc:
        raise InputFileError(f"training config {path} cannot be read ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = line_column(data[: exc.start].decode("utf-8", errors="replace"), exc.start)
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column}); "
                          "save the config as UTF-8") from exc
    try:
        loaded = safe_load_unique(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc, text)})") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return loaded or {}


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read ``path`` (YAML; may be None to build from overrides alone) and apply ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        raw = _read_yaml(path)
        check_keys(raw, source=path)
        _resolve_paths(raw, path.resolve().parent)
    for override in overrides:
        apply_override(raw, override)
    check_keys(raw)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        source = "training config" + (f" {path}" if path is not None else "") + (" with overrides" if overrides else "")
        raise ConfigError(f"{source}: {validation_message(exc)}") from exc


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (what ``ovis train --print-config`` shows)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

"""``dataset_info.json``: the named training datasets and where their files are.

    {"NAME": {"meta_file": "captions.parquet", "image_dir": "images", "data_format": "caption"}}

Relative ``meta_file`` / ``image_dir`` paths resolve against the directory of the json file, so a
dataset folder can be moved as a whole. Every problem is reported with the file and the field.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ovis.errors import OvisError
from ovis.interfaces import IMAGE_MARKER

META_SUFFIXES = (".json", ".jsonl", ".parquet")
DEFAULT_CAPTION_TEMPLATE = IMAGE_MARKER + "'s caption: "
_RAISE: Any = object()


class DataError(OvisError, ValueError):
    """Training data that cannot be used at all: a bad ``dataset_info.json`` or meta file."""


class UnknownDatasetError(DataError, KeyError):
    """A dataset name that ``dataset_info.json`` does not define."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetEntry(BaseModel):
    """One dataset of ``dataset_info.json``."""

    model_config = ConfigDict(extra="forbid")

    meta_file: str
    image_dir: str | None = None
    data_format: Literal["caption", "conversation"]
    #: the user turn of caption data; the caption is the assistant reply (the v1 template)
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    description: str = ""

    @field_validator("meta_file")
    @classmethod
    def _meta_suffix(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if not value.lower().endswith(META_SUFFIXES):
            raise ValueError(f"must end with one of {', '.join(META_SUFFIXES)} (got {value!r})")
        return value

    @field_validator("caption_template")
    @classmethod
    def _one_marker(cls, value: str) -> str:
        if value.count(IMAGE_MARKER) != 1:
            raise ValueError(
                f"must contain {IMAGE_MARKER} exactly once (it has {value.count(IMAGE_MARKER)}): {value!r}"
            )
        return value


class DatasetInfo(Mapping[str, DatasetEntry]):
    """Dataset name -> ``DatasetEntry``, remembering the json file (``path``) paths resolve against.

    ``info[name]`` and ``info.get(name)`` raise ``UnknownDatasetError`` (with close matches and the
    available names) for a name that is not defined.
    """

    def __init__(self, entries: Mapping[str, DatasetEntry | dict], path: str | Path | None = None) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self._entries: dict[str, DatasetEntry] = {}
        #: name -> what is wrong with its entry: refused when a run names it, not before, so that one
        #: broken entry does not stop runs that use only the others
        self.invalid: dict[str, str] = {}
        for name, entry in entries.items():
            repeated = _repeated(entries, name, entry)
            if repeated:
                self.invalid[name] = repeated
            elif isinstance(entry, DatasetEntry):
                self._entries[name] = entry
            elif not isinstance(entry, dict):
                self.invalid[name] = f"{name}: expected an object of fields, got {type(entry).__name__}"
            else:
                try:
                    self._entries[name] = DatasetEntry.model_validate(entry)
                except ValidationError as exc:
                    self.invalid[name] = "; ".join(f"{name}.{_describe(err)}" for err in exc.errors())

    def check(self, names: Iterable[str] | None = None) -> None:
        """Raise ``DataError`` for the first of ``names`` (default: every entry) that is broken or unknown."""
        for name in self.invalid if names is None else names:
            self.get(name)

    @property
    def _where(self) -> str:
        return f"{self.path}: " if self.path is not None else ""

    @property
    def base_dir(self) -> Path:
        """The directory relative paths resolve against (the json's, or the working directory)."""
        return self.path.parent if self.path is not None else Path.cwd()

    # -- mapping ----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> DatasetEntry:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, default: Any = _RAISE) -> Any:
        """The entry of ``name``; an unknown name raises (with suggestions) unless a default is given."""
        if name in self._entries:
            return self._entries[name]
        if name in self.invalid:
            raise DataError(f"{self._where}{self.invalid[name]}")
        if default is not _RAISE:
            return default
        known = list(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if not close:
            close = [k for k in known if name.lower() in k.lower()][:3]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDatasetError(
            f"{self._where}unknown dataset {name!r}.{hint} Available: {', '.join(sorted(known)) or 'none'}"
        )

    # -- paths ------------------------------------------------------------------------------------
    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def meta_path(self, name: str) -> Path:
        return self.resolve(self.get(name).meta_file)

    def image_root(self, name: str) -> Path:
        """Where the dataset's relative image paths start: ``image_dir``, else the meta file's folder."""
        entry = self.get(name)
        return self.resolve(entry.image_dir) if entry.image_dir else self.meta_path(name).parent

    def __repr__(self) -> str:
        return f"DatasetInfo({list(self._entries)}, path={str(self.path) if self.path else None!r})"


def _repeated(entries: Mapping[str, Any], name: str, entry: Any) -> str | None:
    """A name or field given twice (``json.loads`` alone would silently keep the last one)."""
    if name in getattr(entries, "repeated", {}):
        return f"{name}: defined more than once in the file; keep one"
    fields = list(getattr(entry, "repeated", {}))
    if fields:
        return f"{name}.{fields[0]}: given more than once in the entry; keep one"
    return None


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(entry)"
    message = err["msg"].removeprefix("Value error, ")
    got = "" if err["type"] in ("missing", "value_error") else f" (got {err['input']!r})"
    return f"{loc}: {message}{got}"


def load_dataset_info(path: str | Path) -> DatasetInfo:
    """Read and validate a ``dataset_info.json``; ``DataError`` names the file and what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "dataset_info.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: dataset_info file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the dataset_info file ({exc})") from exc
    data = parse_json(path, text, object_pairs_hook=_Object.from_pairs)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of dataset name -> entry, got {type(data).__name__}")
    return DatasetInfo(data, path=path)


class _Object(dict):
    """A JSON object that remembers which of its keys were given more than once."""

    repeated: dict[str, bool]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _Object:
        obj = cls(pairs)
        seen: set[str] = set()
        obj.repeated = {}
        for key, _ in pairs:
            if key in seen:
                obj.repeated[key] = True
            seen.add(key)
        return obj


def parse_json(path: Path, text: str, **options: Any) -> Any:
    """``json.loads`` with errors that name the file, line and column."""
    try:
        return json.loads(text, **options)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc

"""Meta files -> ``Record``s: caption rows and LLaVA-style conversations as chat messages.

A meta file that cannot be read at all (missing, not JSON/JSONL/parquet, wrong top-level type)
raises ``DataError`` at once, naming the path. A single malformed record is skipped and counted in
the ``SkipLog`` with its source (``"name[row]"``), its file (and line, for JSONL) and the reason:
never trained on as empty. Images are checked to exist here (a cheap ``stat``, so that a record
whose image is missing is left out before training starts); they are opened when a sample is
encoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovis.data.schema import DataError, DatasetEntry, DatasetInfo, load_dataset_info, parse_json
from ovis.data.skips import SkipLog
from ovis.errors import OvisError
from ovis.interfaces import IMAGE_MARKER, Message

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Record:
    """One training conversation, its images (in ``<image>`` order) and where it came from."""

    id: str
    messages: list[Message]
    images: list[Path] = field(default_factory=list)
    source: str = ""  # "dataset[row]"
    file: str = ""  # the meta file it was read from (with the line, for JSONL)


class RecordError(OvisError, ValueError):
    """A malformed record; ``kind`` is the short reason it is counted under."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def read_records(
    info: DatasetInfo | str | Path, name: str, skip_log: SkipLog | None = None, *, check_images: bool = True
) -> list[Record]:
    """The usable records of dataset ``name``; malformed ones (and, with ``check_images``, those
    naming an image file that does not exist) are counted in ``skip_log``."""
    if skip_log is None:
        skip_log = SkipLog()
    if not isinstance(info, DatasetInfo):
        info = load_dataset_info(info)
    entry = info.get(name)
    path = info.meta_path(name)
    image_root = info.image_root(name)
    rows, lines = _rows_and_lines(path)
    skip_log.add_total(len(rows))
    convert = _caption if entry.data_format == "caption" else _conversation
    root_checked = not check_images
    records: list[Record] = []
    for index, row in enumerate(rows):
        source = f"{name}[{index}]"
        where = f"{path} line {lines[index]}" if lines else str(path)
        try:
            if isinstance(row, _BadLine):
                raise RecordError("not valid JSON", row.message)
            if not isinstance(row, dict):
                raise RecordError("record is not an object", f"got {type(row).__name__}")
            messages, images = convert(row, entry)
            paths = [image_root / p for p in images]
            if paths and not root_checked:
                _check_image_root(info, name, image_root, source)
                root_checked = True
            if check_images:
                _check_images(paths)
        except RecordError as exc:
            skip_log.add(source, str(exc), kind=exc.kind, file=where, stage="read")
            continue
        record_id = row.get("id")
        records.append(
            Record(
                id=str(record_id) if record_id not in (None, "") else source,
                messages=messages,
                images=paths,
                source=source,
                file=where,
            )
        )
    return records


def _check_image_root(info: DatasetInfo, name: str, root: Path, source: str) -> None:
    """A missing image directory is the entry's error, not one skip per record."""
    if root.is_dir():
        return
    field = "image_dir" if info.get(name).image_dir else "meta_file (its directory holds the images)"
    where = f"{info.path}: " if info.path is not None else ""
    raise DataError(f"{where}{name}.{field}: image directory {root} not found (record {source} names an image)")


def _check_images(paths: list[Path]) -> None:
    for image in paths:
        if not image.is_file():
            raise RecordError("image not found", f"{image} is a directory" if image.is_dir() else str(image))


# -- meta files -----------------------------------------------------------------------------------
@dataclass
class _BadLine:
    message: str


def load_rows(path: Path) -> list[Any]:
    """The rows of a ``.json`` (a list), ``.jsonl`` (one object a line) or ``.parquet`` meta file."""
    return _rows_and_lines(path)[0]


def _rows_and_lines(path: Path) -> tuple[list[Any], list[int] | None]:
    """The rows of a meta file, and for JSONL the line number of each."""
    if not path.is_file():
        raise DataError(f"{path}: meta file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path), None
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: unsupported meta file type {suffix!r}; expected .json, .jsonl or .parquet")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the meta file as UTF-8 text ({exc})") from exc
    if suffix == ".jsonl":
        return _jsonl_rows(path, text)
    data = parse_json(path, text)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data, None


def _jsonl_rows(path: Path, text: str) -> tuple[list[Any], list[int]]:
    rows: list[Any] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            rows.append(_BadLine(f"line {number} column {exc.colno}: {exc.msg}"))
        lines.append(number)
    if rows and all(isinstance(r, _BadLine) for r in rows):
        raise DataError(f"{path}: no line is valid JSON ({rows[0].message})")
    return rows, lines


def _parquet_rows(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the train extra
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install 'ovis[train]')") from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from exc


# -- record layouts -------------------------------------------------------------------------------
def _caption(row: dict, entry: DatasetEntry) -> tuple[list[Message], list[str]]:
    image = row.get("image_path", row.get("image"))
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if image is None:
        raise RecordError("missing image path", f"no 'image_path' (or 'image'); the record has {_keys(row)}")
    if not isinstance(image, str) or not image.strip():
        raise RecordError("bad image path", f"'image_path' is {image!r}; expected a path")
    caption = row.get("caption")
    if caption is None:
        raise RecordError("missing caption", f"no 'caption'; the record has {_keys(row)}")
    if not isinstance(caption, str):
        raise RecordError("bad caption", f"'caption' is {type(caption).__name__} {caption!r}; expected text")
    if not caption.strip():
        raise RecordError("missing caption", f"'caption' is {caption!r}")
    messages = [
        Message(role="user", content=entry.caption_template),
        Message(role="assistant", content=caption),
    ]
    return messages, [image]


def _keys(row: dict) -> str:
    return ", ".join(map(repr, row)) or "no fields"


def _conversation(row: dict, entry: DatasetEntry) -> tuple[list[Message], list[str]]:
    images = row.get("image")
    if images is None or images == "":
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise RecordError("bad image field", f"expected a path or a list of paths, got {images!r}")
    turns = row.get("conversations")
    if turns is None:
        raise RecordError("missing conversations", f"no 'conversations'; the record has {_keys(row)}")
    if not isinstance(turns, list):
        shown = turns if len(repr(turns)) < 60 else f"{repr(turns)[:57]}..."
        raise RecordError("bad conversations", f"'conversations' is {type(turns).__name__} {shown!r}; expected a list")
    if not turns:
        raise RecordError("empty conversations", "'conversations' is []")
    messages: list[Message] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError("bad turn", f"turn {k} is {type(turn).__name__}, not an object")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in ROLES:
            raise RecordError("unknown role", f"turn {k} has 'from': {speaker!r}; expected human, gpt or system")
        if not isinstance(value, str):
            raise RecordError("non-string value", f"turn {k} 'value' is {type(value).__name__}")
        role = ROLES[speaker]
        if role == "system" and k != 0:
            raise RecordError("bad role order", f"turn {k}: a system turn may only come first")
        messages.append(Message(role=role, content=value))
    if not any(m.role == "assistant" for m in messages):
        raise RecordError("no assistant turn", "nothing to learn")
    if not any(m.content.strip() for m in messages if m.role == "assistant"):
        raise RecordError("empty replies", "every assistant turn is empty: it would teach the model to say nothing")
    markers = sum(m.content.count(IMAGE_MARKER) for m in messages)
    if markers == 0 and images:
        # LLaVA data without markers: the images go before the first user message (v1 convention).
        first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
        if first_user is None:
            raise RecordError("image count mismatch", f"{len(images)} image(s) but no user turn")
        prefix = (IMAGE_MARKER + "\n") * len(images)
        messages[first_user] = Message(role="user", content=prefix + messages[first_user].content)
    elif markers != len(images):
        raise RecordError("image count mismatch", f"{markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s)")
    return messages, images

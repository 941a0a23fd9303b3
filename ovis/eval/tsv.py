"""Benchmark files in VLMEvalKit's TSV layout.

One row per question: ``index``; ``image`` (base64, a JSON list of base64 strings for several
images, or - as in MMBench - the ``index`` of an earlier row whose image it shares) or
``image_path``; ``question``; options in columns ``A``..``J``; ``answer``; optional ``category``,
``l2-category``, ``hint`` and benchmark-specific columns (kept in ``Item.extra``).

The task kind decides prompting and scoring: ``mcq`` (option columns present), ``yesno`` (every
answer is yes/no) or ``vqa`` (short free answers). It is inferred from the columns unless given.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import math
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

Kind = Literal["mcq", "yesno", "vqa"]
KINDS: tuple[Kind, ...] = ("mcq", "yesno", "vqa")
OPTION_LETTERS = tuple(string.ascii_uppercase[:10])  # A..J
CIRCULAR_STRIDE = 1_000_000  # VLMEvalKit numbers MMBench's rotated copies index + k * 1e6

# Benchmarks whose kind is known by name (file stem, case-insensitive prefix).
KNOWN_KINDS: dict[str, Kind] = {
    "mmbench": "mcq", "mmstar": "mcq", "mmmu": "mcq", "realworldqa": "mcq", "ai2d": "mcq", "seedbench": "mcq",
    "scienceqa": "mcq", "ccbench": "mcq", "mme": "yesno", "hallusionbench": "yesno", "pope": "yesno",
    "textvqa": "vqa", "docvqa": "vqa", "chartqa": "vqa", "ocrvqa": "vqa", "mathvista": "vqa", "gqa": "vqa",
}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used as given."""


@dataclass
class Item:
    index: int
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    hint: str | None = None
    images: list[bytes] = field(default_factory=list)  # encoded image files
    image_key: str = ""  # identifies the picture (pairs in MME share it)
    extra: dict[str, str] = field(default_factory=dict)
    row: int = 0  # 1-based data row in the file, for messages

    @property
    def group(self) -> int:
        """The question this row is a variant of (MMBench's circular copies share it)."""
        return self.index % CIRCULAR_STRIDE


@dataclass
class Benchmark:
    name: str
    kind: Kind
    path: Path
    items: list[Item]
    bad_rows: list[dict] = field(default_factory=list)  # {"row", "index", "reason"} for rows left out

    def __len__(self) -> int:
        return len(self.items)


def _cell(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return None if value == "" or value.lower() == "nan" else value


def _decode_images(raw: str) -> list[bytes]:
    values = json.loads(raw) if raw.startswith("[") else [raw]
    return [base64.b64decode(v, validate=True) for v in values]


def infer_kind(name: str, columns: Sequence[str], answers: Sequence[str]) -> Kind:
    lowered = name.lower()
    for prefix, kind in KNOWN_KINDS.items():
        if lowered.startswith(prefix):
            return kind
    if "A" in columns and "B" in columns:
        return "mcq"
    if answers and all(a.strip().lower() in ("yes", "no") for a in answers):
        return "yesno"
    return "vqa"


def read_benchmark(path: str | Path, *, kind: Kind | None = None, name: str | None = None) -> Benchmark:
    """Read and validate a TSV. Rows whose image cannot be decoded are left out and listed in
    ``bad_rows`` (counted in the report); structural problems raise :class:`BenchmarkError`."""
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    if kind is not None and kind not in KINDS:
        raise BenchmarkError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    csv.field_size_limit(sys.maxsize)  # base64 images are long cells
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in ("index", "question", "answer") if c not in columns]
    if "image" not in columns and "image_path" not in columns:
        missing.append("image or image_path")
    if missing:
        raise BenchmarkError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(columns) or 'no header'} "
            "(VLMEvalKit layout: index, image|image_path, question, A..J, answer, category, hint)"
        )
    if not rows:
        raise BenchmarkError(f"{path}: no data rows")
    kind = kind or infer_kind(name, columns, [r.get("answer") or "" for r in rows])
    option_columns = [c for c in OPTION_LETTERS if c in columns]
    if kind == "mcq" and len(option_columns) < 2:
        raise BenchmarkError(f"{path}: a multiple-choice benchmark needs option columns A, B, ...; found "
                             f"{', '.join(option_columns) or 'none'}")
    known = {"index", "image", "image_path", "question", "answer", "category", "hint", *OPTION_LETTERS}
    bench = Benchmark(name=name, kind=kind, path=path, items=[])
    images_by_index: dict[int, tuple[list[bytes], str]] = {}
    seen: set[int] = set()
    for number, row in enumerate(rows, start=1):
        try:
            index = int(float(row["index"]))
        except (TypeError, ValueError):
            raise BenchmarkError(f"{path}: row {number}: index {row['index']!r} is not an integer") from None
        if index in seen:
            raise BenchmarkError(f"{path}: row {number}: index {index} appears twice")
        seen.add(index)
        answer = _cell(row.get("answer"))
        question = _cell(row.get("question"))
        if question is None or answer is None:
            what = "question" if question is None else "answer"
            raise BenchmarkError(f"{path}: row {number} (index {index}): empty {what}")
        options = {c: v for c in option_columns if (v := _cell(row.get(c))) is not None}
        if kind == "mcq":
            answer = answer.strip()
            if answer not in options:
                raise BenchmarkError(
                    f"{path}: row {number} (index {index}): answer {answer!r} is not one of its options "
                    f"({', '.join(options) or 'none'})"
                )
        try:
            images, key = _row_images(row, path, images_by_index)
        except (ValueError, binascii.Error, OSError) as exc:
            bench.bad_rows.append({"row": number, "index": index, "reason": f"image: {exc}"})
            continue
        images_by_index[index] = (images, key)
        bench.items.append(Item(
            index=index, question=question, answer=answer, options=options, category=_cell(row.get("category")),
            hint=_cell(row.get("hint")), images=images, image_key=key, row=number,
            extra={k: v for k, v in row.items() if k not in known and k is not None and v is not None},
        ))
    return bench


def _row_images(row: dict, path: Path, earlier: dict[int, tuple[list[bytes], str]]) -> tuple[list[bytes], str]:
    raw = _cell(row.get("image"))
    if raw is not None:
        # MMBench stores a repeated image once; later rows hold the index of the row that has it.
        if len(raw) <= 64 and re.fullmatch(r"-?\d+", raw):
            ref = int(raw)
            if ref not in earlier:
                raise ValueError(f"refers to the image of index {ref}, which is not an earlier row")
            return earlier[ref]
        images = _decode_images(raw)
    else:
        ref = _cell(row.get("image_path"))
        if ref is None:
            raise ValueError("neither image nor image_path is set")
        paths = json.loads(ref) if ref.startswith("[") else [ref]
        images = []
        for p in paths:
            file = (path.parent / p) if not Path(p).is_absolute() else Path(p)
            if not file.is_file():
                raise ValueError(f"image file {file} not found")
            images.append(file.read_bytes())
    for k, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except Exception as exc:  # PIL raises many types for broken files
            raise ValueError(f"image {k + 1} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    key = hashlib.sha1(b"".join(images)).hexdigest()[:16]
    return images, key


def circular_variants(item: Item) -> list[Item]:
    """MMBench's circular evaluation: the item with its options rotated once per option (the
    answer letter follows its text). A question counts as right only if every variant is right."""
    letters = list(item.options)
    texts = [item.options[letter] for letter in letters]
    variants = []
    for shift in range(len(letters)):
        rotated = texts[shift:] + texts[:shift]
        options = dict(zip(letters, rotated, strict=True))
        answer = letters[rotated.index(item.options[item.answer])]
        variants.append(Item(
            index=item.index + shift * CIRCULAR_STRIDE, question=item.question, answer=answer, options=options,
            category=item.category, hint=item.hint, images=item.images, image_key=item.image_key,
            extra=item.extra, row=item.row,
        ))
    return variants


def with_circular(bench: Benchmark) -> Benchmark:
    """The benchmark with rotated copies added (a file that already has them is left as is)."""
    if any(item.index >= CIRCULAR_STRIDE for item in bench.items):
        return bench
    items = [variant for item in bench.items for variant in circular_variants(item)]
    return Benchmark(name=bench.name, kind=bench.kind, path=bench.path, items=items, bad_rows=bench.bad_rows)


def write_benchmark(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write rows (dicts; ``image`` given as encoded bytes is base64-encoded) as a VLMEvalKit TSV."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            out = {}
            for key, value in row.items():
                if isinstance(value, bytes):
                    value = base64.b64encode(value).decode()
                elif isinstance(value, float) and math.isnan(value):
                    value = ""
                out[key] = value
            writer.writerow(out)
    return path

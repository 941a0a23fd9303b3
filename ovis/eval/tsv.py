"""Benchmark files in VLMEvalKit's TSV layout.

One row per question: ``index`` (an integer, or a string such as HallusionBench's
``VS_chart_0_0_0_0``); ``image`` (base64, a JSON list of base64 strings for several images, or - as in
MMBench - the ``index`` of another row whose image it shares) or ``image_path``; ``question``;
options in columns ``A``..``J``; ``answer``; optional ``category``,
``l2-category``, ``hint`` and benchmark-specific columns (kept in ``Item.extra``).

The task kind decides prompting and scoring: ``mcq`` (option columns present), ``yesno`` (every
answer is yes/no) or ``vqa`` (short free answers). Unless given, it comes from the columns first
(options present means multiple choice), then from the exact benchmark name, then from the answers.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import math
import re
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ovis.errors import OvisError
from ovis.interfaces.image import ImageError, load_image

Kind = Literal["mcq", "yesno", "vqa"]
KINDS: tuple[Kind, ...] = ("mcq", "yesno", "vqa")
OPTION_LETTERS = tuple(string.ascii_uppercase[:10])  # A..J
CIRCULAR_STRIDE = 1_000_000  # VLMEvalKit numbers MMBench's rotated copies index + k * 1e6

# Benchmarks without option columns whose kind is known by exact name (VLMEvalKit's file stems,
# case-insensitive). Exact, not by prefix: MME-RealWorld is multiple choice, MME is yes/no.
KNOWN_KINDS: dict[str, Kind] = {
    "mme": "yesno", "hallusionbench": "yesno", "pope": "yesno", "amber": "yesno",
    "textvqa_val": "vqa", "docvqa_val": "vqa", "docvqa_test": "vqa", "chartqa_test": "vqa", "ocrvqa_test": "vqa",
    "ocrvqa_testcore": "vqa", "mathvista_mini": "vqa", "gqa_testdev_balanced": "vqa", "infovqa_val": "vqa",
}


class BenchmarkError(OvisError, ValueError):
    """A benchmark file that cannot be used as given."""


@dataclass
class Item:
    index: str  # as in the file ("12", "VS_chart_0_0_0_0"); integers are written without ".0"
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    hint: str | None = None
    images: list[bytes] = field(default_factory=list)  # encoded image files
    image_key: str = ""  # identifies the picture (pairs in MME share it)
    extra: dict[str, str] = field(default_factory=dict)
    row: int = 0  # 1-based data row in the file, for messages
    group: str = ""  # the question this row is a variant of (MMBench's circular copies share it)
    rotation: int = 0  # which circular variant (0: the options as written)
    video: Path | None = None  # a video benchmark's file for this question (see :mod:`ovis.eval.video_bench`)

    def __post_init__(self) -> None:
        if not self.group:
            # VLMEvalKit numbers MMBench's rotated copies index + k * 1e6 in files that hold them.
            number = _integer(self.index)
            if number is not None and number >= CIRCULAR_STRIDE:
                self.group, self.rotation = str(number % CIRCULAR_STRIDE), number // CIRCULAR_STRIDE
            else:
                self.group = self.index


@dataclass
class Benchmark:
    name: str
    kind: Kind
    path: Path
    items: list[Item]
    bad_rows: list[dict] = field(default_factory=list)  # {"row", "index", "reason"} for rows left out
    modality: Literal["image", "video"] = "image"
    video_root: Path | None = None  # a video benchmark's folder of videos
    videos: tuple[Path, ...] = ()  # and every usable video it names (--limit aside: the fingerprint's)

    def __len__(self) -> int:
        return len(self.items)


def cell(value: str | None) -> str | None:
    """A TSV cell's text, stripped; None when empty or pandas's ``nan``."""
    if value is None:
        return None
    value = value.strip()
    return None if value == "" or value.lower() == "nan" else value


def _integer(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def normalise_index(raw: str | None) -> str:
    """An index cell as text: ``3`` and ``3.0`` are the same row; any other text is kept as is."""
    text = (raw or "").strip()
    if re.fullmatch(r"-?\d+\.0*", text):
        return text.split(".")[0]
    return text


def _decode_images(raw: str) -> list[bytes]:
    values = json.loads(raw) if raw.startswith("[") else [raw]
    try:
        return [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError) as exc:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise ValueError(
            f"{shown!r} is neither base64 image data nor the index of another row's image ({exc})"
        ) from exc


def infer_kind(name: str, columns: Sequence[str], answers: Sequence[str]) -> Kind:
    """Options present means multiple choice whatever the name; else the exact name; else the answers."""
    if "A" in columns and "B" in columns:
        return "mcq"
    if name.lower() in KNOWN_KINDS:
        return KNOWN_KINDS[name.lower()]
    if answers and all(a.strip().lower() in ("yes", "no") for a in answers):
        return "yesno"
    return "vqa"


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a UTF-8 TSV (a clear :class:`BenchmarkError` for anything else)."""
    csv.field_size_limit(sys.maxsize)  # base64 images are long cells
    try:
        # (utf-8-sig: a byte-order mark some editors write is not part of the first column's name)
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t")
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); VLMEvalKit TSVs are "
                             "UTF-8 (re-save the file as UTF-8)") from exc
    except csv.Error as exc:
        raise BenchmarkError(f"{path}: not a readable TSV ({exc})") from exc


def read_benchmark(path: str | Path, *, kind: Kind | None = None, name: str | None = None) -> Benchmark:
    """Read and validate a TSV. Rows whose image cannot be decoded are left out and listed in
    ``bad_rows`` (counted in the report); structural problems raise :class:`BenchmarkError`."""
    path = Path(path)
    name = name or path.stem
    if path.is_dir():
        raise BenchmarkError(f"{path}: a directory, not a benchmark file")
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file not found")
    if kind is not None and kind not in KINDS:
        raise BenchmarkError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    columns, rows = read_rows(path)
    missing = [c for c in ("index", "question", "answer") if c not in columns]
    if "image" not in columns and "image_path" not in columns:
        missing.append("image or image_path")
    if missing:
        csv_like = len(columns) == 1 and "," in columns[0]
        separated = " (the header has commas but no tabs: is it a CSV?)" if csv_like else ""
        raise BenchmarkError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(columns) or 'no header'}"
            f"{separated} (VLMEvalKit layout, tab-separated: index, image|image_path, question, A..J, answer, "
            "category, hint)"
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
    # Every row's image cell by index, so that MMBench-style references can point anywhere.
    image_cells: dict[str, str | None] = {}
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        fields = len([v for k, v in row.items() if k is not None and v is not None]) + len(row.get(None) or [])
        if fields != len(columns):  # (csv gives a short row's missing cells as None, a long row's extras under None)
            raise BenchmarkError(
                f"{path}: row {number} has {fields} tab-separated fields, the header {len(columns)}"
                f"{' (a row cut short?)' if fields < len(columns) else ' (a tab inside a cell?)'}"
            )
        index = normalise_index(row["index"])
        if not index:
            raise BenchmarkError(f"{path}: row {number}: empty index")
        image_cells.setdefault(index, cell(row.get("image")))
    for number, row in enumerate(rows, start=1):
        index = normalise_index(row["index"])
        if index in seen:
            raise BenchmarkError(f"{path}: row {number}: index {index} appears twice")
        seen.add(index)
        answer = cell(row.get("answer"))
        question = cell(row.get("question"))
        if question is None or answer is None:
            what = "question" if question is None else "answer"
            raise BenchmarkError(f"{path}: row {number} (index {index}): empty {what}")
        options = {c: v for c in option_columns if (v := cell(row.get(c))) is not None}
        if kind == "mcq":
            answer = answer.strip()
            if answer not in options:
                raise BenchmarkError(
                    f"{path}: row {number} (index {index}): answer {answer!r} is not one of its options "
                    f"({', '.join(options) or 'none'})"
                )
        try:
            images, key = _row_images(row, path, image_cells)
        except (ValueError, binascii.Error, OSError) as exc:
            bench.bad_rows.append({"row": number, "index": index, "reason": f"image: {exc}"})
            continue
        bench.items.append(Item(
            index=index, question=question, answer=answer, options=options, category=cell(row.get("category")),
            hint=cell(row.get("hint")), images=images, image_key=key, row=number,
            extra={k: v for k, v in row.items() if k not in known and k is not None and v is not None},
        ))
    if not bench.items:
        first = bench.bad_rows[0]
        raise BenchmarkError(
            f"{path}: none of its {len(rows)} rows has a usable image (row {first['row']}, index "
            f"{first['index']}: {first['reason']}); nothing to score"
        )
    return bench


def _row_images(row: dict, path: Path, image_cells: dict[str, str | None]) -> tuple[list[bytes], str]:
    raw = cell(row.get("image"))
    if raw is not None:
        # MMBench stores a repeated image once; other rows hold the index (an integer or a string)
        # of the row that has it. VLMEvalKit reads short cells (64 characters or fewer) this way.
        ref = normalise_index(raw)
        if len(raw) <= 64 and ref in image_cells:
            target = image_cells[ref]
            if target is None or len(target) <= 64:
                raise ValueError(f"refers to the image of index {ref!r}, a row without an image of its own")
            raw = target
        images = _decode_images(raw)
    else:
        ref = cell(row.get("image_path"))
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
        # Decoded in full by the loader generation uses, so a row that would fail there (truncated
        # pixels, a bomb, a format not accepted) is a bad row here, before the model loads.
        try:
            load_image(data, what=f"image {k + 1}")
        except ImageError as exc:
            raise ValueError(str(exc)) from exc
    # The picture's identity for MME's pairs: its image_path when the file names one (as VLMEvalKit
    # groups), else its bytes.
    key = cell(row.get("image_path")) or hashlib.sha1(b"".join(images)).hexdigest()[:16]
    return images, key


def circular_variants(item: Item) -> list[Item]:
    """MMBench's circular evaluation: the item with its options rotated once per option (the
    answer letter follows its text). A question counts as right only if every variant is right."""
    letters = list(item.options)
    texts = [item.options[letter] for letter in letters]
    variants = []
    number = _integer(item.index)
    for shift in range(len(letters)):
        rotated = texts[shift:] + texts[:shift]
        options = dict(zip(letters, rotated, strict=True))
        answer = letters[rotated.index(item.options[item.answer])]
        variants.append(Item(
            # VLMEvalKit's numbering for integer indices; string indices get a suffix.
            index=(str(number + shift * CIRCULAR_STRIDE) if number is not None and shift else
                   f"{item.index}#{shift}" if shift else item.index),
            question=item.question, answer=answer, options=options, category=item.category, hint=item.hint,
            images=item.images, image_key=item.image_key, extra=item.extra, row=item.row, group=item.group,
            rotation=shift, video=item.video,
        ))
    return variants


def with_circular(bench: Benchmark) -> Benchmark:
    """The benchmark with rotated copies added (a file that already has them is left as is)."""
    if any(item.rotation for item in bench.items):
        return bench
    items = [variant for item in bench.items for variant in circular_variants(item)]
    return Benchmark(name=bench.name, kind=bench.kind, path=bench.path, items=items, bad_rows=bench.bad_rows,
                     modality=bench.modality, video_root=bench.video_root, videos=bench.videos)


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

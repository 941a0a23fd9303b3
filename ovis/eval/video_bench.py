"""Video benchmarks for ``ovis eval``: Video-MME's TSV and a generic video multiple-choice TSV.

A video benchmark is a TSV with a ``video`` column and no ``image`` / ``image_path`` column. One row
per question: ``index``, ``question``, ``answer`` (an option letter) and the options, either as
``candidates`` (Video-MME, as VLMEvalKit writes it: a list such as ``['A. Apples.', 'B. Pears.']``;
without letter prefixes the letters are given in order) or as columns ``A``..``J``. The video is
``video_path`` (relative to the video root) or ``video``: a file path relative to the video root, or
Video-MME's id, looked for as ``video/{id}.mp4`` and then ``{id}.mp4`` there. The video root is
``--video-root``, else the TSV's folder. Optional columns ``duration``, ``domain``,
``sub_category`` and ``task_type`` are broken down in the report as Video-MME's own scoring breaks
them down (each duration and overall, by domain, sub-category and task type); ``category`` is
reported per value as for images.

Rows whose video is missing or cannot be decoded (checked cheaply here: header and first frame) are
left out and listed as bad rows; rows without a question, an answer or two options are errors that
name the row. Frames are sampled when the question is asked, by :mod:`ovis.interfaces.video` (the
runner's own sampling), ``nframe`` per video, one tile each on a tiled model.
"""

from __future__ import annotations

import ast
import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ovis.eval.tsv import OPTION_LETTERS, Benchmark, BenchmarkError, Item, Kind, cell, normalise_index, read_rows
from ovis.interfaces.video import VideoError, load_video, probe_video, sample_indices

#: frames per video unless ``--nframe`` says otherwise: VLMEvalKit's ``Video-MME_8frame`` setting (its
#: Ovis2 wrapper sets none of its own), and the runner's default
DEFAULT_NFRAME = 8
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg"})
DURATION = "duration"
DIMENSIONS = ("domain", "sub_category", "task_type")
#: Video-MME's durations, in its order (others follow, sorted)
DURATIONS = ("short", "medium", "long")
_KNOWN = {"index", "video", "video_path", "question", "answer", "candidates", "category", "hint", *OPTION_LETTERS}
_LETTERED = re.compile(r"\s*\(?([A-J])[.):]\s*(.*)", re.DOTALL)


def is_video_benchmark(path: str | Path) -> bool:
    """Whether a TSV's header makes it a video benchmark (a ``video`` column, no image column)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter="\t"), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # the image reader names the problem
    return "video" in header and "image" not in header and "image_path" not in header


def read_video_benchmark(
    path: str | Path, *, kind: Kind | None = None, name: str | None = None, video_root: str | Path | None = None
) -> Benchmark:
    """Read and check a video benchmark TSV; rows with a missing or undecodable video are bad rows."""
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise BenchmarkError(f"{path}: {'a directory, not a benchmark file' if path.is_dir() else 'not found'}")
    if kind not in (None, "mcq"):
        raise BenchmarkError(f"{path}: a video benchmark is multiple choice; --kind {kind} does not apply to it")
    root = Path(video_root).expanduser() if video_root is not None else path.parent
    if not root.is_dir():
        raise BenchmarkError(f"video root {root}: not a directory (give --video-root, the folder holding the videos)")
    columns, rows = read_rows(path)
    option_columns = [c for c in OPTION_LETTERS if c in columns]
    missing = [c for c in ("index", "question", "answer") if c not in columns]
    if "candidates" not in columns and len(option_columns) < 2:
        missing.append("candidates or option columns A, B, ...")
    if missing:
        raise BenchmarkError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(columns)} (video layout, "
            "tab-separated: index, video|video_path, question, candidates or A..J, answer, and optionally "
            "duration, domain, sub_category, task_type, category)"
        )
    if not rows:
        raise BenchmarkError(f"{path}: no data rows")
    bench = Benchmark(name=name, kind="mcq", path=path, items=[], modality="video", video_root=root)
    seen: set[str] = set()
    probed: dict[Path, str | None] = {}  # each video checked once, however many questions it has
    for number, row in enumerate(rows, start=1):
        index = normalise_index(row.get("index"))
        if not index:
            raise BenchmarkError(f"{path}: row {number}: empty index")
        if index in seen:
            raise BenchmarkError(f"{path}: row {number}: index {index} appears twice")
        seen.add(index)
        where = f"{path}: row {number} (index {index})"
        question, answer = cell(row.get("question")), cell(row.get("answer"))
        if question is None or answer is None:
            raise BenchmarkError(f"{where}: empty {'question' if question is None else 'answer'}")
        options = _options(row, option_columns, where)
        if answer not in options:
            raise BenchmarkError(f"{where}: answer {answer!r} is not one of its options ({', '.join(options)})")
        try:
            video = _usable_video(row, root, probed)
        except ValueError as exc:
            bench.bad_rows.append({"row": number, "index": index, "reason": f"video: {exc}"})
            continue
        bench.items.append(
            Item(
                index=index,
                question=question,
                answer=answer,
                options=options,
                category=cell(row.get("category")),
                hint=cell(row.get("hint")),
                image_key=str(video),
                row=number,
                video=video,
                extra={k: v for k, v in row.items() if k not in _KNOWN and k is not None and v is not None},
            )
        )
    if not bench.items and bench.bad_rows:
        first = bench.bad_rows[0]
        raise BenchmarkError(
            f"{path}: none of its {len(bench.bad_rows)} rows has a usable video (row {first['row']}, index "
            f"{first['index']}: {first['reason']}); nothing to score"
        )
    bench.videos = tuple(sorted({item.video for item in bench.items if item.video is not None}))
    return bench


def _options(row: dict, option_columns: Sequence[str], where: str) -> dict[str, str]:
    raw = cell(row.get("candidates"))
    if raw is None:
        options = {c: v for c in option_columns if (v := cell(row.get(c))) is not None}
    else:
        try:
            values = ast.literal_eval(raw)  # VLMEvalKit writes the list as Python prints it; JSON reads too
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values = None
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            raise BenchmarkError(
                f"{where}: candidates {shown!r} is not a list of option texts (expected e.g. ['A. red', 'B. blue'])"
            )
        if len(values) > len(OPTION_LETTERS):
            raise BenchmarkError(f"{where}: {len(values)} candidates; at most {len(OPTION_LETTERS)} (A..J)")
        options = lettered(values)
    if len(options) < 2:
        raise BenchmarkError(
            f"{where}: a multiple-choice question needs at least two options; found "
            f"{', '.join(options) or 'none'} (candidates, or columns A, B, ...)"
        )
    return options


def lettered(candidates: Sequence[str]) -> dict[str, str]:
    """Video-MME's candidates (``A. text``) as ``{letter: text}``; candidates without their letters, in
    order, get A, B, ..."""
    matches = [_LETTERED.fullmatch(c) for c in candidates]
    letters = list(OPTION_LETTERS[: len(candidates)])
    if all(matches) and [m[1] for m in matches if m] == letters:
        return {m[1]: m[2].strip() for m in matches if m}
    return {letter: text.strip() for letter, text in zip(letters, candidates, strict=True)}


def _usable_video(row: dict, root: Path, probed: dict[Path, str | None]) -> Path:
    """The row's video file, checked once per file (``probed``: file -> why it is unusable, or None);
    ValueError saying why it cannot be used."""
    video = _video_file(row, root)
    if video not in probed:
        try:
            probe_video(video)
            probed[video] = None
        except VideoError as exc:
            probed[video] = str(exc)
    if probed[video] is not None:
        raise ValueError(probed[video])
    return video


def _video_file(row: dict, root: Path) -> Path:
    """The row's video file; ValueError naming where it was looked for."""
    tried: list[Path] = []
    given = cell(row.get("video_path"))
    if given is not None:
        tried.append(root / given)
    video = cell(row.get("video"))
    if video is not None:
        if Path(video).suffix.lower() in VIDEO_SUFFIXES:
            tried.append(root / video)
        else:  # Video-MME's id
            tried += [root / "video" / f"{video}.mp4", root / f"{video}.mp4", root / video]
    if not tried:
        raise ValueError("neither video nor video_path is set")
    for file in tried:
        if file.is_file():
            return file
    others = f" (nor {', '.join(str(t) for t in tried[1:])})" if len(tried) > 1 else ""
    raise ValueError(f"video file {tried[0]} not found{others}")


# -- what the fingerprint records -----------------------------------------------------------------------
def video_identity(bench: Benchmark) -> dict[str, str]:
    """Each usable video of the file (by its path under the video root; all of them, so a ``--limit``
    run resumes into the full one) -> size and modification time: any re-encoding or replacement
    changes them, and no gigabytes are read on every run."""
    root = bench.video_root or bench.path.parent
    identity = {}
    for file in bench.videos:
        stat = file.stat()
        try:
            key = file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            key = str(file.resolve())
        identity[key] = f"size:{stat.st_size} mtime_ns:{stat.st_mtime_ns}"
    return identity


def video_setting(bench: Benchmark, nframe: int) -> dict[str, Any]:
    """What shapes a video benchmark's predictions besides the model and the TSV: frames per video, how
    they are sampled (the indices the sampler picks from 1,000 frames, so any change to it shows), and
    each video file's identity."""
    return {
        "nframe": nframe,
        "sampling": {"rule": "ovis.interfaces.video.sample_indices", "from_1000_frames": sample_indices(1000, nframe)},
        "files": video_identity(bench),
    }


class FrameReader:
    """The frames of the last video read, kept: Video-MME asks three questions per video, in a row,
    and a long video takes a while to decode. A video that failed fails again without decoding."""

    def __init__(self, nframe: int) -> None:
        self.nframe = nframe
        self._path: Path | None = None
        self._result: list[Image.Image] | VideoError | None = None

    def frames(self, path: Path, *, what: str) -> list[Image.Image]:
        if path != self._path:
            self._path = path
            try:
                self._result = load_video(path, self.nframe, what=what)
            except VideoError as exc:
                self._result = exc
        if isinstance(self._result, VideoError):
            raise self._result
        assert self._result is not None
        return self._result


# -- Video-MME's breakdown ------------------------------------------------------------------------------
def _accuracy(hits: Sequence[bool]) -> dict[str, Any]:
    return {"questions": len(hits), "accuracy": sum(hits) / len(hits) if hits else 0.0}


def _value(item: Item, column: str) -> str | None:
    return cell(item.extra.get(column))


def breakdown(bench: Benchmark, readings: Sequence[dict]) -> dict[str, Any]:
    """Accuracy overall and per duration, each split by domain, sub-category and task type (those
    columns the file has), as Video-MME's scoring reports it. Circular copies: the first rotation."""
    by_index = {item.index: item for item in bench.items}
    answered = [
        (by_index[r["index"]], bool(r["hit"]))
        for r in readings
        if r["index"] in by_index and by_index[r["index"]].rotation == 0
    ]
    dimensions = [d for d in DIMENSIONS if any(_value(item, d) is not None for item, _ in answered)]

    def part(pairs: list[tuple[Item, bool]]) -> dict[str, Any]:
        entry = _accuracy([hit for _, hit in pairs])
        for dimension in dimensions:
            values = sorted({v for item, _ in pairs if (v := _value(item, dimension)) is not None})
            entry[dimension] = {
                v: _accuracy([hit for item, hit in pairs if _value(item, dimension) == v]) for v in values
            }
        return entry

    durations = {v for item, _ in answered if (v := _value(item, DURATION)) is not None}
    ordered = [d for d in DURATIONS if d in durations] + sorted(durations - set(DURATIONS))
    result = {"overall": part(answered)}
    for duration in ordered:
        result[duration] = part([(item, hit) for item, hit in answered if _value(item, DURATION) == duration])
    return result


def breakdown_categories(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The breakdown flattened into report categories (``duration: short``, ``task_type: OCR Problems``,
    ...): every duration, and each dimension over all durations."""
    flat = {
        f"{DURATION}: {name}": {"questions": part["questions"], "accuracy": part["accuracy"]}
        for name, part in result.items()
        if name != "overall"
    }
    for dimension in DIMENSIONS:
        for value, entry in result["overall"].get(dimension, {}).items():
            flat[f"{dimension}: {value}"] = dict(entry)
    return flat

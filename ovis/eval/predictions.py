"""``predictions.jsonl``: a benchmark's answers, appended as they come, headed by their fingerprint.

The first line is ``{"fingerprint": {...}}`` (see :mod:`ovis.eval.fingerprint`); each later line is
``{"index": ..., "prediction": ...}`` or ``{"index": ..., "error": ...}``. A rerun under the same
fingerprint resumes; under another it is refused (naming what changed) unless told to discard.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ovis.errors import OvisError
from ovis.eval.fingerprint import differences


class StalePredictionsError(OvisError, ValueError):
    """Saved predictions were made by another model or setup than the one asked for now."""


def read_predictions(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Predictions and per-item errors written so far; a line cut short by a crash is ignored."""
    predictions: dict[str, str] = {}
    errors: dict[str, str] = {}
    if not path.exists():
        return predictions, errors
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "index" not in record:
            continue  # the fingerprint header
        if "error" in record:
            errors[str(record["index"])] = record["error"]
        else:
            predictions[str(record["index"])] = record["prediction"]
    return predictions, errors


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    """The fingerprint heading ``path``, or None (no file, or one written before fingerprints)."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as f:
        first = f.readline()
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return None
    return record.get("fingerprint") if isinstance(record, dict) else None


def stale_reasons(path: Path, fingerprint: Mapping[str, Any]) -> list[str]:
    """Why the predictions in ``path`` cannot be reused under ``fingerprint`` (empty: they can)."""
    if not path.exists() or path.stat().st_size == 0:
        return []
    saved = read_fingerprint(path)
    if saved is None:
        return ["they carry no fingerprint (written by an older ovis, or by hand)"]
    return differences(saved, fingerprint)


def stale_message(path: Path, reasons: list[str]) -> str:
    return (f"{path} holds predictions made differently from this run: {'; '.join(reasons)}. "
            "Give another --out, or --discard-stale to delete them and start afresh.")


def open_predictions(path: Path, fingerprint: Mapping[str, Any], *, discard_stale: bool = False
                     ) -> tuple[dict[str, str], dict[str, str]]:
    """Make ``path`` ready for appending under ``fingerprint`` and return what it already holds.

    Raises :class:`StalePredictionsError` when it holds another setup's predictions (unless
    ``discard_stale``, which deletes them). A half-written last line (a crash mid-write) is cut
    off, so the next record starts on a line of its own.
    """
    reasons = stale_reasons(path, fingerprint)
    if reasons and not discard_stale:
        raise StalePredictionsError(stale_message(path, reasons))
    if reasons or not path.exists() or path.stat().st_size == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
        return {}, {}
    repair_tail(path)
    return read_predictions(path)


def repair_tail(path: Path) -> None:
    """End the file with a complete line: a last line without its newline is kept (newline added)
    if it is a whole record, else cut off."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        complete = True
    except (json.JSONDecodeError, UnicodeDecodeError):
        complete = False
    with path.open("r+b") as f:
        if complete:
            f.seek(0, 2)
            f.write(b"\n")
        else:
            f.truncate(cut)

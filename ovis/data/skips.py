"""``SkipLog``: the records and samples left out of training, counted by source and reason, each
logged once. The readers fill it while reading meta files, the dataset while encoding samples.

An encoding skip also travels as a :class:`Skipped` value in place of the sample, through the
collator's batch (``batch["skips"]``), so that the trainer's log learns of skips found in DataLoader
worker processes too (their own copy of the log never reports back).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

logger = logging.getLogger("ovis.data")

Stage = Literal["read", "encode"]


@dataclass(frozen=True)
class Skipped:
    """One skipped record: where it came from, why, and when it was found."""

    source: str  # "dataset[row]"
    kind: str  # the short reason it is counted under
    reason: str  # the full reason, with the image path or the offending field
    file: str | None = None  # the meta file (with the line, for JSONL)
    stage: Stage = "encode"  # found reading the meta file, or encoding the sample


class SkipLog:
    """Counts skipped records by source (``"dataset[row]"``) and short reason kind.

    Each source is counted and logged (warning on ``ovis.data``) once, however often it is
    retried (every epoch re-reads a skipped index). Safe to share between threads; picklable, but
    a copy sent to a DataLoader worker process does not report back (see the module docstring).
    """

    def __init__(self, *, max_listed: int = 5) -> None:
        self.max_listed = max_listed
        #: count without logging (e.g. on every rank but one, where each rank reads the same files)
        self.quiet = False
        self.total = 0  # records read from meta files, for "skipped N of TOTAL"
        self._skips: dict[str, Skipped] = {}
        self._lock = threading.Lock()

    def add(
        self,
        source: str,
        reason: str,
        *,
        kind: str | None = None,
        file: str | None = None,
        stage: Stage = "encode",
        log: bool = True,
    ) -> bool:
        """Record a skip; ``kind`` defaults to ``reason`` up to its first ``": "``. Returns whether
        ``source`` was new."""
        kind = kind or reason.split(": ", 1)[0]
        return self.record(Skipped(source, kind, reason, file, stage), log=log)

    def record(self, skip: Skipped, *, log: bool = True) -> bool:
        """Record ``skip`` unless its source is already counted; returns whether it was new."""
        with self._lock:
            if skip.source in self._skips:
                return False
            self._skips[skip.source] = skip
        if log and not self.quiet:
            where = f" ({skip.file})" if skip.file else ""
            logger.warning("skipping %s%s: %s", skip.source, where, skip.reason)
        return True

    def merge(self, skips: Iterable[Skipped], *, log: bool = False) -> int:
        """Record each of ``skips`` (already logged where they were found); returns how many were new."""
        return sum(self.record(skip, log=log) for skip in skips)

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total += n

    @property
    def count(self) -> int:
        return len(self._skips)

    def __len__(self) -> int:
        return self.count

    def entries(self, stage: Stage | None = None) -> list[Skipped]:
        """Every skip in the order found (only those of ``stage`` when given)."""
        with self._lock:
            return [s for s in self._skips.values() if stage is None or s.stage == stage]

    def by_reason(self) -> Counter[str]:
        with self._lock:
            return Counter(skip.kind for skip in self._skips.values())

    def sources(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [s for s, skip in self._skips.items() if kind is None or skip.kind == kind]

    def reasons(self) -> dict[str, str]:
        """Source -> full reason (with the image path or the offending field)."""
        with self._lock:
            return {source: skip.reason for source, skip in self._skips.items()}

    def summary(self) -> str:
        """``skipped 3 of 120 records:`` then one line per reason kind with its first sources and
        the full reason of the first (its file too)."""
        of = f" of {self.total}" if self.total else ""
        head = f"skipped {self.count}{of} records"
        if not self.count:
            return head
        lines = [head + ":"]
        for kind, n in self.by_reason().most_common():
            listed = [s for s in self.entries() if s.kind == kind]
            names = ", ".join(s.source for s in listed[: self.max_listed])
            more = ", ..." if len(listed) > self.max_listed else ""
            first = listed[0]
            where = f" in {first.file}" if first.file else ""
            lines.append(f"  {n} {kind} ({names}{more}); e.g. {first.source}{where}: {first.reason}")
        return "\n".join(lines)

    def report(self) -> dict[str, Any]:
        """The counts as plain data (what a run writes to ``skips.json``): totals, by reason and by
        stage, and the first ``max_listed`` skips of each reason in full."""
        entries = self.entries()
        examples: dict[str, list[dict[str, Any]]] = {}
        for skip in entries:
            listed = examples.setdefault(skip.kind, [])
            if len(listed) < self.max_listed:
                listed.append(asdict(skip))
        return {
            "records_total": self.total,
            "records_skipped": len(entries),
            "by_reason": dict(self.by_reason().most_common()),
            "by_stage": dict(Counter(s.stage for s in entries)),
            "examples": examples,
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SkipLog(count={self.count}, total={self.total})"

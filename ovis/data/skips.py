"""``SkipLog``: the records and samples left out of training, counted by source and reason, each
logged once. The readers fill it while reading meta files, the dataset while encoding samples."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

logger = logging.getLogger("ovis.data")


class SkipLog:
    """Counts skipped records by source (``"dataset[row]"``) and short reason kind.

    Each source is counted and logged (warning on ``ovis.data``) once, however often it is
    retried (every epoch re-reads a skipped index). Safe to share between threads; picklable, but
    a copy sent to a DataLoader worker process does not report back (see the module docstring).
    """

    def __init__(self, *, max_listed: int = 5) -> None:
        self.max_listed = max_listed
        self.total = 0  # records read from meta files, for "skipped N of TOTAL"
        self._skips: dict[str, tuple[str, str]] = {}  # source -> (kind, reason)
        self._lock = threading.Lock()

    def add(self, source: str, reason: str, *, kind: str | None = None, file: str | None = None) -> bool:
        """Record a skip; ``kind`` defaults to ``reason`` up to its first ``": "``. Returns whether
        ``source`` was new."""
        kind = kind or reason.split(": ", 1)[0]
        with self._lock:
            if source in self._skips:
                return False
            self._skips[source] = (kind, reason)
        where = f" ({file})" if file else ""
        logger.warning("skipping %s%s: %s", source, where, reason)
        return True

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total += n

    @property
    def count(self) -> int:
        return len(self._skips)

    def __len__(self) -> int:
        return self.count

    def by_reason(self) -> Counter[str]:
        with self._lock:
            return Counter(kind for kind, _ in self._skips.values())

    def sources(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [s for s, (k, _) in self._skips.items() if kind is None or k == kind]

    def reasons(self) -> dict[str, str]:
        """Source -> full reason (with the image path or the offending field)."""
        with self._lock:
            return {source: reason for source, (_, reason) in self._skips.items()}

    def summary(self) -> str:
        """``skipped 3 of 120 records:`` then one line per reason kind with its first sources."""
        of = f" of {self.total}" if self.total else ""
        head = f"skipped {self.count}{of} records"
        if not self.count:
            return head
        lines = [head + ":"]
        for kind, n in self.by_reason().most_common():
            listed = self.sources(kind)
            names = ", ".join(listed[: self.max_listed]) + (", ..." if len(listed) > self.max_listed else "")
            lines.append(f"  {n} {kind} ({names})")
        return "\n".join(lines)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SkipLog(count={self.count}, total={self.total})"

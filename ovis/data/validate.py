"""Checking the data a run names, cheaply and before anything heavy loads (model, DeepSpeed).

``read_datasets`` checks every name against ``dataset_info.json`` (a broken or unknown entry is an
error only when named), reads each meta file whole (JSON/JSONL validity, the fields the layout
requires), checks that every image file named exists (a ``stat``, no decoding), and returns the
usable records. A few bad records are skipped, warned about and counted in the ``SkipLog``; a
dataset none of whose records is usable is a ``DataError`` naming the file, the first bad record
(its line, for JSONL) and what is wrong with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ovis.data.readers import Record, read_records
from ovis.data.schema import DataError, DatasetInfo, load_dataset_info
from ovis.data.skips import SkipLog

logger = logging.getLogger("ovis.data")


def read_datasets(
    dataset_info: str | Path | DatasetInfo,
    names: str | Sequence[str],
    skip_log: SkipLog | None = None,
    *,
    check_images: bool = True,
) -> list[Record]:
    """The usable records of the named datasets, concatenated in the order given."""
    info = dataset_info if isinstance(dataset_info, DatasetInfo) else load_dataset_info(dataset_info)
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DataError(f"no dataset names given; available: {', '.join(sorted(info)) or 'none'}")
    info.check(names)  # every name before any (possibly large) file is read
    skip_log = skip_log if skip_log is not None else SkipLog()
    records: list[Record] = []
    for name in names:
        total_before = skip_log.total
        part = read_records(info, name, skip_log, check_images=check_images)
        read = skip_log.total - total_before
        skipped = read - len(part)
        if not part:
            raise DataError(_unusable(info, name, read, skip_log))
        logger.info(
            "dataset %s: %d records%s from %s",
            name,
            len(part),
            f" ({skipped} skipped)" if skipped else "",
            info.meta_path(name),
        )
        records += part
    return records


def _unusable(info: DatasetInfo, name: str, read: int, skip_log: SkipLog) -> str:
    meta = info.meta_path(name)
    if not read:
        return f"{meta}: dataset {name!r} holds no records"
    mine = [s for s in skip_log.entries() if s.source.startswith(f"{name}[")]
    kinds: dict[str, int] = {}
    for skip in mine:
        kinds[skip.kind] = kinds.get(skip.kind, 0) + 1
    counts = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    first = f"; first: {mine[0].source} ({mine[0].file}): {mine[0].reason}" if mine else ""
    return f"{meta}: dataset {name!r} has no usable record (all {read} skipped: {counts}){first}"

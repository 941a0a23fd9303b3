"""Records -> encoded training samples, with every skipped sample counted and named.

``build_dataset`` mixes datasets of a ``dataset_info.json`` by name into one ``SupervisedDataset``.
Its ``__getitem__`` opens the images and encodes the sample; a sample that cannot be used (missing,
corrupt or truncated image, a conversation the chat format refuses, too long to keep any reply)
is recorded in the ``SkipLog`` and returned as ``None``. ``DataCollator`` drops the ``None``s and
reports how many it dropped as ``batch["num_skipped"]``.

With ``DataLoader(num_workers > 0)`` each worker process has its own copy of the ``SkipLog``: skips
recorded there are logged by the worker but never reach the parent's log. The reliable count is
then the collator's per-batch ``num_skipped``, which the trainer sums; the parent's ``SkipLog``
still holds the skips found while reading the meta files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from ovis.data.readers import Record, read_records
from ovis.data.schema import DataError, DatasetInfo, load_dataset_info
from ovis.data.skips import SkipLog
from ovis.interfaces import ChatFormatError, ImageError
from ovis.interfaces.image import ImageTooLargeError
from ovis.processing import EncodedSample, OvisProcessor, SequenceTooLongError

logger = logging.getLogger("ovis.data")

Overflow = Literal["error", "truncate"]


def _classify(exc: Exception) -> str:
    """The short reason kind of an encoding failure."""
    text = str(exc)
    if isinstance(exc, ImageTooLargeError):
        return "image too large"
    if isinstance(exc, ImageError):
        if "not found" in text:
            return "image not found"
        if "truncated or corrupt" in text:
            return "image truncated or corrupt"
        if "not a readable image" in text:
            return "image unreadable"
        return "bad image"
    if isinstance(exc, SequenceTooLongError):
        return "too long"
    if "marker(s) but" in text:
        return "image count mismatch"
    return "chat format error"


class SupervisedDataset(Dataset):
    """Map-style dataset of ``Record``s encoded on access (images are opened in ``__getitem__``)."""

    def __init__(
        self,
        records: Sequence[Record],
        processor: OvisProcessor,
        *,
        skip_log: SkipLog | None = None,
        overflow: Overflow = "truncate",
    ) -> None:
        self.records = list(records)
        self.processor = processor
        self.skip_log = skip_log if skip_log is not None else SkipLog()
        self.overflow: Overflow = overflow

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EncodedSample | None:
        record = self.records[index]
        try:
            return self.processor.encode(record.messages, record.images, overflow=self.overflow)
        except (ImageError, ChatFormatError, SequenceTooLongError) as exc:
            kind = _classify(exc)
            self.skip_log.add(record.source or record.id, f"{kind}: {exc}", kind=kind)
            return None


def build_dataset(
    dataset_info: str | Path | DatasetInfo,
    names: Sequence[str],
    processor: OvisProcessor,
    *,
    skip_log: SkipLog | None = None,
    overflow: Overflow = "truncate",
) -> SupervisedDataset:
    """One dataset of the named datasets' records, concatenated in the order given."""
    info = dataset_info if isinstance(dataset_info, DatasetInfo) else load_dataset_info(dataset_info)
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DataError(f"no dataset names given; available: {', '.join(sorted(info)) or 'none'}")
    for name in names:  # every name checked before any (possibly large) file is read
        info.get(name)
    skip_log = skip_log if skip_log is not None else SkipLog()
    records: list[Record] = []
    for name in names:
        before = skip_log.count
        part = read_records(info, name, skip_log)
        skipped = skip_log.count - before
        logger.info(
            "dataset %s: %d records%s from %s",
            name, len(part), f" ({skipped} skipped)" if skipped else "", info.meta_path(name),
        )
        records += part
    if not records:
        raise DataError(f"datasets {', '.join(names)}: no usable records. {skip_log.summary()}")
    return SupervisedDataset(records, processor, skip_log=skip_log, overflow=overflow)


class DataCollator:
    """Drops skipped (``None``) samples, pads the rest and adds ``num_skipped`` (an int).

    Returns ``None`` when every sample of the batch was skipped: the trainer skips that step.
    ``num_skipped`` is counted in whichever process collates, so it stays right with workers.
    """

    def __init__(self, processor: OvisProcessor, padding_side: Literal["left", "right"] = "right") -> None:
        self.processor = processor
        self.padding_side: Literal["left", "right"] = padding_side

    def __call__(self, samples: Sequence[EncodedSample | None]) -> dict[str, Any] | None:
        kept = [s for s in samples if s is not None]
        if not kept:
            return None
        batch: dict[str, Any] = dict(self.processor.collate(kept, padding_side=self.padding_side))
        batch["num_skipped"] = len(samples) - len(kept)
        return batch

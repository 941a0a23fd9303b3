"""Records -> encoded training samples, with every skipped sample counted and named.

``build_dataset`` mixes datasets of a ``dataset_info.json`` by name into one ``SupervisedDataset``
(reading and checking them with :func:`~ovis.data.validate.read_datasets`). Its ``__getitem__``
opens the images and encodes the sample; a sample that cannot be used (corrupt or truncated image,
a conversation the chat format refuses, too long to keep any reply) is recorded in the ``SkipLog``
and returned as a :class:`~ovis.data.skips.Skipped` in its place. ``DataCollator`` drops those
(and ``None``s, from other datasets), reports how many it dropped as ``batch["num_skipped"]`` and
passes the ``Skipped`` values on as ``batch["skips"]``.

With ``DataLoader(num_workers > 0)`` each worker process has its own copy of the ``SkipLog``:
skips recorded there are logged by the worker but never reach the parent's log. The batches carry
them instead: the trainer merges ``batch["skips"]`` into its own log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from ovis.data.packing import RowLength, pack_samples
from ovis.data.readers import Record
from ovis.data.schema import DatasetInfo
from ovis.data.skips import SkipLog, Skipped
from ovis.data.validate import read_datasets
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

    def __getitem__(self, index: int) -> EncodedSample | Skipped:
        record = self.records[index]
        try:
            return self.processor.encode(record.messages, record.images, overflow=self.overflow)
        except (ImageError, ChatFormatError, SequenceTooLongError) as exc:
            kind = _classify(exc)
            skip = Skipped(record.source or record.id, kind, f"{kind}: {exc}", record.file or None)
            self.skip_log.record(skip)
            return skip


def build_dataset(
    dataset_info: str | Path | DatasetInfo,
    names: Sequence[str],
    processor: OvisProcessor,
    *,
    skip_log: SkipLog | None = None,
    overflow: Overflow = "truncate",
) -> SupervisedDataset:
    """One dataset of the named datasets' records, concatenated in the order given."""
    skip_log = skip_log if skip_log is not None else SkipLog()
    records = read_datasets(dataset_info, names, skip_log)
    return SupervisedDataset(records, processor, skip_log=skip_log, overflow=overflow)


class DataCollator:
    """Drops skipped samples (``Skipped`` or ``None``), pads the rest (or, with ``packing``, packs
    them into as few rows as fit, each no longer than the longest sample, or than ``max_length``
    with ``row_length="max_length"``: :mod:`ovis.data.packing`) and
    adds ``num_skipped`` (an int) and ``skips`` (the ``Skipped`` values, to merge into the
    trainer's log). A packed batch also holds ``num_samples`` (the samples kept: its rows are
    fewer) and ``sample_rows`` (where each sample sits); when no two samples would share a row the
    batch is padded as without packing (the position-id mask would only cost time).

    When every sample of the batch was skipped the batch holds only those two keys (no
    ``input_ids``): the trainer reads no step from it. Both are counted in whichever process
    collates, so they stay right with workers.
    """

    def __init__(
        self,
        processor: OvisProcessor,
        padding_side: Literal["left", "right"] = "right",
        *,
        packing: bool = False,
        max_length: int | None = None,
        row_length: RowLength = "longest",
    ) -> None:
        if packing and padding_side != "right":
            raise ValueError("packing fills rows from the left: padding_side must be 'right'")
        self.processor = processor
        self.padding_side: Literal["left", "right"] = padding_side
        self.packing = packing
        #: the longest packed row (default: the processor's ``max_length``)
        self.max_length = max_length if max_length is not None else processor.max_length
        self.row_length: RowLength = row_length

    def __call__(self, samples: Sequence[EncodedSample | Skipped | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None and not isinstance(s, Skipped)]
        batch: dict[str, Any] = dict(self._collate(kept)) if kept else {}
        if self.packing and kept:
            batch["num_samples"] = len(kept)
        batch["num_skipped"] = len(samples) - len(kept)
        batch["skips"] = [s for s in samples if isinstance(s, Skipped)]
        return batch

    def _collate(self, samples: list[EncodedSample]) -> dict[str, Any]:
        if not self.packing:
            return self.processor.collate(samples, padding_side=self.padding_side)
        packed = pack_samples(
            samples,
            max_length=self.max_length,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            image_size=self.processor.image_processor.image_size,
            row_length=self.row_length,
        )
        if packed["input_ids"].shape[0] == len(samples):  # no two samples share a row: nothing saved
            return self.processor.collate(samples, padding_side=self.padding_side)
        return packed

"""Sequence packing: a micro-batch's samples concatenated into as few rows as fit, without padding
between them, each sample attending only to itself.

:func:`pack_rows` chooses the rows (first-fit decreasing, at most ``max_length`` tokens a row; a
sample longer than that gets a row of its own, as it would get in a padded batch); by default a
row grows only as long as the micro-batch's longest sample (:func:`pack_samples`' ``row_length``).
:func:`pack_samples` builds the batch: ``input_ids`` and ``labels`` concatenated (labels
unchanged), ``position_ids`` restarting at 0 at every sample, the rest of a row filled with pad
tokens (labels ``IGNORE_INDEX``, positions counting from 0 again, so the tail is one more segment
of its own), and no ``attention_mask``. Whole samples are moved, so an image block never splits;
``pixel_values`` follow the samples into their new order (the model fills image positions in
row-major order). A transformers LLM given ``position_ids`` and no attention mask builds the
block-diagonal causal mask itself (``masking_utils``: segments are found where the position
ids do not step by one; Gemma 2's sliding window is measured in positions within a segment). On
flash-attention, :func:`varlen_kwargs` gives the per-sample boundaries (``cu_seq_lens_q/k``,
``max_length_q/k``) for the varlen kernel, with the rows flattened into one.

The loss sees the same labelled tokens as unpacked: the shifted target at a sample's first
position (predicted from the previous sample's last token) is left out by the loss
(:class:`ovis.train.step.TrainStep` masks targets whose position id is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ovis.model.merging import IGNORE_INDEX
from ovis.processing import EncodedSample

#: How long a packed row may grow (see :func:`pack_samples`).
RowLength = Literal["longest", "max_length"]


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices of the samples in each row. First-fit decreasing finds how many rows (the longest
    sample first, each into the first row it fits in; a row holds at most ``max_length`` tokens);
    then the same number of rows is filled evenly where that fits (the longest sample first, each
    onto the emptiest row), since the batch is as wide as its fullest row. Within a row samples
    keep their original order; a sample longer than ``max_length`` is a row alone."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = lengths[index]
        for row, free in enumerate(room):
            if size <= free:
                rows[row].append(index)
                room[row] -= size
                break
        else:
            rows.append([index])
            room.append(max(max_length - size, 0))
    even: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for index in order:
        row = min(range(len(rows)), key=lambda r: (load[r], r))
        if load[row] and load[row] + lengths[index] > max_length:
            break  # evening out would overfill a row: keep first fit
        even[row].append(index)
        load[row] += lengths[index]
    else:
        if max(load) < max(sum(lengths[i] for i in row) for row in rows):
            rows = even
    return [sorted(row) for row in rows]


def pack_samples(
    samples: Sequence[EncodedSample],
    *,
    max_length: int,
    pad_token_id: int,
    image_size: int,
    row_length: RowLength = "longest",
) -> dict[str, torch.Tensor]:
    """The packed batch of ``samples``: ``input_ids``, ``labels``, ``position_ids`` ``[rows, width]``
    (width: the fullest row), ``pixel_values`` in the samples' packed order, and ``sample_rows``
    ``[samples, 3]``: each sample's (row, start, length) in its original order.

    ``row_length``: how long a row may grow. ``"longest"`` (the default): as long as the batch's
    longest sample (at most ``max_length``), so that a packed batch never costs more than the same
    samples padded: fewer positions, and no row longer than a padded one (a masked attention costs
    the square of the row length: rows of ``max_length`` short samples would cost far more on the
    CPU than padding, measured in ``benchmarks/packing.py``). ``"max_length"``: rows up to
    ``max_length``, the fewest rows (for flash-attention's varlen kernel, whose cost does not grow
    with the row)."""
    if not samples:
        raise ValueError("pack_samples needs at least one sample")
    if row_length not in ("longest", "max_length"):
        raise ValueError(f"row_length must be 'longest' or 'max_length', got {row_length!r}")
    lengths = [len(s.input_ids) for s in samples]
    capacity = min(max_length, max(lengths)) if row_length == "longest" else max_length
    rows = pack_rows(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    where = torch.zeros((len(samples), 3), dtype=torch.long)
    images: list[torch.Tensor] = []
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            sample, n = samples[index], lengths[index]
            input_ids[r, start : start + n] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[r, start : start + n] = torch.tensor(sample.labels, dtype=torch.long)
            position_ids[r, start : start + n] = torch.arange(n)
            where[index] = torch.tensor([r, start, n])
            if sample.num_images:
                images.append(sample.pixel_values)
            start += n
        position_ids[r, start:] = torch.arange(width - start)  # the pad tail: a segment of its own
    pixel_values = torch.cat(images) if images else torch.zeros(0, 3, image_size, image_size)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "pixel_values": pixel_values,
        "sample_rows": where,
    }


def padding_fraction(batch: dict[str, torch.Tensor]) -> float:
    """The share of a batch's positions that hold no sample token (padding), packed or not."""
    total = batch["input_ids"].numel()
    if "sample_rows" in batch:
        real = int(batch["sample_rows"][:, 2].sum())
    else:
        real = int(batch["attention_mask"].sum())
    return 1.0 - real / total if total else 0.0


def uses_varlen(attn_implementation: str | None) -> bool:
    """Whether an attention implementation is flash-attention, which takes packed samples as one
    flattened row plus their boundaries (:func:`varlen_kwargs`) rather than a mask."""
    return attn_implementation is not None and "flash" in attn_implementation


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Flash-attention's varlen arguments for packed ``position_ids`` ``[rows, width]`` read as one
    flattened row: the cumulative segment starts ``cu_seq_lens_q/k`` (int32, the total at the end)
    and the longest segment ``max_length_q/k``. A segment starts wherever the position id is 0."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    total = torch.tensor([flat.numel()], device=flat.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}

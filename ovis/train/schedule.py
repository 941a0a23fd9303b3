"""Learning-rate and gumbel-temperature schedules (plain functions of the optimizer step), and the
data order (which samples each rank reads, and where a resumed run continues, on the same layout or
on another number of ranks)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ovis.data.schema import DataError
from ovis.errors import ConfigError


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup: int,
    kind: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> float:
    """Factor on the peak lr for the update made at ``step`` (0-based).

    Linear warmup from ``1 / (warmup + 1)`` to 1 over ``warmup`` steps, then ``cosine`` /
    ``linear`` decay to ``min_lr_ratio`` at the last step, or ``constant``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"unknown lr_scheduler {kind!r}; valid: cosine, constant, linear")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def lr_lambda(total_steps: int, warmup_ratio: float, kind: str, min_lr_ratio: float) -> Callable[[int], float]:
    """The multiplier as a one-argument function, for ``torch.optim.lr_scheduler.LambdaLR``."""
    warmup = warmup_steps(total_steps, warmup_ratio)

    def multiplier(step: int) -> float:
        return lr_multiplier(step, total_steps=total_steps, warmup=warmup, kind=kind, min_lr_ratio=min_lr_ratio)

    return multiplier


def tau_at(step: int, total_steps: int, start: float, end: float) -> float:
    """Gumbel temperature, linear from ``start`` at step 0 to ``end`` at the last step."""
    if total_steps <= 1:
        return end
    progress = min(1.0, step / (total_steps - 1))
    return start + (end - start) * progress


class DataOrder:
    """Which samples each rank reads, as a pure function of (seed, epoch).

    Each epoch is a permutation of ``range(num_samples)`` drawn from a generator seeded with
    ``seed + epoch``, padded by wrapping around to a multiple of ``world_size`` and dealt out
    round-robin (rank ``r`` takes positions ``r, r + W, ...``, as ``DistributedSampler`` does),
    then cut into micro-batches of ``batch_size``. Every rank gets the same number of
    micro-batches, so ranks stay in step. Micro-batches are numbered globally across epochs:
    number ``m`` is micro-batch ``m % per_epoch`` of epoch ``m // per_epoch``; resuming at an
    optimizer step means starting at micro-batch ``step * accumulation``.
    """

    def __init__(
        self, num_samples: int, *, batch_size: int, world_size: int = 1, seed: int = 0, accumulation: int = 1
    ) -> None:
        if num_samples <= 0:
            raise DataError("the dataset to train on is empty (no samples)")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        #: micro-batches per optimizer step (recorded so a resume can keep the global batch)
        self.accumulation = accumulation
        self.per_rank = math.ceil(num_samples / world_size)
        self.per_epoch = math.ceil(self.per_rank / batch_size)

    def permutation(self, epoch: int) -> list[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        total = self.per_rank * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order

    def batches(self, epoch: int, rank: int) -> list[list[int]]:
        """All micro-batches of ``rank`` in ``epoch``."""
        mine = self.permutation(epoch)[rank :: self.world_size]
        return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]

    def all_ranks(self, epoch: int) -> list[list[list[int]]]:
        """``[rank][micro_batch] -> sample ids``, for logging what a step read across ranks."""
        return [self.batches(epoch, rank) for rank in range(self.world_size)]

    def locate(self, micro_batch: int) -> tuple[int, int]:
        """Global micro-batch number -> ``(epoch, index within the epoch)``."""
        return divmod(micro_batch, self.per_epoch)

    def total_steps(self, epochs: float, accumulation: int) -> int:
        """Optimizer steps for ``epochs`` passes (the last step may run into the next epoch)."""
        return max(1, math.ceil(math.ceil(epochs * self.per_epoch) / accumulation))

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over every rank: ``batch_size * accumulation * world_size``."""
        return self.batch_size * self.accumulation * self.world_size

    def read_before(self, micro_batch: int) -> tuple[int, int]:
        """``(epoch, n)``: before global micro-batch ``micro_batch`` the run has read the first ``n``
        positions of that epoch's order (every rank together: micro-batch ``i`` of every rank is
        the contiguous slice ``[i * batch_size * world_size, (i + 1) * batch_size * world_size)``
        of the permutation, dealt round-robin)."""
        epoch, index = self.locate(micro_batch)
        return epoch, index * self.batch_size * self.world_size

    def fingerprint(self) -> dict[str, int]:
        """What a checkpoint records of the order: a resumption must keep the seed and the samples;
        it may change the layout (batch size, ranks) only keeping the global batch (:func:`resume_at`)."""
        return {
            "num_samples": self.num_samples, "batch_size": self.batch_size,
            "world_size": self.world_size, "seed": self.seed, "accumulation": self.accumulation,
        }


def resume_at(saved: dict[str, int], micro_batch: int, order: DataOrder, *, where: str = "the checkpoint") -> int:
    """The micro-batch number of ``order`` at which a run continues whose checkpoint was written
    under the order with fingerprint ``saved`` after ``micro_batch`` micro-batches.

    With the same batch size and number of ranks that is ``micro_batch`` itself. With another
    layout (a different number of ranks, or per-rank batch size) the global batch must stay the
    same, so that every later step reads the same samples; the run then continues the epoch in
    progress at the first sample not yet read. Positions below ``num_samples`` of an epoch's order
    do not depend on the layout (only the wrap-around padding at its end does), and a checkpoint
    always stops before the epoch's last micro-batch, which holds more than the padding.
    Raises :class:`~ovis.errors.ConfigError` naming the numbers when the run cannot continue exactly.
    """
    for key in ("num_samples", "seed"):
        if saved.get(key) != getattr(order, key):
            raise ConfigError(
                f"cannot resume from {where}: the data order would differ ({key} {saved.get(key)} in the "
                f"checkpoint, {getattr(order, key)} now); keep the seed and the datasets of the interrupted run"
            )
    if saved.get("batch_size") == order.batch_size and saved.get("world_size") == order.world_size:
        return micro_batch  # the same layout (gradient accumulation may change, as it always could)
    ranks, batch = int(saved["world_size"]), int(saved["batch_size"])
    if "accumulation" not in saved:
        raise ConfigError(
            f"cannot resume from {where} on another layout ({ranks} ranks x per_device_batch_size {batch} "
            f"then, {order.world_size} x {order.batch_size} now): it was written by an ovis that did not "
            "record its gradient_accumulation_steps, so its global batch is unknown; resume it on "
            f"{ranks} ranks with per_device_batch_size {batch}"
        )
    before = DataOrder(order.num_samples, batch_size=batch, world_size=ranks, seed=order.seed,
                       accumulation=int(saved["accumulation"]))
    if before.global_batch != order.global_batch:
        per_step = order.batch_size * order.world_size
        fits = before.global_batch % per_step == 0
        hint = (f"set gradient_accumulation_steps: {before.global_batch // per_step}" if fits else
                f"no gradient_accumulation_steps gives it with per_device_batch_size {order.batch_size} on "
                f"{order.world_size} ranks; choose a per_device_batch_size * ranks that divides it")
        raise ConfigError(
            f"cannot resume from {where} on {order.world_size} ranks: the global batch would change from "
            f"{before.global_batch} ({batch} per device x {before.accumulation} accumulation x {ranks} ranks) "
            f"to {order.global_batch} ({order.batch_size} x {order.accumulation} x {order.world_size}), and with "
            f"it which samples each step trains on; {hint}"
        )
    epoch, read = before.read_before(micro_batch)
    per_micro = order.batch_size * order.world_size
    if read % per_micro:
        raise ConfigError(
            f"cannot resume from {where} on {order.world_size} ranks x per_device_batch_size {order.batch_size}: "
            f"it stopped after sample {read} of epoch {epoch}'s order, inside one of this layout's micro-batches "
            f"of {per_micro} samples; resume on {ranks} ranks x {batch}, or on a layout whose "
            f"ranks x per_device_batch_size divides {read}"
        )
    return epoch * order.per_epoch + read // per_micro

"""Learning-rate and gumbel-temperature schedules: plain functions of the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Callable

from ovis.data.schema import DataError


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

    def __init__(self, num_samples: int, *, batch_size: int, world_size: int = 1, seed: int = 0) -> None:
        if num_samples <= 0:
            raise DataError("the dataset to train on is empty (no samples)")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
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

    def fingerprint(self) -> dict[str, int]:
        """What must not change between a checkpoint and its resumption for the order to hold."""
        return {
            "num_samples": self.num_samples, "batch_size": self.batch_size,
            "world_size": self.world_size, "seed": self.seed,
        }

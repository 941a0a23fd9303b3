"""Helpers for tests of the code that uses ZeRO-3 partitions directly (``ovis.train.vocab_parallel``,
``ovis.train.frozen_linears``): a parameter cut as ZeRO-3 cuts one, and a check run on gloo ranks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ovis.ports import free_port
from ovis.train.distributed import local_launch_env


def partitioned(tensor: torch.Tensor, rank: int, world: int) -> torch.nn.Parameter:
    """A frozen parameter cut as ZeRO-3 cuts one: the flattened tensor padded to ``world`` equal
    pieces, this rank's piece as ``ds_tensor``, the whole tensor gone."""
    numel = tensor.numel()
    size = -(-numel // world)
    flat = torch.zeros(size * world, dtype=tensor.dtype)
    flat[:numel] = tensor.detach().reshape(-1)
    param = torch.nn.Parameter(torch.empty(0, dtype=tensor.dtype), requires_grad=False)
    param.ds_tensor = flat[rank * size : (rank + 1) * size].clone()
    param.ds_shape, param.ds_numel, param.ds_process_group = tuple(tensor.shape), numel, None
    return param


def on_ranks(check: Callable[..., None], tmp_path: Path, world: int, case: dict) -> list[dict]:
    """``check(rank, world, port, out, case)`` on ``world`` gloo ranks; each rank's report, which it
    writes to ``out/rank{rank}.json``."""
    mp.spawn(check, args=(world, free_port(), str(tmp_path), case), nprocs=world, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


def join(rank: int, world: int, port: int) -> None:
    """This process as gloo rank ``rank`` of ``world`` (one thread: the ranks share the machine's cores)."""
    os.environ.update(local_launch_env(rank, world, port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")


def leave() -> None:
    """Every rank waits for the others, then leaves the gloo group (a rank tearing its connections
    down while another still reads from them makes that one abort)."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()

"""The processes of a run: joining (or creating) DeepSpeed's process group, or running alone.

:class:`Processes` is what the trainer knows of the others: its rank, how many there are, the
device to use, and the collectives it needs (sum, barrier, gather, rank 0's choice for all). A run
without DeepSpeed is one process and its collectives are no-ops; a DeepSpeed run has a process
group even alone (DeepSpeed needs one), created here when no launcher made it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ovis.errors import ConfigError
from ovis.ports import free_port
from ovis.train.config import TrainConfig

#: What a launcher (torchrun, deepspeed) sets for each rank; a child started outside one must not
#: inherit them.
LAUNCH_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def local_launch_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """:data:`LAUNCH_ENV_VARS` as a launcher sets them for ``rank`` of ``world_size`` ranks on this
    one machine, meeting at 127.0.0.1:``port`` (for ranks spawned by hand: tests, benchmarks)."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    #: ``torch.distributed`` is initialised (else this is the only process and collectives are no-ops).
    grouped: bool

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every process, in place."""
        if self.grouped:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.grouped:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.grouped or self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank (``value`` is ignored elsewhere)."""
        if not self.grouped or self.world_size == 1:
            return value
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join_deepspeed_group() -> Processes:
    """Join (or, with no launcher, create) DeepSpeed's process group."""
    import deepspeed  # optional (ovis[train]) and slow to import
    from deepspeed.accelerator import get_accelerator

    if not dist.is_initialized():
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = get_accelerator()
    kind = accelerator.device_name()
    if kind == "cuda":
        accelerator.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Several CPU ranks on one machine each defaulting to every core stall each other in
        # OpenMP waits (torchrun sets OMP_NUM_THREADS=1; the deepspeed launcher does not).
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1")
        if local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    with _no_shm_kernel(on_cpu=kind == "cpu"):
        deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name(), verbose=False)
    device = torch.device("cpu") if kind == "cpu" else torch.device(kind, local_rank)
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, device, grouped=True)


@contextlib.contextmanager
def _no_shm_kernel(*, on_cpu: bool):
    """On a CPU, DeepSpeed's communication backend compiles a shared-memory all-reduce kernel (a C++
    extension: minutes on a first run, and a compiler required) that only its inference all-reduce
    uses; training goes through gloo. Skip building it while the process group starts."""
    # (the package's attribute ``torch`` is torch itself, not this submodule)
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    if not on_cpu or not hasattr(ds_torch, "build_shm_op"):
        yield
        return
    original = ds_torch.build_shm_op
    ds_torch.build_shm_op = lambda: None
    try:
        yield
    finally:
        ds_torch.build_shm_op = original


def single_process() -> Processes:
    """This process alone (a run without DeepSpeed): CUDA when there is one, else the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ConfigError(
            f"deepspeed is null (one process without DeepSpeed), but a launcher started {world_size} "
            "processes; set deepspeed to zero2, zero3 or a JSON file to train on several"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Processes(0, 1, local_rank, device, grouped=False)


def start_processes(config: TrainConfig) -> Processes:
    """DeepSpeed's process group, or this process alone when ``config.deepspeed`` is null."""
    return single_process() if config.deepspeed is None else join_deepspeed_group()


def agree_on_precision(config: TrainConfig, processes: Processes) -> str:
    """Rank 0's resolution of ``config.precision``, on every rank.

    ``auto`` on a CPU times a matmul probe, and ranks sharing the cores measure different rates;
    ranks that chose differently would deadlock or crash in DeepSpeed, so rank 0 decides for all.
    """
    return processes.from_rank0(config.resolved_precision() if processes.rank == 0 else None)


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass

"""The engines that run the optimizer: DeepSpeed (ZeRO-2 / ZeRO-3), or a plain PyTorch loop.

Both take the same :class:`~ovis.train.step.TrainStep`, parameter groups and learning-rate schedule
and present the trainer the same small surface (:class:`Engine`): a micro-step (forward, backward,
and the optimizer step at the end of each accumulation window), the gradient norm, the optimizer's
groups, saving and loading their state in a checkpoint, and the final weights.

The PyTorch engine (``deepspeed: null``) keeps DeepSpeed's semantics where it can: torch's AdamW
with the same groups, betas, eps and weight decay; the loss divided by the accumulation steps
before the backward pass; the global gradient norm clipped to ``max_grad_norm``; the schedule
stepped after each optimizer step. bf16 differs in form: DeepSpeed holds bf16 weights with fp32
master copies in its optimizer, the PyTorch engine holds fp32 weights and computes in bf16 under
``torch.autocast``; both export bf16 weights. Only the PyTorch engine offers ``optimizer: muon``
(:class:`MuonWithAdamW`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ovis.errors import InputFileError
from ovis.train import gloo_gather
from ovis.train.config import TrainConfig
from ovis.train.deepspeed_config import build_deepspeed_config
from ovis.train.distributed import Processes
from ovis.train.host_memory import release_heap, return_freed_memory
from ovis.train.muon import MuonWithAdamW, muon_matrices
from ovis.train.step import WRAPPER_PREFIX

#: The engine state's subdirectory in a checkpoint (DeepSpeed's "tag").
ENGINE_TAG = "engine"
#: DeepSpeed's universal form of ``ENGINE_TAG``, made beside it when another number of ranks resumes.
UNIVERSAL_TAG = "engine-universal"
TORCH_STATE = "torch_engine.pt"


class Engine(Protocol):
    """What the trainer needs of an engine."""

    #: ``deepspeed`` or ``torch`` (recorded in checkpoints: one cannot resume the other's).
    kind: str
    device: torch.device
    #: DeepSpeed's ZeRO stage; 0 for the PyTorch engine.
    zero_stage: int
    optimizer: torch.optim.Optimizer

    def train(self) -> None: ...

    def micro_step(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward on one micro-batch, then the optimizer step if this micro-batch
        ends an accumulation window; ``(loss, labelled tokens)``."""
        ...

    def grad_norm(self) -> float | None:
        """The global gradient norm of the last optimizer step, before clipping."""
        ...

    def save(self, directory: Path) -> None:
        """Write the engine's state (weights, optimizer, schedule) under ``directory`` (every rank)."""
        ...

    def load(self, directory: Path, *, reshard: bool = False) -> None:
        """Restore what :meth:`save` wrote under ``directory`` (every rank); ``reshard``: it was
        written by another number of ranks."""
        ...

    def final_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The Ovis model's full weights, on the CPU, on rank 0 (None elsewhere); every rank calls
        (under ZeRO-3 this gathers). Called once, when training is over."""
        ...


Schedule = Callable[[int], float]


class DeepSpeedEngine:
    """:class:`Engine` over ``deepspeed.initialize``."""

    kind = "deepspeed"

    def __init__(
        self, config: TrainConfig, step_module: nn.Module, groups: list[dict[str, Any]], schedule: Schedule, *,
        processes: Processes, precision: str, hidden_size: int,
    ) -> None:
        import deepspeed  # optional (ovis[train]) and slow to import

        gloo_gather.install()  # ZeRO's gathers on a CPU: no second full-size buffer
        if processes.device.type == "cpu":
            return_freed_memory()  # freed activations and gathered weights leave the process
        self.ds_config = build_deepspeed_config(
            config, world_size=processes.world_size, hidden_size=hidden_size,
            on_cuda=processes.device.type == "cuda", precision=precision,
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=step_module,
            model_parameters=groups,
            config=self.ds_config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        )
        self.rank = processes.rank
        self.processes = processes
        self.device = torch.device(self.engine.device)
        self.zero_stage = self.engine.zero_optimization_stage()
        if self.zero_stage == 3 and hasattr(step_module, "plan_zero3"):
            step_module.plan_zero3(self.device)
        release_heap()  # what building the engine freed leaves the process before training starts

    def train(self) -> None:
        self.engine.train()

    def micro_step(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, tokens = self.engine(**inputs)
        self.engine.backward(loss)  # divides by the accumulation steps itself
        if hasattr(self.engine.module, "backward_done"):
            self.engine.module.backward_done()
        self.engine.step()  # steps the optimizer at accumulation boundaries only
        return loss, tokens

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG)

    def load(self, directory: Path, *, reshard: bool = False) -> None:
        if not (directory / ENGINE_TAG).is_dir():
            raise InputFileError(f"{directory} holds no DeepSpeed engine state in {ENGINE_TAG}/")
        if not reshard:
            self._load(directory, ENGINE_TAG)
            return
        # DeepSpeed refuses ZeRO partitions written by another number of ranks; its universal
        # checkpoint (every parameter's fp32 weights and Adam moments whole, one directory each)
        # loads on any number, each rank taking its own slices.
        if self.processes.rank == 0:
            to_universal(directory / ENGINE_TAG, directory / UNIVERSAL_TAG)
        self.processes.barrier()
        config = self.engine._config  # DeepSpeed reads the flag from its config when loading
        config.load_universal_checkpoint = True
        try:
            self._load(directory, UNIVERSAL_TAG)
        finally:
            config.load_universal_checkpoint = False
        _unshare_steps(self.engine.optimizer)

    def _load(self, directory: Path, tag: str) -> None:
        loaded, _ = self.engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if loaded is None:
            raise InputFileError(f"{directory} holds no DeepSpeed engine state in {tag}/")

    def final_state_dict(self) -> dict[str, torch.Tensor] | None:
        # Under ZeRO-3 each rank holds a slice of every parameter: gathered to rank 0 module by
        # module (DeepSpeed's consolidated state dict, the ``save_16bit_model`` path).
        if self.engine.zero_optimization_partition_weights():
            full = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            full = self.engine.module.state_dict() if self.rank == 0 else None
        return None if full is None else _unwrapped(full)


class TorchEngine:
    """:class:`Engine` as a plain PyTorch loop, in this process alone (``deepspeed: null``)."""

    kind = "torch"

    def __init__(
        self, config: TrainConfig, step_module: nn.Module, groups: list[dict[str, Any]], schedule: Schedule, *,
        device: torch.device, precision: str,
    ) -> None:
        self.module = step_module.to(device)
        self.device = device
        self.zero_stage = 0
        # torch's fused AdamW (on CUDA and CPUs, as DeepSpeed's config asks): no parameter-sized temporaries
        fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
        if config.optimizer == "muon":
            self.optimizer = MuonWithAdamW(
                groups, muon_matrices(step_module), config, newton_schulz_bf16=precision == "bf16", **fused
            )
        else:
            self.optimizer = torch.optim.AdamW(
                groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                weight_decay=config.weight_decay, **fused,
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.accumulation = config.gradient_accumulation_steps
        self.max_grad_norm = config.max_grad_norm
        self.bf16 = precision == "bf16"
        self.params = [p for group in groups for p in group["params"]]
        self.micro = 0
        self.last_norm: float | None = None

    def train(self) -> None:
        self.module.train()

    def micro_step(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss, tokens = self.module(**inputs)
        (loss / self.accumulation).backward()
        self.micro += 1
        if self.micro % self.accumulation == 0:
            limit = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
            self.last_norm = float(torch.nn.utils.clip_grad_norm_(self.params, limit))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, tokens

    def grad_norm(self) -> float | None:
        return self.last_norm

    def save(self, directory: Path) -> None:
        target = directory / ENGINE_TAG
        target.mkdir(parents=True, exist_ok=True)
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        torch.save(state, target / TORCH_STATE)

    def load(self, directory: Path, *, reshard: bool = False) -> None:
        # One process only: a checkpoint of this engine is always one rank's (nothing to reshard).
        path = directory / ENGINE_TAG / TORCH_STATE
        if not path.is_file():
            raise InputFileError(f"{directory} holds no PyTorch engine state ({ENGINE_TAG}/{TORCH_STATE} is missing)")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro = 0  # a checkpoint is always taken at the end of an accumulation window

    def final_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.bf16:  # training is over: hold bf16 weights, as DeepSpeed's bf16 mode does
            self.module.to(torch.bfloat16)
        return _unwrapped(self.module.state_dict())


def to_universal(engine_dir: Path, out: Path) -> Path:
    """Convert DeepSpeed's ZeRO checkpoint in ``engine_dir`` to its universal form in ``out``
    (``deepspeed.checkpoint.ds_to_universal``, in this process); kept if already made. Written to
    ``out.tmp`` and renamed, so an interrupted conversion is never taken for a finished one."""
    import argparse
    import shutil

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    if (out / "zero" / "optimizer_state.pt").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(
        input_folder=str(engine_dir), output_folder=str(tmp), num_extract_workers=1, num_merge_workers=1,
        keep_temp_folder=False, strict=True,
        # ovis's checkpoints do not carry DeepSpeed's universal-checkpoint info (no tensor
        # parallelism to describe): the converter adds its default
        inject_missing_state=True,
    )
    ds_to_universal(args)
    tmp.rename(out)
    return out


def _unshare_steps(optimizer: Any) -> None:
    """Give every parameter group of the optimizer under ``optimizer`` its own Adam ``step``.

    DeepSpeed's ZeRO-3 universal load (0.19) hands every sub-group the same ``step`` tensor, which
    torch's Adam advances in place once per sub-group: with two sub-groups the second's bias
    correction would run a step ahead after every step (measured: a 1-rank ZeRO-3 run resumed
    through the universal form drifted to 8e-4 relative in loss within 3 steps; with this, equal).
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in inner.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            state["step"] = step.clone()


def _unwrapped(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Ovis model's entries of the step module's state dict, detached, on the CPU."""
    size = len(WRAPPER_PREFIX)
    return {k[size:]: v.detach().cpu() for k, v in state_dict.items() if k.startswith(WRAPPER_PREFIX)}


def build_engine(
    config: TrainConfig, step_module: nn.Module, groups: list[dict[str, Any]], schedule: Schedule, *,
    processes: Processes, precision: str, hidden_size: int,
) -> Engine:
    """DeepSpeed as ``config.deepspeed`` says, or the PyTorch engine when it is null."""
    if config.deepspeed is None:
        return TorchEngine(config, step_module, groups, schedule, device=processes.device, precision=precision)
    return DeepSpeedEngine(
        config, step_module, groups, schedule, processes=processes, precision=precision, hidden_size=hidden_size
    )

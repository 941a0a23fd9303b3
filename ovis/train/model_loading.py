"""The input model of a training run, loaded without a full copy of it on every rank.

Under ZeRO-3 the model is built inside ``deepspeed.zero.Init`` (each parameter is cut into the ranks'
partitions as soon as its module is built, and no initialisation runs: every weight is loaded after)
and the checkpoint is then read into each rank's own partition, one tensor at a time:

* an ovis directory (composed, or a stage's ``final``): every rank reads, with plain file reads (no
  memory map, whose pages would stay in the process), only the bytes of its own slice of each tensor;
* a foreign checkpoint (original v1, hf-ovis2, the Ovis2 release): rank 0 alone reads and translates
  it (the translation needs whole tensors) and sends the ranks each tensor in turn; rank 0 holds the
  checkpoint while it loads, the others never do. ``ovis convert`` it once to avoid that.

The visual tokenizer, the visual embedding table and whatever a plugin's backbone builds are
partitioned like the LLM: ``zero.Init`` catches every module built inside it.

ZeRO-2, a single process and the PyTorch engine load with transformers' ``from_pretrained``,
directly in the training dtype: it reads each tensor and casts it on its own, so no float32 copy of
the model exists beside the bf16 one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ovis.composer import DTYPES, load
from ovis.errors import InputFileError, OvisError
from ovis.model import OvisConfig, OvisForCausalLM
from ovis.model.directory_check import check_model_directory, check_tensor_shapes, read_model_config
from ovis.model.modeling_ovis import read_hf_ovis2, read_original, read_release
from ovis.model.v1_format import checkpoint_format
from ovis.processing import OvisProcessor
from ovis.train.config import TrainConfig
from ovis.train.deepspeed_config import read_deepspeed_config
from ovis.train.distributed import Processes

logger = logging.getLogger("ovis.train")

#: The readers of the foreign layouts, by ``checkpoint_format``.
FOREIGN_READERS = {"original": read_original, "hf-ovis2": read_hf_ovis2, "ovis2": read_release}

#: safetensors dtype names -> torch dtypes.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

#: ``hidden_size -> the run's DeepSpeed config`` (its "auto" buckets depend on the LLM's width).
ZeroConfigFor = Callable[[int], dict[str, Any]]


def uses_zero3(config: TrainConfig) -> bool:
    """Whether the run's DeepSpeed config partitions the weights (ZeRO stage 3)."""
    if config.deepspeed is None:
        return False
    zero = read_deepspeed_config(config.deepspeed).get("zero_optimization") or {}
    return isinstance(zero, dict) and zero.get("stage") == 3


def visual_parameters(model: OvisForCausalLM) -> list[torch.nn.Parameter]:
    """The visual tokenizer's and the visual embedding table's parameters."""
    return [*model.visual_tokenizer.parameters(), *model.vte.parameters()]


@contextlib.contextmanager
def gathered(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """ZeRO-3 parameters whole on every rank while the block runs; what rank 0 changed in them is
    what every rank keeps (each rank draws the same values anyway: the seeds agree). A no-op for
    parameters that are not partitioned (or none)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


def load_training_model(
    directory: str | Path, *, dtype: str, processes: Processes, zero3_config: ZeroConfigFor | None = None
) -> tuple[OvisForCausalLM, OvisProcessor]:
    """``(model, processor)`` of ``directory`` in ``dtype`` (``float32`` / ``bfloat16``).

    ``zero3_config``: for a ZeRO-3 run, ``hidden_size -> the run's DeepSpeed config`` (the config
    ``deepspeed.initialize`` will get: ``zero.Init`` must partition as the engine will); the model
    comes back partitioned across ``processes``. None: loaded whole (ZeRO-2, one process).
    """
    if zero3_config is None:
        return load(directory, dtype=dtype)
    model = load_partitioned(directory, dtype=DTYPES[dtype], processes=processes, zero3_config=zero3_config)
    return model, OvisProcessor.from_pretrained(directory)


def load_partitioned(
    directory: str | Path, *, dtype: torch.dtype, processes: Processes, zero3_config: ZeroConfigFor
) -> OvisForCausalLM:
    """The model of ``directory`` built under ``deepspeed.zero.Init``, each rank's partition read."""
    directory = Path(directory)
    read_model_config(directory)  # a missing directory or a bad config.json: named before anything else
    layout = checkpoint_format(directory)
    checkpoint = None
    if layout == "ovis":
        config = OvisConfig.from_pretrained(directory)
        shapes = check_model_directory(directory)
        check_tensor_shapes(shapes, OvisForCausalLM._expected_shapes(config), directory)
        source: _Source = _FileSlices([directory / name for name in shapes], processes)
    else:
        checkpoint = _read_on_rank0(directory, layout, processes)
        config = processes.from_rank0(checkpoint.config if checkpoint is not None else None)
        source = _FromRank0(checkpoint.state if checkpoint is not None else None, processes)
    model = _build_partitioned(config, dtype, zero3_config(config.llm_config.hidden_size))
    _fill(model, source, dtype, directory)
    source.close()
    model.config.dtype = dtype
    generation = directory / "generation_config.json"
    if generation.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    if checkpoint is not None:
        logger.warning(checkpoint.message(directory))
    return model.eval()  # as from_pretrained returns it


def local_elements(model: torch.nn.Module) -> tuple[int, int]:
    """``(elements this rank holds, elements of the model)`` over its distinct parameters: under
    ZeRO-3 a rank holds its partitions (and any parameter gathered whole at the moment)."""
    held = total = 0
    for param in model.parameters():
        partition = getattr(param, "ds_tensor", None)
        held += param.data.numel() + (partition.numel() if partition is not None else 0)
        total += getattr(param, "ds_numel", param.numel())
    return held, total


# -- building --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Modules create their weights in the default dtype before zero.Init partitions (and casts) them:
    # created in the training dtype, a module's transient whole copy is no bigger than it must be.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _build_partitioned(config: OvisConfig, dtype: torch.dtype, ds_config: dict[str, Any]) -> OvisForCausalLM:
    import deepspeed  # optional (ovis[train]) and slow to import
    from transformers.initialization import no_init_weights

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # No initialisation (every weight is loaded next), and the RNG left as it was: a re-initialised
    # block or LoRA adapters drawn after this must be those a whole load would give.
    with (
        torch.random.fork_rng(devices=devices),
        no_init_weights(),
        _default_dtype(dtype),
        deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype),
    ):
        model = OvisForCausalLM(config)
    model.tie_weights()  # init_weights (which ties) was skipped above
    return model


# -- where each partition comes from ---------------------------------------------------------------
class _Source:
    """A checkpoint's tensors, read a slice at a time; every rank calls each method in the same order."""

    def names(self) -> set[str]:
        raise NotImplementedError

    def read(self, name: str, start: int, stop: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """Elements ``[start, stop)`` of tensor ``name`` (``numel`` elements) flattened, in ``dtype``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FileSlices(_Source):
    """An ovis directory's safetensors files: a slice's bytes read with ``pread`` (each rank its own)."""

    def __init__(self, files: list[Path], processes: Processes) -> None:
        self.entries: dict[str, tuple[Any, int, dict[str, Any]]] = {}
        self.handles = []
        for path in files:
            handle = path.open("rb")
            self.handles.append(handle)
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    self.entries[name] = (handle, 8 + length, entry)

    def names(self) -> set[str]:
        return set(self.entries)

    def read(self, name: str, start: int, stop: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        handle, base, entry = self.entries[name]
        stored = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if stored is None:
            raise InputFileError(
                f"{handle.name}: tensor {name!r} has dtype {entry['dtype']}, which ovis does not "
                f"load (expected one of {', '.join(_SAFETENSORS_DTYPES)})"
            )
        size = torch.empty((), dtype=stored).element_size()
        buffer = torch.empty((stop - start) * size, dtype=torch.uint8)
        if stop > start:
            offset = base + int(entry["data_offsets"][0]) + start * size
            handle.seek(offset)
            if handle.readinto(memoryview(buffer.numpy())) != buffer.numel():
                raise InputFileError(f"{handle.name}: tensor {name!r} is cut short (a truncated file?)")
        return buffer.view(stored).to(dtype)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


class _FromRank0(_Source):
    """A state dict held by rank 0 only: each tensor, cast to the training dtype, is broadcast whole to
    the others, which keep their slice (one tensor in flight at a time)."""

    def __init__(self, state: dict[str, torch.Tensor] | None, processes: Processes) -> None:
        self.state = state
        self.processes = processes
        self._names = processes.from_rank0(set(state) if state is not None else None)

    def names(self) -> set[str]:
        return self._names

    def read(self, name: str, start: int, stop: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        device = self.processes.device
        if self.state is not None:
            whole = self.state.pop(name).reshape(-1).to(device=device, dtype=dtype)  # dropped once sent
        else:
            whole = torch.empty(numel, dtype=dtype, device=device)
        if self.processes.grouped and self.processes.world_size > 1:
            dist.broadcast(whole, src=0)
        return whole[start:stop].cpu()


def _read_on_rank0(directory: Path, layout: str, processes: Processes) -> Any:
    """Rank 0's reading of a foreign checkpoint (None on the other ranks); a failure is raised on every
    rank rather than leaving the others waiting."""
    checkpoint, failure = None, None
    if processes.rank == 0:
        try:
            checkpoint = FOREIGN_READERS[layout](directory)
        except OvisError as exc:
            failure = exc
        except Exception as exc:  # not picklable for certain: the others get its message
            processes.from_rank0(OvisError(f"rank 0 could not read {directory}: {exc}"))
            raise
    failure = processes.from_rank0(failure)
    if failure is not None:
        raise failure
    return checkpoint


# -- filling the partitions -------------------------------------------------------------------------
def _fill(model: OvisForCausalLM, source: _Source, dtype: torch.dtype, directory: Path) -> None:
    """Copy each parameter's slice of the checkpoint into this rank's partition; persistent buffers
    (never partitioned) whole."""
    available = source.names()
    aliases: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
        params[id(param)] = param
    missing = [names[0] for names in aliases.values() if not set(names) & available]
    if missing:
        raise InputFileError(
            f"{directory}: {len(missing)} weight(s) the model needs are not in its files, e.g. {', '.join(missing[:3])}"
        )
    known = {n for names in aliases.values() for n in names} | set(model.state_dict())
    unknown = sorted(available - known)
    if unknown:
        logger.warning(
            "%s: %d tensor(s) the model does not use were left out, e.g. %s",
            directory,
            len(unknown),
            ", ".join(unknown[:3]),
        )
    with torch.no_grad():
        for key, names in aliases.items():
            param = params[key]
            name = next(n for n in names if n in available)
            numel = param.ds_numel
            size = param.ds_tensor.ds_numel
            start = min(size * dist.get_rank(), numel)
            stop = min(start + size, numel)
            part = source.read(name, start, stop, numel, param.ds_tensor.dtype)
            param.ds_tensor.zero_()
            param.ds_tensor[: stop - start].copy_(part)
        parameter_names = {n for names in aliases.values() for n in names}
        for name, buffer in model.state_dict(keep_vars=True).items():
            if name in parameter_names or name not in available:
                continue
            cast = dtype if buffer.is_floating_point() else buffer.dtype
            buffer.copy_(source.read(name, 0, buffer.numel(), buffer.numel(), cast).view(buffer.shape))

"""The input model of a training run, loaded without a full copy of it on every rank.

Under ZeRO-3 the model is built inside ``deepspeed.zero.Init`` (each parameter is cut into the ranks'
partitions as soon as its module is built, and no initialisation runs: every weight is loaded after)
and the checkpoint is then read into each rank's own partition, one tensor at a time:

* an ovis directory (composed, or a stage's ``final``): every rank reads, with plain file reads (no
  memory map, whose pages would stay in the process), only the bytes of its own slice of each tensor;
* a foreign checkpoint (original v1, hf-ovis2, the Ovis2 release): rank 0 alone reads and translates
  it (the translation needs whole tensors) and sends the ranks each tensor in turn; rank 0 holds the
  checkpoint while it loads, the others never do. ``ovis convert`` it once to avoid that.

A stored tensor that transformers loads under another name (``ovis.model.stored_names``: a wrapped
``ViTModel``, for one) is read under the model's name; one it converts further (split, merged) cannot
be read a slice at a time, and such a directory goes the foreign way, through ``from_pretrained`` on
rank 0.

The visual tokenizer, the visual embedding table and whatever a plugin's backbone builds are
partitioned like the LLM: ``zero.Init`` catches every module built inside it.

ZeRO-2, a single process and the PyTorch engine load an ovis directory whole, the same way without
the partitions (:func:`load_streamed`): each tensor read in pieces straight into its parameter in
the training dtype, so no float32 copy (nor a memory map of the float32 file) sits beside the bf16
model. A foreign checkpoint loads through ``ovis.load`` there.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from ovis.model.directory_check import check_missing_weights, check_model_directory, read_model_config
from ovis.model.modeling_ovis import read_hf_ovis2, read_original, read_release
from ovis.model.stored_names import StoredNames
from ovis.model.v1_format import checkpoint_format
from ovis.processing import OvisProcessor
from ovis.train import gloo_gather
from ovis.train.config import TrainConfig
from ovis.train.deepspeed_config import read_deepspeed_config
from ovis.train.distributed import Processes
from ovis.train.host_memory import release_heap, return_freed_memory

logger = logging.getLogger("ovis.train")



@dataclasses.dataclass
class _LoadedWhole:
    """An ovis directory with a tensor transformers converts on load (more than renames), loaded whole
    by ``from_pretrained`` on rank 0: its config and state dict under the model's names."""

    config: OvisConfig
    state: dict[str, torch.Tensor]

    @classmethod
    def read(cls, directory: Path) -> _LoadedWhole:
        model = OvisForCausalLM.from_pretrained(str(directory))
        return cls(model.config, dict(model.state_dict()))

    def message(self, directory: str | Path) -> str:
        return f"{directory}: rank 0 loaded the model whole (from_pretrained) and sent each rank its slices"


#: A layout of its own for the loader: an ovis directory that is read whole (see :class:`_LoadedWhole`).
CONVERTED = "ovis, converted on load"

#: The readers of the layouts read whole on rank 0, by ``checkpoint_format``.
FOREIGN_READERS = {
    "original": read_original,
    "hf-ovis2": read_hf_ovis2,
    "ovis2": read_release,
    CONVERTED: _LoadedWhole.read,
}

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
    comes back partitioned across ``processes``. None: loaded whole (ZeRO-2, one process), an ovis
    directory streamed (:func:`load_streamed`), a foreign checkpoint through ``ovis.load``.
    """
    layout = _layout(Path(directory))
    if zero3_config is None and layout != "ovis":
        return load(directory, dtype=dtype)
    if layout == "ovis":
        check_model_directory(directory)  # a bad weights file is named before anything loads
    # The processor first: parsing its tokenizer (Qwen's 152K words: 0.11 GB held, 0.06 GB more while
    # parsing) then peaks before the weights are resident rather than on top of them.
    processor = OvisProcessor.from_pretrained(directory)
    release_heap()  # the tokenizer's parse leaves more freed memory resident than the tokenizer holds
    if zero3_config is not None:
        model = load_partitioned(directory, dtype=DTYPES[dtype], processes=processes, zero3_config=zero3_config)
    else:
        model = load_streamed(directory, dtype=DTYPES[dtype])
    release_heap()
    return model, processor


def load_partitioned(
    directory: str | Path, *, dtype: torch.dtype, processes: Processes, zero3_config: ZeroConfigFor
) -> OvisForCausalLM:
    """The model of ``directory`` built under ``deepspeed.zero.Init``, each rank's partition read."""
    gloo_gather.install()  # gathers during the build (zero.Init) and the step: no double buffer on gloo
    if processes.device.type == "cpu":
        return_freed_memory()  # freed activations and gathered weights leave the process
    directory = Path(directory)
    layout = _layout(directory)
    checkpoint = None
    if layout == "ovis":
        config, source = _open_ovis(directory)
        if source is None:  # a tensor transformers converts on load: rank 0 reads through from_pretrained
            layout = CONVERTED
    if layout != "ovis":
        checkpoint = _read_on_rank0(directory, layout, processes)
        config = processes.from_rank0(checkpoint.config if checkpoint is not None else None)
        source = _FromRank0(checkpoint.state if checkpoint is not None else None, processes)
    model = _build(config, dtype, zero3_config(config.llm_config.hidden_size))
    _fill(model, source, directory)
    source.close()
    if checkpoint is not None:
        logger.warning(checkpoint.message(directory))
    return _finish(model, directory, dtype)


def load_streamed(directory: str | Path, *, dtype: torch.dtype) -> OvisForCausalLM:
    """An ovis directory's model, whole, each tensor read (in pieces) straight into its parameter in
    ``dtype``. transformers' ``from_pretrained`` reads through a memory map whose pages stay resident
    while it loads: a float32 checkpoint loaded in bf16 holds the float32 file beside the bf16 model
    (three times the model's bf16 size); this holds the model alone."""
    directory = Path(directory)
    if _layout(directory) != "ovis":
        raise InputFileError(f"{directory} is not an ovis model directory (load it with ovis.load)")
    config, source = _open_ovis(directory)
    if source is None:  # a tensor transformers converts on load
        return OvisForCausalLM.from_pretrained(str(directory), dtype=dtype).eval()
    model = _build(config, dtype, None)
    _fill(model, source, directory)
    source.close()
    return _finish(model, directory, dtype)


def _layout(directory: Path) -> str:
    read_model_config(directory)  # a missing directory or a bad config.json: named before anything else
    return checkpoint_format(directory)


def _open_ovis(directory: Path) -> tuple[OvisConfig, _Source | None]:
    """An ovis directory's config and its tensors under the model's names, their shapes checked
    against the model first; no tensors (None) where transformers converts one of them on load in a
    way a slice cannot be read for (the caller loads through ``from_pretrained``)."""
    config = OvisConfig.read(directory)
    shapes = check_model_directory(directory)
    names = OvisForCausalLM.check_stored_tensors(config, shapes, directory)
    if names.converted:
        logger.warning(
            "%s: transformers converts %d of its tensors on load (e.g. %s), more than a renaming: the "
            "model is loaded whole through from_pretrained rather than a slice at a time",
            directory,
            len(names.converted),
            names.converted[0],
        )
        return config, None
    return config, _FileSlices([directory / name for name in shapes], names)


def _finish(model: OvisForCausalLM, directory: Path, dtype: torch.dtype) -> OvisForCausalLM:
    """What ``from_pretrained`` sets beside the weights: the dtype, the generation config, eval mode."""
    model.config.dtype = dtype
    if model.can_generate() and (directory / "generation_config.json").is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(directory)
    return model.eval()


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


def _build(config: OvisConfig, dtype: torch.dtype, ds_config: dict[str, Any] | None) -> OvisForCausalLM:
    """The model of ``config`` in ``dtype``, its weights allocated but never written (every one is
    loaded next: untouched, the pages of a tensor are not resident); partitioned under ZeRO-3."""
    from transformers.initialization import no_init_weights

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    partitioned = (
        _partitioning_init()(config_dict_or_path=ds_config, dtype=dtype)
        if ds_config is not None
        else contextlib.nullcontext()
    )
    # The RNG left as it was: a re-initialised block or LoRA adapters drawn after this must be those
    # a plain load would give.
    with torch.random.fork_rng(devices=devices), no_init_weights(), _default_dtype(dtype), partitioned:
        model = OvisForCausalLM(config)
    if ds_config is not None:
        # DeepSpeed converts parameters added later (LoRA adapters) through the Init that made the
        # model's: from now on their values are real and must be copied.
        partitioned.values_unset = False
    model.tie_weights()  # init_weights (which ties) was skipped above
    for param in model.parameters():
        # An LLM built from its config takes the config's dtype; its tensors are not yet written, so
        # the cast costs nothing resident but the result (zero.Init has cast them already).
        if param.is_floating_point() and param.dtype != dtype:
            param.data = torch.empty_like(param.data, dtype=dtype)
    return model


def _partitioning_init() -> type:
    """``deepspeed.zero.Init`` that gives each parameter its (empty) partition without copying the
    values it was built with: they are never initialised (``no_init_weights``) and every one is loaded
    after, so the whole tensor a module creates is never written, hence never resident, and neither
    is the partition of a parameter dropped before loading (a tied ``lm_head``). Stock DeepSpeed
    broadcasts each new parameter from rank 0 and copies the rank's slice: a whole copy of the
    biggest module in memory at once, and every partition written twice."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import OffloadDeviceEnum, PartitionedParamStatus

    class PartitionOnly(deepspeed.zero.Init):
        values_unset = True  # while the model is built; False after (see _build)

        def __init__(self, *args: Any, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
            super().__init__(*args, dtype=dtype, **kwargs)
            if dtype is not None:
                # DeepSpeed 0.19.8 sets `dtype or fp16 if fp16_supported() else bf16 if ...` without
                # brackets: where the accelerator has no fp16 (a CPU without AVX-512 FP16, such as an
                # AVX2-only EPYC) an explicit float32 became bf16 and the load was rounded.
                self.dtype = dtype

        def _zero_init_param(self, param: torch.nn.Parameter) -> None:
            if (
                not self.values_unset
                or self.remote_device == OffloadDeviceEnum.nvme
                or self.quantized_nontrainable_weights
            ):
                return super()._zero_init_param(param)  # real values, or layouts this shortcut does not know
            self._convert_to_deepspeed_param(param)
            aligned = self._aligned_size(param)
            size = aligned // self._partition_world_size(param)
            device = self.local_device if param.ds_persist else self.remote_device
            partition = torch.empty(size, dtype=param.dtype, device=device)
            partition.requires_grad = False
            partition.ds_numel = size
            partition.status = PartitionedParamStatus.AVAILABLE
            partition.final_location = None
            param.ds_tensor = partition
            param.ds_numel_aligned = aligned
            param.partition()  # a partition exists: this only frees the whole tensor
            return None

    return PartitionOnly


# -- where each partition comes from ---------------------------------------------------------------
class _Source:
    """A checkpoint's tensors, read a slice at a time; every rank calls each method in the same order."""

    def names(self) -> set[str]:
        raise NotImplementedError

    def read_into(self, name: str, start: int, numel: int, out: torch.Tensor) -> None:
        """Elements ``[start, start + len(out))`` of tensor ``name`` (``numel`` elements) flattened,
        cast to ``out``'s dtype, written into ``out``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


#: Elements read (and cast) at a time: a slice of a big embedding is read in pieces, so that neither
#: it nor its float32 form is ever in memory beside the partition it is written into.
CHUNK = 1 << 22


class _FileSlices(_Source):
    """An ovis directory's safetensors files: a slice's bytes read with plain reads (each rank its own)."""

    def __init__(self, files: list[Path], names: StoredNames | None = None) -> None:
        #: the model's name -> (the file, where its data starts, the tensor's header entry, its stored name)
        self.entries: dict[str, tuple[Any, int, dict[str, Any], str]] = {}
        self.handles = []
        names = names or StoredNames()
        for path in files:
            handle = path.open("rb")
            self.handles.append(handle)
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    self.entries[names.model_name(name)] = (handle, 8 + length, entry, name)

    def names(self) -> set[str]:
        return set(self.entries)

    def read_into(self, name: str, start: int, numel: int, out: torch.Tensor) -> None:
        handle, base, entry, name = self.entries[name]
        stored = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if stored is None:
            raise InputFileError(
                f"{handle.name}: tensor {name!r} has dtype {entry['dtype']}, which ovis does not "
                f"load (expected one of {', '.join(_SAFETENSORS_DTYPES)})"
            )
        size = torch.empty((), dtype=stored).element_size()
        first = base + int(entry["data_offsets"][0])
        for done in range(0, out.numel(), CHUNK):
            count = min(CHUNK, out.numel() - done)
            buffer = torch.empty(count * size, dtype=torch.uint8)
            handle.seek(first + (start + done) * size)
            if handle.readinto(memoryview(buffer.numpy())) != buffer.numel():
                raise InputFileError(f"{handle.name}: tensor {name!r} is cut short (a truncated file?)")
            out[done : done + count].copy_(buffer.view(stored))

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

    def read_into(self, name: str, start: int, numel: int, out: torch.Tensor) -> None:
        device = self.processes.device
        if self.state is not None:
            whole = self.state.pop(name).reshape(-1).to(device=device, dtype=out.dtype)  # dropped once sent
        else:
            whole = torch.empty(numel, dtype=out.dtype, device=device)
        if self.processes.grouped and self.processes.world_size > 1:
            dist.broadcast(whole, src=0)
        out.copy_(whole[start : start + out.numel()])


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
def _fill(model: OvisForCausalLM, source: _Source, directory: Path) -> None:
    """Copy each parameter's slice of the checkpoint into this rank's partition (the whole of it for a
    model that is not partitioned); persistent buffers (never partitioned) whole."""
    available = source.names()
    aliases: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
        params[id(param)] = param
    check_missing_weights(list(aliases.values()), available, directory)  # (a foreign checkpoint's names too)
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
            partition = getattr(param, "ds_tensor", None)
            if partition is None:  # a whole parameter
                source.read_into(name, 0, param.numel(), param.data.view(-1))
                continue
            numel, size = param.ds_numel, partition.ds_numel
            start = min(size * dist.get_rank(), numel)
            stop = min(start + size, numel)
            partition[stop - start :].zero_()  # the padding of the last partition
            source.read_into(name, start, numel, partition[: stop - start])
        parameter_names = {n for names in aliases.values() for n in names}
        for name, buffer in model.state_dict(keep_vars=True).items():
            if name in parameter_names or name not in available:
                continue
            source.read_into(name, 0, buffer.numel(), buffer.view(-1))

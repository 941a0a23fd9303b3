"""The DeepSpeed JSON of a run: a built-in (``zero2`` / ``zero3``) or a file, its ``"auto"`` values
filled from the :class:`~ovis.train.config.TrainConfig`.

A value set explicitly in the JSON that contradicts the training config (batch size, accumulation,
clipping, lr...) is a :class:`~ovis.errors.ConfigError` rather than silently winning.

On a CPU, keys the JSON leaves out get CPU defaults: torch's AdamW (``torch_adam``), and under
ZeRO-3 optimizer sub-groups of :data:`CPU_SUB_GROUP` elements (``sub_group_size``), which bound the
optimizer step's temporaries (``benchmarks/load_memory.py --train all``). torch's AdamW is asked for
its fused kernel on a CPU as on CUDA: no temporaries as large as the parameters it steps, and ~4x
faster than the plain one on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ovis.errors import ConfigError, InputFileError
from ovis.train.config import TrainConfig

#: Names ``deepspeed`` may take instead of a path (the content of ``configs/deepspeed/<name>.json``).
BUILTIN_DEEPSPEED = ("zero2", "zero3")
#: Smallest "auto" bucket (elements): hidden_size**2 alone (the usual "auto") would cut a small
#: model's gradients into thousands of tiny all-reduces.
MIN_BUCKET = 2**24
#: ZeRO-3's optimizer sub-group on a CPU (elements; a larger parameter is a sub-group alone).
CPU_SUB_GROUP = 2**24


def _zero(stage: int) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update({
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        })
    else:
        zero.update({"allgather_bucket_size": 500_000_000, "reduce_scatter": True})
    return zero


def builtin_deepspeed_config(name: str) -> dict[str, Any]:
    """``zero2`` / ``zero3``: the content of ``configs/deepspeed/<name>.json``."""
    if name not in BUILTIN_DEEPSPEED:
        raise ConfigError(f"unknown built-in DeepSpeed config {name!r}; valid: {', '.join(BUILTIN_DEEPSPEED)}")
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": False},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": "auto"},
        },
        "zero_optimization": _zero(int(name[-1])),
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def read_deepspeed_config(spec: str) -> dict[str, Any]:
    """A built-in's content, or the JSON file ``spec``."""
    if spec in BUILTIN_DEEPSPEED:
        return builtin_deepspeed_config(spec)
    path = Path(spec)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputFileError(
            f"DeepSpeed config {path} not found (give a JSON file or one of {', '.join(BUILTIN_DEEPSPEED)})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({exc})") from exc


def build_deepspeed_config(
    config: TrainConfig, *, world_size: int, hidden_size: int, on_cuda: bool, precision: str | None = None
) -> dict[str, Any]:
    """Read ``config.deepspeed`` and fill its ``"auto"`` values from ``config``.

    ``precision``: the one every rank agreed on (``auto`` probes the CPU, and probes can differ);
    default: ``config``'s own resolution.
    """
    if config.deepspeed is None:
        raise ValueError("build_deepspeed_config needs a config with deepspeed set (it is null)")
    ds = read_deepspeed_config(config.deepspeed)
    where = f"DeepSpeed config {config.deepspeed}"
    if "scheduler" in ds:
        raise ConfigError(
            f"{where}: remove its 'scheduler' section; the learning-rate schedule comes from the "
            "training config (lr_scheduler, warmup_ratio, min_lr_ratio)"
        )
    if _get(ds, "fp16.enabled") is True:
        raise ConfigError(f"{where}: fp16 is not supported; use precision: bf16")
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    ds["optimizer"].setdefault("params", {})
    checked, filled = _values(config, world_size, hidden_size, precision)
    for key, value in checked.items():
        current = _get(ds, key)
        if current is None or current == "auto":
            _set(ds, key, value)
        elif _differs(current, value):
            raise ConfigError(
                f"{where}: {key} is {current!r} but the training config gives {value!r}; "
                "set it to \"auto\" (or drop it) and set it in the training config"
            )
    for key, value in filled.items():
        if _get(ds, key) == "auto":
            _set(ds, key, value)
    params = ds["optimizer"]["params"]
    if not on_cuda:
        params.setdefault("torch_adam", True)  # a JSON without the key would compile FusedAdam for a CPU
        zero = ds.get("zero_optimization")
        if isinstance(zero, dict) and zero.get("stage") == 3:
            # DeepSpeed's step makes temporaries as large as the fp32 sub-group it steps (its
            # default: the rank's whole partition).
            zero.setdefault("sub_group_size", CPU_SUB_GROUP)
    if params.get("torch_adam") is True and ds["optimizer"].get("type", "").lower() == "adamw":
        params.setdefault("fused", True)  # torch's fused kernel exists for CPUs as for CUDA
    left = _autos(ds)
    if left:
        raise ConfigError(f"{where}: cannot fill \"auto\" for {', '.join(left)}")
    return ds


def _values(
    config: TrainConfig, world_size: int, hidden_size: int, precision: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(checked, filled)``: values that must agree with the training config where the JSON sets
    them, and values that only replace an ``"auto"``."""
    micro, accum = config.per_device_batch_size, config.gradient_accumulation_steps
    checked = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": config.max_grad_norm,
        "bf16.enabled": (precision or config.resolved_precision()) == "bf16",
        "optimizer.params.lr": config.lr,
        "optimizer.params.weight_decay": config.weight_decay,
        "optimizer.params.betas": list(config.adam_betas),
        "optimizer.params.eps": config.adam_eps,
    }
    bucket = max(hidden_size * hidden_size, MIN_BUCKET)
    filled = {
        **checked,
        "fp16.enabled": False,
        # torch's AdamW everywhere: DeepSpeed's FusedAdam is built on first use (~80 s with g++ on
        # a CPU; on CUDA it needs nvcc, which the pip CUDA wheels do not ship). On CUDA torch's own
        # fused kernel is used instead. Set "torch_adam": false explicitly for DeepSpeed's.
        "optimizer.params.torch_adam": True,
        "zero_optimization.reduce_bucket_size": bucket,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * bucket),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    return checked, filled


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) > 1e-12 * max(1.0, abs(float(b)))
    return a != b


def _autos(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _autos(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if tree == "auto" else []

"""``TrainConfig``: one training run, read from YAML plus ``key.sub=value`` overrides.

Every level forbids unknown keys, and an unknown key is reported with the valid keys at its level.
Stage-dependent defaults follow the Ovis v1 recipe (see :data:`STAGE_DEFAULTS`).

Relative paths (``model``, ``output_dir``, ``data.dataset_info``, ``deepspeed``): a path written in
the YAML file resolves against **the YAML file's directory** (a config keeps working wherever it is
run from); a path given with ``--set`` on the command line resolves against the **current
directory**, as any command-line path does. ``deepspeed`` may also be the name of a built-in
config, ``zero2`` or ``zero3`` (the same content as ``configs/deepspeed/zero{2,3}.json``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ovis.precision import resolve_precision
from ovis.train.modules import TRAIN_MODULE_TOKENS

#: Paths that resolve against the YAML file's directory (or the CWD for overrides).
PATH_KEYS = ("model", "output_dir", "data.dataset_info", "deepspeed")
BUILTIN_DEEPSPEED = ("zero2", "zero3")
#: Smallest "auto" bucket (elements): hidden_size**2 alone (the usual "auto") would cut a small
#: model's gradients into thousands of tiny all-reduces.
MIN_BUCKET = 2**24

#: Defaults per stage (Ovis v1 recipe for 1-3); any of them may be set explicitly. Stage 0 is not
#: one of the paper's: text-only pre-training of the LLM, for an LLM that does not come pretrained
#: (the quick-start's toy).
STAGE_DEFAULTS: dict[int, dict[str, Any]] = {
    0: {"train_modules": ["llm"], "reinit_last_block": False, "lr": 1e-4, "warmup_ratio": 0.05},
    1: {
        "train_modules": ["visual_tokenizer.head", "vte", "visual_tokenizer.re_init_layers"],
        "reinit_last_block": True, "lr": 1e-4, "warmup_ratio": 0.1,
    },
    2: {"train_modules": ["visual_tokenizer", "vte"], "reinit_last_block": False, "lr": 1e-4,
        "warmup_ratio": 0.1},
    3: {"train_modules": ["all"], "reinit_last_block": False, "lr": 2e-5, "warmup_ratio": 0.05},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset_info: Path | None = None
    """``dataset_info.json`` naming each dataset's meta file, image dir and format."""
    datasets: list[str] = Field(default_factory=list)
    """Names (keys of ``dataset_info``) to train on, concatenated in this order."""
    max_length: int | None = Field(default=None, gt=0)
    """Sequence limit (image blocks included); default: the model's processor's."""


class TauConfig(_Strict):
    """Gumbel temperature, annealed linearly over the run when ``tokenize_function`` is gumbel_argmax."""

    start: float = Field(default=5.0, gt=0)
    end: float = Field(default=0.05, gt=0)


class LoraOptions(_Strict):
    """LoRA adapters on the LLM only (peft), typically for stage 3."""

    enabled: bool = False
    r: int = Field(default=16, gt=0)
    alpha: int = Field(default=32, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_on_export: bool = True
    """Merge the adapters into the LLM's weights in ``final`` (else ``final`` holds the base
    weights and the adapters are saved in ``final/lora_adapter``)."""


class TrainConfig(_Strict):
    stage: Literal[0, 1, 2, 3] = 3
    """1-3: the paper's stages (their defaults: :data:`STAGE_DEFAULTS`); 0: text-only LLM pre-training."""
    model: Path
    """Input model directory: a composed model or the previous stage's ``output_dir/final``."""
    output_dir: Path
    train_modules: list[str] = Field(default_factory=lambda: ["all"])
    reinit_last_block: bool = False
    data: DataConfig = Field(default_factory=DataConfig)

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps; overrides ``epochs`` when set."""
    per_device_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    lr: float = Field(default=2e-5, ge=0)
    module_lr: dict[str, float] = Field(default_factory=dict)
    """Peak learning rates for parts of the model, by ``train_modules`` token (e.g.
    ``{visual_tokenizer: 1e-4}``, LLaVA's ``mm_projector_lr`` / ``vision_tower_lr``); the most
    specific token wins, everything else trains at ``lr``. The schedule scales them all alike."""
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0)
    lr_scheduler: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Clip the global gradient norm to this (0: no clipping)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on a GPU that supports it and on a CPU with native bf16 that a probe finds
    faster; fp32 otherwise (``ovis.precision``)."""
    gradient_checkpointing: bool = False
    deepspeed: str = "zero2"
    """A DeepSpeed JSON file, or ``zero2`` / ``zero3`` (built in). ``"auto"`` values are filled."""

    save_steps: int = Field(default=500, gt=0)
    save_total_limit: int | None = Field(default=2, gt=0)
    """Keep this many newest complete checkpoints (None: keep all)."""
    logging_steps: int = Field(default=10, gt=0)
    seed: int = 42
    num_workers: int = Field(default=0, ge=0)
    tau: TauConfig = Field(default_factory=TauConfig)
    lora: LoraOptions = Field(default_factory=LoraOptions)

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            stage = values.get("stage", 3)
            for key, value in STAGE_DEFAULTS.get(stage, {}).items():
                values.setdefault(key, value)
        return values

    @field_validator("train_modules")
    @classmethod
    def _known_tokens(cls, tokens: list[str]) -> list[str]:
        unknown = [t for t in tokens if t not in TRAIN_MODULE_TOKENS]
        if unknown:
            raise ValueError(
                f"unknown train_modules token(s) {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(TRAIN_MODULE_TOKENS)}"
            )
        if not tokens:
            raise ValueError(f"train_modules is empty; valid tokens: {', '.join(TRAIN_MODULE_TOKENS)}")
        return tokens

    @field_validator("module_lr")
    @classmethod
    def _known_lr_tokens(cls, rates: dict[str, float]) -> dict[str, float]:
        valid = [t for t in TRAIN_MODULE_TOKENS if t != "all"]
        unknown = [t for t in rates if t not in valid]
        if unknown:
            raise ValueError(f"unknown module_lr key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
        negative = {t: v for t, v in rates.items() if v < 0}
        if negative:
            raise ValueError(f"module_lr values must be >= 0, got {negative}")
        return rates

    # -- derived ---------------------------------------------------------------------------------
    def resolved_precision(self) -> Literal["bf16", "fp32"]:
        return resolve_precision(self.precision).precision

    def config_hash(self) -> str:
        """A short hash of everything that shapes the run (not where it is written or how often)."""
        skip = {"output_dir", "save_steps", "save_total_limit", "logging_steps", "num_workers"}
        data = self.model_dump(mode="json", exclude=skip)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# -- loading -------------------------------------------------------------------------------------
def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def check_keys(raw: dict[str, Any], model: type[BaseModel] = TrainConfig, prefix: str = "") -> None:
    """Raise ``ValueError`` naming the first unknown key (dotted) and listing the valid ones there."""
    for key, value in raw.items():
        _check_key(model, prefix, key)
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, f"{prefix}{key}.")


def _check_key(model: type[BaseModel], prefix: str, key: str) -> None:
    if key not in model.model_fields:
        where = f" under {prefix[:-1]!r}" if prefix else ""
        raise ValueError(
            f"unknown config key {prefix + key!r}; valid keys{where}: {', '.join(model.model_fields)}"
        )


def apply_override(raw: dict[str, Any], override: str, base_dir: Path | None = None) -> None:
    """Apply one ``key.sub=value`` (value parsed as YAML) to ``raw`` in place."""
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form key=value (e.g. lr=1e-4)")
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    value = yaml.safe_load(text) if text.strip() else None
    parts = dotted.split(".")
    model: type[BaseModel] | None = TrainConfig
    node = raw
    for depth, key in enumerate(parts):
        prefix = ".".join(parts[:depth]) + ("." if depth else "")
        if model is None:
            raise ValueError(f"config key {prefix[:-1]!r} has no sub-keys (override {override!r})")
        _check_key(model, prefix, key)
        if depth == len(parts) - 1:
            if dotted in PATH_KEYS and isinstance(value, str):
                value = _resolve_path(dotted, value, base_dir or Path.cwd())
            node[key] = value
            return
        model = _submodel(model, key)
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"config key {'.'.join(parts[: depth + 1])!r} is not a mapping")


def _resolve_path(dotted: str, value: str, base: Path) -> str:
    if dotted == "deepspeed" and value in BUILTIN_DEEPSPEED:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for dotted in PATH_KEYS:
        *parents, last = dotted.split(".")
        node: Any = raw
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = _resolve_path(dotted, node[last], base)


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read ``path`` (YAML; may be None to build from overrides alone) and apply ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"training config {path} not found") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping of config keys")
        raw = loaded or {}
        check_keys(raw)
        _resolve_paths(raw, path.resolve().parent)
    for override in overrides:
        apply_override(raw, override)
    check_keys(raw)
    return TrainConfig.model_validate(raw)


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (what ``ovis train --print-config`` shows)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# -- DeepSpeed -----------------------------------------------------------------------------------
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
        raise ValueError(f"unknown built-in DeepSpeed config {name!r}; valid: {', '.join(BUILTIN_DEEPSPEED)}")
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
    if spec in BUILTIN_DEEPSPEED:
        return builtin_deepspeed_config(spec)
    path = Path(spec)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"DeepSpeed config {path} not found (give a JSON file or one of {', '.join(BUILTIN_DEEPSPEED)})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {path}: not valid JSON ({exc})") from exc


def build_deepspeed_config(
    config: TrainConfig, *, world_size: int, hidden_size: int, on_cuda: bool, precision: str | None = None
) -> dict[str, Any]:
    """Read ``config.deepspeed`` and fill its ``"auto"`` values from ``config``.

    A value set explicitly in the JSON that contradicts the training config (batch size,
    accumulation, clipping, lr...) is an error rather than silently winning.
    """
    ds = read_deepspeed_config(config.deepspeed)
    if "scheduler" in ds:
        raise ValueError(
            f"DeepSpeed config {config.deepspeed}: remove its 'scheduler' section; the learning-rate "
            "schedule comes from the training config (lr_scheduler, warmup_ratio, min_lr_ratio)"
        )
    if _get(ds, "fp16.enabled") is True:
        raise ValueError(f"DeepSpeed config {config.deepspeed}: fp16 is not supported; use precision: bf16")
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    ds["optimizer"].setdefault("params", {})
    # ``precision``: the one every rank agreed on (``auto`` probes the CPU, and probes can differ).
    bf16 = (precision or config.resolved_precision()) == "bf16"
    micro, accum = config.per_device_batch_size, config.gradient_accumulation_steps
    checked = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": config.max_grad_norm,
        "bf16.enabled": bf16,
        "optimizer.params.lr": config.lr,
        "optimizer.params.weight_decay": config.weight_decay,
        "optimizer.params.betas": list(config.adam_betas),
        "optimizer.params.eps": config.adam_eps,
    }
    filled = {
        **checked,
        "fp16.enabled": False,
        # torch's AdamW everywhere: DeepSpeed's FusedAdam is built on first use (~80 s with g++ on
        # a CPU; on CUDA it needs nvcc, which the pip CUDA wheels do not ship). On CUDA torch's own
        # fused kernel is used instead. Set "torch_adam": false explicitly for DeepSpeed's.
        "optimizer.params.torch_adam": True,
        "zero_optimization.reduce_bucket_size": max(hidden_size * hidden_size, MIN_BUCKET),
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * max(hidden_size * hidden_size, MIN_BUCKET)),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in checked.items():
        current = _get(ds, key)
        if current is None or current == "auto":
            _set(ds, key, value)
        elif _differs(current, value):
            raise ValueError(
                f"DeepSpeed config {config.deepspeed}: {key} is {current!r} but the training config "
                f"gives {value!r}; set it to \"auto\" (or drop it) and set it in the training config"
            )
    for key, value in filled.items():
        if _get(ds, key) == "auto":
            _set(ds, key, value)
    params = ds["optimizer"]["params"]
    if not on_cuda:
        params.setdefault("torch_adam", True)  # a JSON without the key would compile FusedAdam for a CPU
    if on_cuda and params.get("torch_adam") is True and ds["optimizer"].get("type", "").lower() == "adamw":
        params.setdefault("fused", True)
    left = _autos(ds)
    if left:
        raise ValueError(f"DeepSpeed config {config.deepspeed}: cannot fill \"auto\" for {', '.join(left)}")
    return ds


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

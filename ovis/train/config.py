"""``TrainConfig``: the schema of one training run, every key of a training YAML with its type,
default and meaning.

This module is the schema only. Reading a YAML file plus ``key.sub=value`` overrides lives in
:mod:`ovis.train.loading`, filling a DeepSpeed JSON from a config in
:mod:`ovis.train.deepspeed_config`; ``docs/training-config.md`` is generated from the fields here
(``python -m ovis.train.docs``). Every level forbids unknown keys. Stage-dependent defaults follow
the Ovis v1 recipe (:data:`STAGE_DEFAULTS`).
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ovis.precision import resolve_precision

#: What ``train_modules`` (and ``module_lr``) may name: ``all``, the LLM, or parts of the visual path.
TRAIN_MODULE_TOKENS = (
    "all",
    "llm",
    "visual_tokenizer",
    "visual_tokenizer.backbone",
    "visual_tokenizer.re_init_layers",
    "visual_tokenizer.head",
    "vte",
)

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

#: Fields holding paths: written in a YAML file they resolve against its directory, given with
#: ``--set`` against the current directory (:mod:`ovis.train.loading`).
PATH_KEYS = ("model", "output_dir", "data.dataset_info", "deepspeed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, values: Any) -> Any:
        # pydantic reads true as 1; YAML reads yes / no / on / off as booleans: `save_steps: yes` is a slip.
        if isinstance(values, dict):
            for name, value in values.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(
                        f"{name} is {value!r}, a boolean (YAML reads yes / no / on / off / true / false so); "
                        "expected a number"
                    )
        return values


def _numeric(annotation: Any) -> bool:
    """Whether a field takes a number and not a boolean (``int``, ``float``, either or None)."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (
        annotation,
    )
    kinds = [a for a in options if a is not type(None)]
    return bool(kinds) and all(a in (int, float) for a in kinds)


class DataConfig(_Strict):
    """What to train on."""

    dataset_info: Path | None = Field(
        default=None,
        description="`dataset_info.json` naming each dataset's meta file, image directory and format "
        "(the original Ovis schema).",
    )
    datasets: list[str] = Field(
        default_factory=list,
        description="Names (keys of `dataset_info`) to train on, concatenated in this order; each once.",
    )

    @field_validator("datasets")
    @classmethod
    def _each_once(cls, names: list[str]) -> list[str]:
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(
                f"{', '.join(map(repr, twice))} named more than once: the data would be read twice over; "
                "name each dataset once"
            )
        return names
    max_length: int | None = Field(
        default=None, gt=0,
        description="Sequence limit in tokens, image blocks included; null: the model's processor's.",
    )
    packing: bool = Field(
        default=False,
        description="Pack each micro-batch's samples into as few rows as fit (first-fit decreasing; rows "
        "no longer than the micro-batch's longest sample, or up to `max_length` with `flash_attention_2`), "
        "each sample with its own position ids and attention that never crosses a sample boundary "
        "(flash-attention varlen on a GPU, a block-diagonal mask otherwise); image blocks stay whole, "
        "labels and the loss are unchanged. Less padding, fewer rows (see Packing above).",
    )


class TauConfig(_Strict):
    """Gumbel temperature, annealed linearly over the run when ``tokenize_function`` is gumbel_argmax."""

    start: float = Field(default=5.0, gt=0, description="Temperature at the first step.")
    end: float = Field(default=0.05, gt=0, description="Temperature at the last step (and in the exported model).")


class LoraOptions(_Strict):
    """LoRA adapters on the LLM only (peft), typically for stage 3."""

    enabled: bool = Field(default=False, description="Train LoRA adapters instead of the LLM's own weights.")
    r: int = Field(default=16, gt=0, description="Rank of the adapters.")
    alpha: int = Field(default=32, gt=0, description="LoRA alpha (the adapters are scaled by `alpha / r`).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the LLM's linear layers that get adapters.",
    )
    merge_on_export: bool = Field(
        default=True,
        description="Merge the adapters into the LLM's weights in `final` (else `final` holds the base "
        "weights and the adapters are saved in `final/lora_adapter`).",
    )


class TrainConfig(_Strict):
    """One training stage: the input model, what trains, the data, the optimizer and schedule, and
    where checkpoints and the exported model go."""

    stage: Literal[0, 1, 2, 3] = Field(
        default=3,
        description="1-3: the paper's stages (they set the stage defaults of `train_modules`, "
        "`reinit_last_block`, `lr` and `warmup_ratio`); 0: text-only pre-training of the LLM.",
    )
    model: Path = Field(
        description="Input model directory: a composed model or the previous stage's `output_dir/final`.",
    )
    output_dir: Path = Field(
        description="Where the run writes `checkpoints/`, `metrics.jsonl`, `tensorboard/`, "
        "`train_config.yaml`, `skips.json` (the records left out) and the exported model `final/`.",
    )
    train_modules: list[str] = Field(
        default_factory=lambda: ["all"],
        description=f"The parts that train (everything else is frozen); tokens: {', '.join(TRAIN_MODULE_TOKENS)}.",
    )
    reinit_last_block: bool = Field(
        default=False, description="Re-initialise the vision encoder's last block before training (stage 1).",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="What to train on (the `data.*` keys).")

    epochs: float = Field(default=1.0, gt=0, description="Passes over the data (fractions allowed).")
    max_steps: int | None = Field(
        default=None, gt=0, description="Optimizer steps; overrides `epochs` when set.",
    )
    per_device_batch_size: int = Field(default=8, gt=0, description="Samples per micro-batch per process.")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Micro-batches per optimizer step.",
    )
    lr: float = Field(default=2e-5, ge=0, description="Peak learning rate (AdamW).")
    module_lr: dict[str, float] = Field(
        default_factory=dict,
        description="Peak learning rates for parts of the model, by `train_modules` token (e.g. "
        "`{visual_tokenizer: 1e-4}`, LLaVA's `mm_projector_lr` / `vision_tower_lr`); the most specific "
        "token wins, everything else trains at `lr`. The schedule scales them all alike.",
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0, le=1, description="Fraction of the steps with a linear warmup of the learning rate.",
    )
    weight_decay: float = Field(
        default=0.0, ge=0, description="AdamW weight decay (matrices only; norms and biases get none).",
    )
    optimizer: Literal["adamw", "muon"] = Field(
        default="adamw",
        description="`muon`: torch's Muon (momentum orthogonalised by Newton-Schulz) for the hidden "
        "matrices (the LLM's and the ViT's attention and MLP weights, the visual head), at `muon_lr`; "
        "AdamW at `lr` for the rest (embedding tables, the VTE, the LM head, norms, biases, "
        "convolutions). In the PyTorch engine only (`deepspeed: null`).",
    )
    muon_lr: float = Field(
        default=0.02, gt=0,
        description="Peak learning rate of the Muon matrices (`optimizer: muon`); a `module_lr` part's "
        "matrices get it in the same ratio to `lr` as the part's own rate, and the schedule scales it.",
    )
    adam_betas: tuple[float, float] = Field(default=(0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon.")
    lr_scheduler: Literal["cosine", "constant", "linear"] = Field(
        default="cosine", description="Decay after the warmup, to `min_lr_ratio * lr` at the last step.",
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Learning rate at the last step, as a fraction of the peak.",
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0, description="Clip the global gradient norm to this (0: no clipping).",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="`auto`: bf16 on a GPU that supports it and on a CPU with native bf16 that a probe "
        "finds faster; fp32 otherwise (`ovis.precision`).",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass (less memory, more time).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        default="auto",
        description="The LLM's attention while training. `auto`: `flash_attention_2` on a GPU where the "
        "`flash-attn` package is installed (packed rows then run as one varlen sequence), else the "
        "model's own (`sdpa`); `flash_attention_2` asked for without a GPU or the package is refused.",
    )
    deepspeed: str | None = Field(
        default="zero2",
        description="A DeepSpeed JSON file, or `zero2` / `zero3` (built in; `\"auto\"` values are filled "
        "from this config); null: one process without DeepSpeed (a plain PyTorch loop, same optimizer, "
        "schedule, precision and checkpoints).",
    )

    save_steps: int = Field(default=500, gt=0, description="Save a resumable checkpoint every this many steps.")
    save_total_limit: int | None = Field(
        default=2, gt=0, description="Keep this many newest complete checkpoints (null: keep all).",
    )
    logging_steps: int = Field(
        default=10, gt=0, description="Log averaged metrics (and tensorboard scalars) every this many steps.",
    )
    seed: int = Field(default=42, description="Seeds the data order, re-initialisation, LoRA and noise.")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes (0: load in the trainer).")
    tau: TauConfig = Field(default_factory=TauConfig, description="Gumbel temperature schedule (the `tau.*` keys).")
    lora: LoraOptions = Field(default_factory=LoraOptions, description="LoRA on the LLM (the `lora.*` keys).")

    @model_validator(mode="before")
    @classmethod
    def _stage_defaults(cls, values: Any) -> Any:
        if isinstance(values, dict):
            stage = values.get("stage", 3)
            for key, value in STAGE_DEFAULTS.get(stage, {}).items():
                values.setdefault(key, value)
        return values

    @field_validator("output_dir")
    @classmethod
    def _a_directory(cls, path: Path) -> Path:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; output_dir is a directory (the run writes several files into it)")
        return path

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

    @model_validator(mode="after")
    def _muon_engine(self) -> TrainConfig:
        if self.optimizer == "muon" and self.deepspeed is not None:
            raise ValueError(
                f"optimizer: muon runs in the PyTorch engine; set deepspeed: null (got deepspeed: {self.deepspeed})"
            )
        return self

    # -- derived ---------------------------------------------------------------------------------
    def resolved_precision(self) -> Literal["bf16", "fp32"]:
        return resolve_precision(self.precision).precision

    def config_hash(self) -> str:
        """A short hash of everything that shapes the run (not where it is written or how often)."""
        skip = {"output_dir", "save_steps", "save_total_limit", "logging_steps", "num_workers"}
        data = self.model_dump(mode="json", exclude=skip)
        if not self.data.packing:  # absent when off, so runs from before the key still resume
            del data["data"]["packing"]
        if self.optimizer == "adamw":  # likewise for runs from before the optimizer keys
            del data["optimizer"], data["muon_lr"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

"""``docs/training-config.md``, generated from the :class:`~ovis.train.config.TrainConfig` schema.

Every key (dotted for the nested ones), its type, default (per stage where the stage sets it) and
``Field(description=...)``, so the reference cannot drift from the code::

    python -m ovis.train.docs                # print it
    python -m ovis.train.docs --write        # rewrite docs/training-config.md
    python -m ovis.train.docs --check        # exit 1 if the file differs (tests/test_train_config.py)
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ovis.generated_docs import reference_main
from ovis.train.config import STAGE_DEFAULTS, TrainConfig

#: Where the generated file lives in the repository.
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "training-config.md"

_INTRO = """\
# Training configuration

<!-- Generated from ovis/train/config.py by `python -m ovis.train.docs --write`; edit the Field
descriptions there, not this file: tests/test_train_config.py fails when the two differ. -->

Every key `ovis train --config FILE.yaml` accepts, with its type, default and meaning. A key can
also be given (or replaced) on the command line with `--set key=value` (`--set data.datasets=[a,b]`,
the value read as YAML), and `ovis train --config FILE.yaml --print-config` shows the resolved
config. An unknown key, or a value of the wrong type or range, stops `ovis train` with one line
naming the file and the key.

Paths (`model`, `output_dir`, `data.dataset_info`, `deepspeed`) written in the YAML file resolve
against the YAML file's directory; paths given with `--set` resolve against the current directory.

`deepspeed: null` trains in one process without DeepSpeed: a plain PyTorch loop with the same
optimizer (torch's AdamW), parameter groups, learning-rate schedule, clipping, precision (bf16 under
`torch.autocast`, fp32 master weights) and resumable checkpoints. It alone also offers
`optimizer: muon` (torch's Muon on the hidden matrices at `muon_lr`, AdamW on the rest; the
quick-start's choice: benchmarks/README.md); DeepSpeed's own Muon picks its matrices by parameter
name and would give the VTE to Muon, so it is not wired. A checkpoint resumes only with the
engine that wrote it, on any number of ranks: a DeepSpeed checkpoint written by N ranks resumes on
M through DeepSpeed's universal checkpoint, with the same global batch (a different one is refused,
naming the `gradient_accumulation_steps` that keeps it) and the epoch continued at its first unread
sample ([multi-node.md](multi-node.md)). A bf16 run resumed on as many ranks continues as if never
stopped: the checkpoint holds the fp32 weights (DeepSpeed's fp32 master weights), so the resumed steps
repeat the uninterrupted run's bit for bit on the CPU (`tests/test_resume_bf16.py`, PyTorch and ZeRO-2).

Checkpoints (`output_dir/checkpoints/step-N`) record every file's size and sha256 in
`manifest.json`, written (with every file flushed to disk) before the `COMPLETE` marker. `--resume`
verifies the newest complete checkpoint against it; a damaged one is named in a warning and the
newest one that verifies is used instead (a checkpoint without a manifest, from an older ovis, is
used unverified). `metrics.jsonl` and the tensorboard logs are cut back to the resumed step, so each
step is reported once. RNG state is saved as plain tensors and loaded with `weights_only=True`, and
the PyTorch engine's state likewise; DeepSpeed loads its own engine state with pickle, so resume a
DeepSpeed run only from checkpoints that come from a trusted source.

What a run refuses rather than lose: an `output_dir` holding checkpoints (pass `--resume`, or choose
another), or an earlier run's `final/` or `metrics.jsonl` with no checkpoint to resume from (their
checkpoints pruned or deleted: a new run would overwrite the exported model); an `output_dir` that
is a file. A step whose loss is NaN or infinite stops the run (`TrainingDiverged`) before that step
is checkpointed or exported, naming the step, its learning rate and the newest checkpoint (which may
already hold the update that diverged); its `sample_ids` are in `metrics.jsonl`.

Data checks: before the model loads or DeepSpeed starts, `ovis train` checks the data the config
names: each name in `data.datasets` must be an entry of `data.dataset_info` that is itself valid
(a broken entry, or a name or field given twice, is refused only when a run names it), its meta file
must be readable JSON / JSONL / parquet, and every image file its records name must exist (checked
with a `stat`, not decoded). A record that is malformed, lacks a field its layout requires, or names
a missing image is skipped, counted and named (with its line, for JSONL); a dataset none of whose
records is usable, a missing meta file or image directory stops the run with one line naming the
file, the record and the field. Images that turn out corrupt, truncated or too large when a sample
is encoded are skipped and counted too. A micro-batch whose samples were all skipped takes no part
in an optimizer step (the step takes the next micro-batch; checkpoints record the data position, so
a resumed run reads the same samples). At the end of a run, and of one that fails or is
interrupted, one total of the skipped records (by reason, with examples and the number of skipped
sample reads) is logged and written to `output_dir/skips.json`.

Memory at load: under ZeRO-3 (`deepspeed: zero3`, or a JSON file with stage 3) every rank builds the
model already partitioned (`deepspeed.zero.Init`) and reads, from an ovis directory (a composed
model or a stage's `final`), only its own slice of each tensor: no rank ever holds the whole model,
about 1/N of it per rank plus a small read buffer. A foreign checkpoint (v1, hf-ovis2, an Ovis2
release) is translated by rank 0, which holds it while the others receive their slices; `ovis
convert` it once to avoid that. ZeRO-2, one process and `deepspeed: null` load an ovis directory
whole, each tensor read straight into the training dtype (no float32 copy beside a bf16 model).

Memory while training under ZeRO-3: DeepSpeed gathers each module's parameters whole while it runs,
and the token embedding / LM head (one `[vocab, hidden]` matrix when tied) is the largest of them:
Qwen's 152K words at width 2048 are 311M parameters, 0.62 GB in bf16 on every rank at once. Where
that matrix is frozen (stages 1 and 2, or LoRA) and there is more than one rank, the lookup and the
loss use it over each rank's own rows instead (`ovis.train.vocab_parallel`): the ranks exchange
their tokens' ids and hidden states (a few MB), never the matrix, in chunks that bound the
`[tokens, rows]` scores; results equal the gathered path's (the lookup to the bit, the loss and its
gradient to float32 rounding). A matrix that trains (stage 3 without LoRA) is gathered as before: its
gradient has to reach DeepSpeed's partitioned buffers, which only its own hooks fill.
The LLM's frozen Linear layers likewise run over each rank's own rows (`ovis.train.frozen_linears`)
in steps short enough for that to move fewer elements than gathering their weights: every rank
all-gathers the step's tokens, computes its rows' outputs, and an all-to-all returns each rank its
own tokens' outputs. A layer over its rows is never gathered, and nothing of it is kept for the
backward pass (under gradient checkpointing DeepSpeed keeps a recomputed layer's frozen weights
gathered until its backward pass ends). In longer steps (`world * tokens * in + tokens * out` above
`in * out`, as with long packed rows on GPUs) DeepSpeed gathers them, with its prefetching; every
rank takes the same choice each step, from the longest micro-batch. Llama-3-8B on 8 ranks, for
instance, runs k/v over the rows up to 124 tokens per rank, q/o up to 455, down 494, gate/up 1,246.
`benchmarks/load_memory.py` measures the peak per rank.

Packing (`data.packing: true`): each micro-batch's samples are packed into as few rows as fit
(first-fit decreasing) instead of each sample padded to the longest. Without flash-attention a row
grows only as long as the micro-batch's longest sample: a masked attention costs the square of the
row's length, so rows of `data.max_length` filled with short samples would cost more than padding
(measured on the CPU by `benchmarks/packing.py`), while rows no longer than the padded ones never
cost more. With `flash_attention_2` rows grow up to `data.max_length` (the varlen kernel's cost does
not grow with the row). A sample longer than `data.max_length` keeps a row of its own, as in a
padded batch. Every sample gets position ids from 0 and attends only to itself: the LLM gets
`position_ids` and no attention mask, from which transformers builds the block-diagonal causal
mask on the CPU (Gemma 2's sliding window included), and with `flash_attention_2` on a GPU
(`attn_implementation: auto` takes it where `flash-attn` is installed) the rows are flattened into
one and the samples' boundaries (`cu_seq_lens_q/k`, `max_length_q/k`) go to the varlen kernel
(tested on the CPU through a stand-in kernel; the GPU test in `tests/test_packing.py` has not run
on a GPU yet). Samples move whole, so an image block never splits and the images keep their order;
labels are unchanged, and the loss leaves out the target at each sample's first token (it would be
predicted from the previous sample), so the loss and gradients equal those of the same samples
padded (`tests/test_packing.py`, float32, 1e-5). Under ZeRO-3, on one rank and on two, a packed run
trains as the padded one (losses to 1e-5, weights to 1e-3) and each rank packs exactly the samples of
its own data order, none dropped or read twice (`tests/test_packing_ranks.py`).
Steps, samples, labelled tokens and skips are counted as without packing; the config hash changes
only when packing is on. `python benchmarks/packing.py` measures the padding fraction and training
tokens/s packed vs padded (`benchmarks/README.md`).
"""


def render() -> str:
    """The whole Markdown reference."""
    sections = [_INTRO, *_sections(TrainConfig, "")]
    return "\n".join(sections)


def _sections(model: type[BaseModel], prefix: str) -> list[str]:
    title = f"`{prefix[:-1]}`" if prefix else "Top level"
    lines = [f"## {title}", "", _doc(model), "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
    nested: list[str] = []
    for name, field in model.model_fields.items():
        if field.description is None:
            raise ValueError(f"{model.__name__}.{name} has no Field(description=...)")
        sub = _submodel(field.annotation)
        key = f"{prefix}{name}"
        default = "see below" if sub else _default(field, name if not prefix else None)
        lines.append(f"| `{key}` | {_type(field)} | {default} | {_cell(field.description)} |")
        if sub is not None:
            nested += _sections(sub, f"{key}.")
    return ["\n".join(lines) + "\n", *nested]


def _doc(model: type[BaseModel]) -> str:
    """The model's docstring on one line, its ``literals`` as Markdown code spans."""
    return " ".join((model.__doc__ or "").split()).replace("``", "`")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _type(field: FieldInfo) -> str:
    text = _annotation(field.annotation)
    bounds = {annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", ">="),
              annotated_types.Lt: ("lt", "<"), annotated_types.Le: ("le", "<=")}
    for item in field.metadata:
        for kind, (attribute, sign) in bounds.items():
            if isinstance(item, kind):
                text += f", {sign} {getattr(item, attribute)}"
    return _cell(text)


def _annotation(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        parts = [_annotation(arg) for arg in args if arg is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_annotation(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_annotation(arg) for arg in args) + "]"
    if origin is dict:
        return f"mapping of {_annotation(args[0])} to {_annotation(args[1])}"
    if _submodel(annotation) is not None:
        return "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo, top_level_name: str | None) -> str:
    per_stage = {stage: values[top_level_name] for stage, values in STAGE_DEFAULTS.items()
                 if top_level_name in values}
    if per_stage:
        return "by stage: " + ", ".join(f"{stage}: {_yaml(value)}" for stage, value in per_stage.items())
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    return _yaml(value)


def _yaml(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    return reference_main(argv, prog="python -m ovis.train.docs", what="training config reference", render=render,
                          regenerate="python -m ovis.train.docs --write", default_path=DOC_PATH)


if __name__ == "__main__":
    sys.exit(main())

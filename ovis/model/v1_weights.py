"""The weights of an original Ovis v1 checkpoint: find the shards, read them, check them against
the model the translated config builds (key names are ovis's own; only the CLIP tower may need a
layout change, :mod:`ovis.model.vit_layouts`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ovis.model.v1_format import (
    _BACKBONE_PREFIX,
    _SHARD,
    _STALE_BUFFERS,
    BIN_INDEX,
    BIN_NAME,
    SAFE_INDEX,
    SAFE_NAME,
    ConversionError,
    MissingShardError,
    ShapeMismatchError,
    read_json,
)


@dataclass
class WeightFiles:
    files: list[Path]
    weight_map: dict[str, str] | None  # from an index file
    index: Path | None

    def describe(self) -> str:
        kinds = {p.suffix for p in self.files}
        kind = "safetensors" if kinds == {".safetensors"} else "bin"
        return f"{len(self.files)} {kind} file(s)" + (f" ({self.index.name})" if self.index else "")


def find_weight_files(directory: str | Path) -> WeightFiles:
    """The weight files of a checkpoint directory: an index and its shards, or a single file, or
    shards named ``*-0000i-of-0000N.*`` (every number must be present)."""
    directory = Path(directory)
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = directory / index_name
        if index.is_file():
            data = read_json(index, "the weight index")
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index}: no weight_map")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise MissingShardError(
                    f"{directory}: {len(missing)} of the {len(names)} weight shard(s) listed in {index_name} "
                    f"{'is' if len(missing) == 1 else 'are'} missing: {', '.join(missing)}"
                )
            return WeightFiles([directory / n for n in names], weight_map, index)
    for single in (SAFE_NAME, BIN_NAME):
        if (directory / single).is_file():
            return WeightFiles([directory / single], None, None)
    shards: dict[tuple[str, str, int], dict[int, Path]] = {}
    for path in directory.iterdir():
        match = _SHARD.match(path.name)
        if match:
            stem, number, total, ext = match.groups()
            shards.setdefault((stem, ext, int(total)), {})[int(number)] = path
    if not shards:
        raise MissingShardError(
            f"{directory}: no weights found (expected {SAFE_NAME}, {SAFE_INDEX}, {BIN_NAME} or {BIN_INDEX})"
        )
    (stem, ext, total), found = sorted(shards.items(), key=lambda item: item[0][1] != "safetensors")[0]
    missing = [f"{stem}-{i:05d}-of-{total:05d}.{ext}" for i in range(1, total + 1) if i not in found]
    if missing:
        raise MissingShardError(
            f"{directory}: {len(missing)} of {total} weight shard(s) missing: {', '.join(missing)} (and no index file)"
        )
    return WeightFiles([found[i] for i in sorted(found)], None, None)


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file (mmap needs one); read it whole
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{path}: {_unreadable(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: not a state dict of tensors")
    return state


def _unreadable(exc: Exception) -> str:
    """Why a weight file could not be read, in one line (torch's own messages run to a dozen)."""
    text = str(exc)
    planted = re.search(r"GLOBAL ([\w.]+)", text)
    if planted:
        return (f"holds Python objects, not only tensors (it would call {planted.group(1)}); refused: pickle "
                "weights load with weights_only=True, which never runs code. If the file comes from a source "
                "you trust, load it there and save it as safetensors")
    return f"could not read the weights: corrupt, truncated or not a weight file ({type(exc).__name__}: {_gist(text)})"


#: openings of torch's explanatory lines around the reason in a failed weights_only load
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch",
                "(1)", "(2)", "WeightsUnpickler error")


def _gist(text: str) -> str:
    """The first sentence of the first line of ``text`` that is not torch's boilerplate."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(_BOILERPLATE)), lines[0] if lines else "")
    return reason.split(". ")[0][:200]


def read_state_dict(directory: str | Path) -> tuple[dict[str, torch.Tensor], WeightFiles]:
    """All tensors of a checkpoint directory (``.bin`` loaded with ``weights_only=True``)."""
    found = find_weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for path in found.files:
        part = _load_file(path)
        twice = [k for k in part if k in state]
        if twice:
            raise ConversionError(f"{path}: tensor {twice[0]!r} is also in another shard")
        if found.weight_map is not None:
            listed = [k for k, name in found.weight_map.items() if name == path.name and k not in part]
            if listed:
                raise MissingShardError(
                    f"{path}: {len(listed)} tensor(s) that {found.index.name} places in this shard are not in it, "
                    f"e.g. {listed[0]!r} (a truncated or replaced shard?)"
                )
        state.update(part)
    return state, found


def _aliases(model: torch.nn.Module) -> dict[str, set[str]]:
    """Parameter names that share a tensor (tied weights): each name -> the other names."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return {n: set(names) - {n} for names in groups.values() if len(names) > 1 for n in names}


def _hint(key: str) -> str:
    if key == "vte.weight":
        return " (visual_tokenizer_config.vocab_size x llm hidden_size)"
    if key.startswith("visual_tokenizer.head."):
        return " (visual_tokenizer_config.vocab_size - 2 with indicators; the backbone width)"
    if key.startswith(_BACKBONE_PREFIX):
        return " (visual_tokenizer_config.backbone_config)"
    if key.startswith("llm."):
        return " (llm_config)"
    return ""


def check_state_dict(
    state: dict[str, torch.Tensor], model: torch.nn.Module, source: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check ``state`` against ``model`` (any device, ``meta`` included): every key present, no key
    unknown, every shape equal. Returns the state (stale buffers dropped) and notes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    aliases = _aliases(model)
    notes = []
    stale = [k for k in state if k not in expected and k.endswith(_STALE_BUFFERS)]
    if stale:
        state = {k: v for k, v in state.items() if k not in stale}
        notes.append(f"dropped {len(stale)} buffer(s) that current transformers recomputes, e.g. {stale[0]}")
    wrong = [(k, tuple(v.shape), expected[k]) for k, v in state.items()
             if k in expected and tuple(v.shape) != expected[k]]
    if wrong:
        shown = "; ".join(f"{k}: checkpoint {got} vs config {want}{_hint(k)}" for k, got, want in wrong[:4])
        more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
        raise ShapeMismatchError(
            f"{source}: {len(wrong)} tensor shape(s) do not match what config.json describes: {shown}{more}"
        )
    missing = [k for k in expected if k not in state and not (aliases.get(k, set()) & state.keys())]
    unknown = [k for k in state if k not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) the config needs are missing, e.g. {', '.join(missing[:3])}")
        if unknown:
            parts.append(f"{len(unknown)} tensor(s) are not part of the architecture, e.g. {', '.join(unknown[:3])}")
        raise ShapeMismatchError(f"{source}: the weights do not match config.json: {'; '.join(parts)}")
    return state, notes


def state_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


@dataclass
class ForeignCheckpoint:
    """A directory in another layout read and checked: the OvisConfig, the state dict under ovis's
    names, and what was mapped. Each layout's subclass says what it is and its ``--from`` name."""

    described: ClassVar[str] = "a checkpoint in another layout"
    source_format: ClassVar[str] = ""

    config: Any  # OvisConfig
    state: dict[str, torch.Tensor]
    translation: Any  # the layout's translation of its config
    notes: list[str]

    def message(self, directory: str | Path) -> str:
        lines = "\n".join(f"  - {note}" for note in self.notes)
        return (
            f"{directory} is {self.described}; converted on load. Mapped:\n{lines}\n"
            f"To keep it in ovis format: ovis convert --from {self.source_format} {directory} --out DIR"
        )


class OriginalCheckpoint(ForeignCheckpoint):
    """An original Ovis v1 directory read and checked."""

    described = "an original Ovis v1 checkpoint"
    source_format = "original"

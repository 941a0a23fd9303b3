"""Write an ovis model in the original Ovis v1 layout (config, preprocessor config, weight shards
and, optionally, the release's modelling code), so that v1 code and tools read it."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from ovis.errors import ConfigError
from ovis.fsutil import atomic_directory, check_output_dir
from ovis.interfaces import ImagePreprocessSpec
from ovis.model.v1_format import (
    _BACKBONE_PREFIX,
    _RESAMPLE_ID,
    AUTO_MAP,
    BACKBONE_TYPE,
    BIN_INDEX,
    CONFIG_FILE,
    ORIGINAL_ARCHITECTURES,
    PREPROCESSOR_FILE,
    SAFE_INDEX,
    VISUAL_TOKENIZER_TYPE,
    ConversionError,
    UnsupportedError,
)
from ovis.model.vit_layouts import ViTLayoutError, clip_vision_config, convert_vit_state_dict, layout_of


def parse_size(value: int | str) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1000`` -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"shard size {value!r}: expected a number of bytes or e.g. 5GB, 500MB, 2GiB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    size = int(number * base**power)
    if size <= 0:
        raise ConfigError(f"shard size {value!r} must be positive")
    return size


def legacy_llm_config(llm_config) -> dict:
    """The LLM config as a dict that transformers 4.x (what v1 tools run) reads the same way:
    ``rope_theta`` / ``rope_scaling`` next to transformers 5's ``rope_parameters``, ``torch_dtype``."""
    data = llm_config.to_dict()
    rope = data.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        data.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") == "default":
            data.setdefault("rope_scaling", None)
        else:
            scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
            scaling.setdefault("type", scaling.get("rope_type"))
            data.setdefault("rope_scaling", scaling)
    if data.get("dtype") is not None:
        data.setdefault("torch_dtype", str(data["dtype"]).removeprefix("torch."))
    return data


def original_config(model, chat_format=None) -> dict:
    """The v1 ``config.json`` of an ovis model (its chat format must have a v1 formatter class)."""
    config = model.config
    if config.adapter != "structural":
        raise UnsupportedError(f"adapter {config.adapter!r}: the Ovis v1 format only holds the structural adapter")
    try:
        backbone = {**clip_vision_config(model.backbone), "model_type": BACKBONE_TYPE}
    except ViTLayoutError as exc:
        raise UnsupportedError(f"the Ovis v1 format holds a CLIP vision tower only: {exc}") from exc
    backbone["architectures"] = ["CLIPVisionModel"]
    formatter = config.conversation_formatter_class or getattr(chat_format, "v1_formatter_class", None)
    if not formatter:
        name = getattr(chat_format, "name", None) or config.chat_format
        raise UnsupportedError(
            f"chat format {name!r} has no Ovis v1 conversation_formatter_class, so v1 tools could not render its "
            "prompts; the v1 format supports chat formats with one (e.g. llama3, chatml)"
        )
    return remote_code_config(
        model,
        formatter,
        VISUAL_TOKENIZER_TYPE,
        use_indicators=config.use_indicators,
        drop_cls_token=True,
        backbone_config=backbone,
        hidden_stride=1,
    )


def remote_code_config(model, formatter: str, tokenizer_type: str, **tokenizer_fields) -> dict:
    """The ``config.json`` of the remote-code ``Ovis`` class, whose top level v1 and the Ovis2 release
    share: ``tokenizer_type`` and ``tokenizer_fields`` complete its ``visual_tokenizer_config``."""
    import transformers

    config = model.config
    return {
        "architectures": list(ORIGINAL_ARCHITECTURES),
        "auto_map": dict(AUTO_MAP),
        "model_type": "ovis",
        "conversation_formatter_class": formatter,
        "hidden_size": config.llm_config.hidden_size,
        "multimodal_max_length": config.multimodal_max_length,
        "llm_config": legacy_llm_config(config.llm_config),
        "visual_tokenizer_config": {
            "model_type": tokenizer_type,
            "vocab_size": config.visual_vocab_size,
            "tokenize_function": config.tokenize_function,
            "tau": config.tau,
            "depths": None,
            **tokenizer_fields,
        },
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
    }


def original_preprocessor_config(spec: ImagePreprocessSpec) -> dict:
    """A ``CLIPImageProcessor`` config for v1's preprocessing (it resizes and pads itself)."""
    if spec.resize != "pad":
        raise UnsupportedError(
            f"image preprocessing resize={spec.resize!r}: Ovis v1 always resizes the long side and pads ('pad')"
        )
    return {
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
        "do_center_crop": False,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(spec.mean),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(spec.std),
        "resample": _RESAMPLE_ID[spec.interpolation],
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": spec.image_size},
    }


def original_state_dict(model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's state dict with the vision tower in the transformers CLIP layout."""
    state = model.state_dict()
    try:
        layout = layout_of(model.backbone)
    except ViTLayoutError as exc:
        raise UnsupportedError(f"the Ovis v1 format holds a CLIP vision tower only: {exc}") from exc
    if layout == "hf":
        return state, []
    tower = {k[len(_BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(_BACKBONE_PREFIX)}
    converted = convert_vit_state_dict(tower, layout, "hf")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(_BACKBONE_PREFIX):
            out[key] = value
        elif not any(k.startswith(_BACKBONE_PREFIX) for k in out):
            out.update({_BACKBONE_PREFIX + k: v for k, v in converted.state.items()})
    notes = [f"vision tower converted from the {layout} layout to transformers CLIP names (fused q/k/v split)"]
    if converted.dropped:
        notes.append(f"not in the v1 layout (unused by the features), dropped: {', '.join(converted.dropped)}")
    return out, notes


def _standalone(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor that owns exactly its bytes (torch.save writes a view's whole storage)."""
    tensor = tensor.detach()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def write_weights(
    state: Mapping[str, torch.Tensor], directory: Path, *, max_shard_size: int | str = "5GB", safetensors: bool = False
) -> list[str]:
    """Write ``state`` as v1 does (``pytorch_model-0000i-of-0000N.bin`` + index, or one file);
    ``safetensors=True`` writes ``model-*.safetensors`` instead. Returns the file names."""
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    total = len(shards)
    stem, ext = ("model", "safetensors") if safetensors else ("pytorch_model", "bin")
    names = [f"{stem}.{ext}"] if total == 1 else [f"{stem}-{i:05d}-of-{total:05d}.{ext}" for i in range(1, total + 1)]
    seen: set[int] = set()
    for name, shard in zip(names, shards, strict=True):
        tensors = {}
        for key, tensor in shard.items():
            tensor = _standalone(tensor)
            if safetensors:  # safetensors refuses tensors sharing memory (tied weights): copy the repeats
                pointer = tensor.untyped_storage().data_ptr()
                if pointer in seen:
                    tensor = tensor.clone()
                seen.add(pointer)
            tensors[key] = tensor
        if safetensors:
            from safetensors.torch import save_file

            save_file(tensors, str(directory / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / name)
    if total > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for name, shard in zip(names, shards, strict=True) for key in shard},
        }
        (directory / (SAFE_INDEX if safetensors else BIN_INDEX)).write_text(json.dumps(index, indent=2) + "\n")
    return names


def weights_note(state: Mapping[str, torch.Tensor], names: list[str]) -> str:
    """What :func:`write_weights` wrote, for a writer's notes."""
    return f"wrote {len(state)} tensors in {len(names)} file(s): {names[0]}{' ...' if len(names) > 1 else ''}"


def write_remote_code_checkpoint(
    out: Path,
    model,
    processor,
    config: dict,
    preprocessor: dict,
    state: Mapping[str, torch.Tensor],
    max_shard_size: int | str,
    *,
    safetensors: bool,
    code_from: str | Path | None,
) -> tuple[list[str], list[Path]]:
    """Write a checkpoint of the remote-code ``Ovis`` class (v1, Ovis2 release) to ``out``, atomically
    (a temporary sibling directory, renamed at the end): weights, ``config``, the tokenizer (with a processor),
    the ``preprocessor`` config, the generation config and the ``*.py`` files of ``code_from``.
    Returns the weight file names and the code files copied."""
    code = sorted(Path(code_from).glob("*.py")) if code_from else []
    if code_from and not code:
        raise ConversionError(f"--code-from {code_from}: no *.py files there")
    with atomic_directory(out) as tmp:
        names = write_weights(state, tmp, max_shard_size=max_shard_size, safetensors=safetensors)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if processor is not None:
            processor.tokenizer.save_pretrained(tmp)
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
        model.llm.generation_config.save_pretrained(tmp)
        for path in code:
            shutil.copy2(path, tmp / path.name)
    return names, code


def save_original(
    model,
    processor,
    out: str | Path,
    *,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    safetensors: bool = False,
    code_from: str | Path | None = None,
) -> list[str]:
    """Write ``model`` and ``processor`` to ``out`` in the Ovis v1 layout, atomically (a temporary
    sibling directory, renamed at the end). ``code_from``: copy the ``*.py`` files of that directory
    (e.g. a released v1 checkpoint's remote code) beside, for loaders that use
    ``trust_remote_code``. Returns notes on what was mapped."""
    out = Path(out).expanduser()
    check_output_dir(out, overwrite=overwrite)
    chat_format = processor.chat_format if processor is not None else None
    config = original_config(model, chat_format)
    spec = processor.image_processor.spec if processor is not None else model.backbone.spec.preprocess
    preprocessor = original_preprocessor_config(spec)
    state, notes = original_state_dict(model)
    names, code = write_remote_code_checkpoint(
        out, model, processor, config, preprocessor, state, max_shard_size, safetensors=safetensors, code_from=code_from
    )
    notes.append(weights_note(state, names))
    notes.append(f"chat format -> conversation_formatter_class {config['conversation_formatter_class']}")
    if code:
        notes.append(f"copied {len(code)} remote-code file(s) from {code_from}")
    return notes

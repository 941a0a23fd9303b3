"""The original Ovis v1 checkpoint format ("original"): detect it, read it, write it.

A v1 directory (``AIDC-AI/Ovis-Clip-Llama3-8B``, ``Ovis-Clip-Qwen1_5-7B``, ``-14B``) holds:

* ``config.json``: ``model_type: "ovis"``, ``architectures: ["Ovis"]``, ``auto_map``, ``llm_config``
  (the LLM's config dict), ``visual_tokenizer_config`` (``model_type: "clip_visual_tokenizer"``:
  ``vocab_size``, ``tokenize_function``, ``tau``, ``depths``, ``use_indicators``,
  ``drop_cls_token``, ``hidden_stride`` and ``backbone_config``, a ``clip_vision_model`` dict),
  ``multimodal_max_length``, ``hidden_size`` and ``conversation_formatter_class``;
* weights under the same key names as an ovis model with a transformers CLIP backbone (``llm.*``,
  ``visual_tokenizer.backbone.vision_model.*``, ``visual_tokenizer.head.0/1``, ``vte.weight``) in
  ``pytorch_model*.bin`` shards (``model*.safetensors`` are read too);
* the tokenizer and a ``preprocessor_config.json`` of a ``CLIPImageProcessor``.

So reading one is mostly a config translation: the ``backbone_config`` becomes a ``VisionSpec`` for
the ``hf-clip-vision`` builder, the ``CLIPImageProcessor`` fields its ``pad`` preprocessing, and
``conversation_formatter_class`` the chat format whose ``v1_formatter_class`` it is. Writing one
converts an open_clip or timm CLIP tower to the transformers layout (:mod:`ovis.interop.vit_layouts`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ovis.errors import OvisError
from ovis.fsutil import atomic_directory
from ovis.interfaces import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, VisionSpec
from ovis.interop.vit_layouts import ViTLayoutError, clip_vision_config, convert_vit_state_dict, layout_of

logger = logging.getLogger("ovis.interop")

ORIGINAL_ARCHITECTURES = ["Ovis"]
AUTO_MAP = {"AutoConfig": "configuration_ovis.OvisConfig", "AutoModelForCausalLM": "modeling_ovis.Ovis"}
VISUAL_TOKENIZER_TYPE = "clip_visual_tokenizer"
BACKBONE_TYPE = "clip_vision_model"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
BIN_NAME, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
SAFE_NAME, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
_SHARD = re.compile(r"^(pytorch_model|model)-(\d+)-of-(\d+)\.(bin|safetensors)$")
#: CLIPImageProcessor ``resample`` values (PIL's) that ovis preprocessing knows
_RESAMPLE = {3: "bicubic", 2: "bilinear"}
_RESAMPLE_ID = {v: k for k, v in _RESAMPLE.items()}
#: CLIPVisionConfig fields kept in a VisionSpec's architecture
_CLIP_FIELDS = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
                "initializer_range", "initializer_factor")
#: buffers some transformers versions saved that no current module holds (dropped with a note)
_STALE_BUFFERS = (".position_ids", ".rotary_emb.inv_freq")
_BACKBONE_PREFIX = "visual_tokenizer.backbone."
#: pad tokens to fall back on when a v1 tokenizer has none (Llama 3's v1 training pad, Qwen's)
_PAD_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>")


# -- errors ---------------------------------------------------------------------------------------

class ConversionError(OvisError, ValueError):
    """A checkpoint that cannot be read or written in the requested format."""


class NotAnOvisCheckpointError(ConversionError):
    """The directory is neither an ovis model nor an original Ovis v1 checkpoint."""


class MissingShardError(ConversionError):
    """A weight file that the checkpoint names (or that its shard numbering implies) is absent."""


class ShapeMismatchError(ConversionError):
    """A tensor whose shape does not fit the architecture the config describes."""


class UnknownFormatterError(ConversionError):
    """A ``conversation_formatter_class`` that no installed chat format corresponds to."""


class UnsupportedError(ConversionError):
    """A valid checkpoint or model using something the other format cannot express."""


# -- detection ------------------------------------------------------------------------------------

def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotAnOvisCheckpointError(
            f"{path.parent}: no {path.name}; neither an ovis model directory nor an original Ovis v1 checkpoint"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: {what} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: {what} must hold a JSON object")
    return data


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise NotAnOvisCheckpointError(f"{directory}: not a directory")
    return _read_json(directory / CONFIG_FILE, "the model config")


def is_original_config(config: Mapping[str, Any]) -> bool:
    """A v1 config: ``visual_tokenizer_config`` and no ovis ``vision_spec``."""
    return (
        config.get("model_type", "ovis") == "ovis"
        and config.get("visual_tokenizer_config") is not None
        and not config.get("vision_spec")
    )


def checkpoint_format(directory: str | Path) -> Literal["ovis", "original"]:
    """``"ovis"`` or ``"original"``; anything else is a :class:`NotAnOvisCheckpointError`."""
    config = read_config(directory)
    if config.get("model_type") == "ovis":
        if config.get("vision_spec"):
            return "ovis"
        if is_original_config(config):
            return "original"
    found = config.get("model_type")
    raise NotAnOvisCheckpointError(
        f"{directory}: neither an ovis model (config.json with model_type 'ovis' and a vision_spec) nor an "
        f"original Ovis v1 checkpoint (model_type 'ovis' with a visual_tokenizer_config); its config.json has "
        f"model_type {found!r}" + ("" if found != "ovis" else " but neither field")
    )


def is_original_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a local directory holding a v1 ``config.json`` (never raises)."""
    if path is None:
        return False
    try:
        directory = Path(path)
        if not (directory / CONFIG_FILE).is_file():
            return False
        return is_original_config(json.loads((directory / CONFIG_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return False


# -- config translation ---------------------------------------------------------------------------

@dataclass
class OriginalTranslation:
    """What a v1 config (and preprocessor config) becomes."""

    config: dict[str, Any]  # OvisConfig keyword arguments
    vision_spec: VisionSpec
    chat_format: str
    notes: list[str] = field(default_factory=list)


def _as_dict(value: Any, what: str) -> dict:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConversionError(f"{what} must be a JSON object, got {type(value).__name__}")
    return dict(value)


def chat_format_for(formatter_class: str | None, host=None) -> str:
    """The registered chat format whose ``v1_formatter_class`` is ``formatter_class``."""
    from ovis.plugin_host import get_host

    host = host or get_host()
    known = {}
    for name in host.chat_formats():
        v1 = host.chat_format(name).v1_formatter_class
        if v1:
            known.setdefault(v1, name)
    if not formatter_class:
        raise UnknownFormatterError(
            "config.json has no conversation_formatter_class, so the chat format is unknown; "
            f"known classes: {', '.join(f'{k} -> {v}' for k, v in sorted(known.items())) or 'none'}"
        )
    if formatter_class not in known:
        raise UnknownFormatterError(
            f"unknown conversation_formatter_class {formatter_class!r}: no installed chat format corresponds to it. "
            f"Known: {', '.join(f'{k} -> {v}' for k, v in sorted(known.items())) or 'none'} "
            "(a plugin adds one by setting v1_formatter_class on its ChatFormat)"
        )
    return known[formatter_class]


def _square_size(value: Any, what: str) -> int:
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ConversionError(f"{what} {dict(value)} is not square; Ovis v1 pads to a square")
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        raise ConversionError(f"{what} {dict(value)}: expected height/width or shortest_edge")
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"{what} {value} is not square; Ovis v1 pads to a square")
        return int(value[0])
    return int(value)


def preprocess_from_clip_processor(
    processor: Mapping[str, Any] | None, image_size: int
) -> tuple[ImagePreprocessSpec, list[str]]:
    """A v1 ``preprocessor_config.json`` (``CLIPImageProcessor``) -> the ``pad`` preprocessing."""
    if processor is None:
        return (
            ImagePreprocessSpec(image_size=image_size, mean=CLIP_MEAN, std=CLIP_STD, resize="pad"),
            [f"no {PREPROCESSOR_FILE}: CLIP mean/std, bicubic, {image_size} px, pad (the v1 defaults)"],
        )
    what = PREPROCESSOR_FILE
    notes = []
    size_field = "crop_size" if processor.get("crop_size") is not None else "size"
    size = _square_size(processor.get(size_field, image_size), f"{what} {size_field}")
    if size != image_size:
        raise ShapeMismatchError(
            f"{what}: {size_field} {size} does not match the vision backbone's image_size {image_size} "
            "(visual_tokenizer_config.backbone_config)"
        )
    resample = processor.get("resample", 3)
    if resample not in _RESAMPLE:
        raise UnsupportedError(f"{what}: resample {resample!r} is not supported (3 = bicubic, 2 = bilinear)")
    factor = processor.get("rescale_factor", 1 / 255)
    if not processor.get("do_rescale", True) or abs(factor - 1 / 255) > 1e-12:
        raise UnsupportedError(f"{what}: only rescaling by 1/255 is supported (do_rescale, rescale_factor)")
    if not processor.get("do_normalize", True):
        raise UnsupportedError(f"{what}: do_normalize false is not supported")
    mean = tuple(float(x) for x in processor.get("image_mean", CLIP_MEAN))
    std = tuple(float(x) for x in processor.get("image_std", CLIP_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ConversionError(f"{what}: image_mean and image_std need 3 values each")
    if processor.get("do_center_crop"):
        notes.append(f"{what}: do_center_crop ignored (Ovis v1 resizes the long side and pads instead)")
    spec = ImagePreprocessSpec(
        image_size=size, mean=mean, std=std, resize="pad", interpolation=_RESAMPLE[resample]
    )
    notes.append(
        f"{what} (CLIPImageProcessor, {size} px, {_RESAMPLE[resample]}) -> resize 'pad' "
        "(long side to the image size, normalise, centred zero padding)"
    )
    return spec, notes


def vision_spec_from_backbone_config(backbone: Mapping[str, Any], preprocess: ImagePreprocessSpec) -> VisionSpec:
    """A v1 ``backbone_config`` (``clip_vision_model``) -> a VisionSpec for the hf-clip-vision builder."""
    model_type = backbone.get("model_type")
    if model_type != BACKBONE_TYPE:
        raise UnsupportedError(
            f"visual_tokenizer_config.backbone_config has model_type {model_type!r}; Ovis v1 checkpoints use "
            f"{BACKBONE_TYPE!r} (a transformers CLIPVisionModel)"
        )
    from transformers import CLIPVisionConfig

    arch = {k: backbone[k] for k in _CLIP_FIELDS if k in backbone}
    config = CLIPVisionConfig(**arch)  # fills the defaults, as v1's AutoConfig.for_model did
    arch = {k: getattr(config, k) for k in _CLIP_FIELDS}
    image_size = _square_size(config.image_size, "backbone_config image_size")
    patch_size = _square_size(config.patch_size, "backbone_config patch_size")
    arch["image_size"], arch["patch_size"] = image_size, patch_size
    return VisionSpec(
        name="clip-ovis-v1",
        family="clip",
        builder="hf-clip-vision",
        plugin="ovis-plugin-hf-vision",
        source="transformers",
        description="CLIP vision tower of an Ovis v1 checkpoint (transformers CLIPVisionModel)",
        hidden_size=config.hidden_size,
        image_size=image_size,
        patch_size=patch_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        has_cls_token=True,
        preprocess=preprocess,
        architecture=arch,
    )


def translate_config(
    config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None, *, host=None
) -> OriginalTranslation:
    """A v1 ``config.json`` (+ its ``preprocessor_config.json``) -> ``OvisConfig`` arguments."""
    from ovis.model.configuration_ovis import TOKENIZE_FUNCTIONS

    if config.get("model_type", "ovis") != "ovis":
        raise NotAnOvisCheckpointError(f"config model_type {config.get('model_type')!r} is not 'ovis'")
    vt = _as_dict(config.get("visual_tokenizer_config"), "visual_tokenizer_config")
    if vt.get("model_type") != VISUAL_TOKENIZER_TYPE:
        raise UnsupportedError(
            f"visual_tokenizer_config.model_type {vt.get('model_type')!r} is not supported: Ovis v1 checkpoints use "
            f"{VISUAL_TOKENIZER_TYPE!r} (later Ovis versions have other layouts)"
        )
    if vt.get("backbone_config") is None:
        raise ConversionError("visual_tokenizer_config has no backbone_config")
    backbone = _as_dict(vt["backbone_config"], "visual_tokenizer_config.backbone_config")
    if not vt.get("drop_cls_token", False):
        raise UnsupportedError("visual_tokenizer_config.drop_cls_token is false; ovis always drops the CLS token")
    if vt.get("hidden_stride", 1) != 1:
        raise UnsupportedError(f"visual_tokenizer_config.hidden_stride {vt['hidden_stride']} is not supported (v1: 1)")
    if vt.get("hd_booster") is not None:
        raise UnsupportedError(f"visual_tokenizer_config.hd_booster {vt['hd_booster']!r} is not supported (v1: none)")
    tokenize_function = vt.get("tokenize_function", "softmax")
    if tokenize_function not in TOKENIZE_FUNCTIONS:
        raise ConversionError(
            f"visual_tokenizer_config.tokenize_function {tokenize_function!r} is unknown; "
            f"expected one of {', '.join(TOKENIZE_FUNCTIONS)}"
        )
    if "vocab_size" not in vt:
        raise ConversionError("visual_tokenizer_config has no vocab_size")
    vocab = int(vt["vocab_size"])
    use_indicators = bool(vt.get("use_indicators", False))

    llm = _as_dict(config.get("llm_config"), "llm_config")
    if not llm.get("model_type"):
        raise ConversionError("llm_config has no model_type")
    llm_hidden = llm.get("hidden_size")
    if config.get("hidden_size") is not None and llm_hidden is not None and config["hidden_size"] != llm_hidden:
        raise ShapeMismatchError(
            f"config.json hidden_size {config['hidden_size']} differs from llm_config.hidden_size {llm_hidden}"
        )
    chat_format = chat_format_for(config.get("conversation_formatter_class"), host)

    image_size = _square_size(backbone.get("image_size", 224), "backbone_config image_size")
    preprocess, notes = preprocess_from_clip_processor(preprocessor, image_size)
    spec = vision_spec_from_backbone_config(backbone, preprocess)
    depths = vt.get("depths")
    if depths and list(depths) != [spec.num_layers]:
        notes.append(
            f"visual_tokenizer_config.depths {depths} noted; backbone_config's {spec.num_layers} layers are built "
            "(what v1 does when loading)"
        )
    notes[:0] = [
        f"visual_tokenizer_config.backbone_config ({BACKBONE_TYPE}: {spec.num_layers} layers, width "
        f"{spec.hidden_size}, patch {spec.patch_size}, {spec.image_size} px) -> vision_spec for builder "
        "'hf-clip-vision'",
        f"visual_tokenizer_config.vocab_size {vocab} -> visual_vocab_size; tokenize_function {tokenize_function}, "
        f"tau {vt.get('tau', 1.0)}, use_indicators {use_indicators} kept",
        f"conversation_formatter_class {config.get('conversation_formatter_class')} -> chat format '{chat_format}'",
        f"llm_config ({llm['model_type']}) and multimodal_max_length "
        f"{config.get('multimodal_max_length', 2048)} kept",
    ]
    kwargs = {
        "llm_config": llm,
        "vision_spec": spec.model_dump(mode="json"),
        "llm_spec": None,
        "visual_vocab_size": vocab,
        "tokenize_function": tokenize_function,
        "tau": float(vt.get("tau", 1.0)),
        "use_indicators": use_indicators,
        "adapter": "structural",
        "multimodal_max_length": int(config.get("multimodal_max_length", 2048)),
        "chat_format": chat_format,
        "conversation_formatter_class": config.get("conversation_formatter_class"),
    }
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype:
        kwargs["dtype"] = dtype
    return OriginalTranslation(kwargs, spec, chat_format, notes)


def _read_preprocessor(directory: Path) -> dict | None:
    path = directory / PREPROCESSOR_FILE
    return _read_json(path, "the image processor config") if path.is_file() else None


# -- weights --------------------------------------------------------------------------------------

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
            data = _read_json(index, "the weight index")
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
        raise ConversionError(f"{path}: could not read the weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: not a state dict of tensors")
    return state


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


def _state_dtype(state: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


# -- loading --------------------------------------------------------------------------------------

@dataclass
class OriginalCheckpoint:
    """A v1 directory read and checked: the OvisConfig, the state dict and what was mapped."""

    config: Any  # OvisConfig
    state: dict[str, torch.Tensor]
    translation: OriginalTranslation
    notes: list[str]

    def message(self, directory: str | Path) -> str:
        lines = "\n".join(f"  - {note}" for note in self.notes)
        return (
            f"{directory} is an original Ovis v1 checkpoint; converted on load. Mapped:\n{lines}\n"
            f"To keep it in ovis format: ovis convert --from original {directory} --out DIR"
        )


def read_original(directory: str | Path) -> OriginalCheckpoint:
    """Read a v1 directory into an ``OvisConfig`` and a state dict checked against it."""
    from ovis.model import OvisConfig, OvisForCausalLM

    directory = Path(directory)
    if checkpoint_format(directory) != "original":
        raise ConversionError(f"{directory} is already in ovis format, not the original Ovis v1 format")
    translation = translate_config(read_config(directory), _read_preprocessor(directory))
    config = OvisConfig(**translation.config)
    state, files = read_state_dict(directory)
    with torch.device("meta"):
        skeleton = OvisForCausalLM(config)
    state, notes = check_state_dict(state, skeleton, str(directory))
    dtype = _state_dtype(state)
    if dtype is not None:
        config.dtype = dtype
    notes = [*translation.notes, f"weights: {len(state)} tensors from {files.describe()}, key names unchanged", *notes]
    return OriginalCheckpoint(config, state, translation, notes)


def _settle_pad_token(tokenizer, notes: list[str]) -> None:
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    choice = next((t for t in _PAD_CANDIDATES if t in vocab), None) or tokenizer.eos_token
    if choice is None:
        raise ConversionError("the tokenizer has neither a pad token nor an eos token to pad with")
    tokenizer.pad_token = choice
    notes.append(f"tokenizer has no pad token: using {choice!r} (id {tokenizer.pad_token_id})")


def load_original_processor(directory: str | Path, notes: list[str] | None = None):
    """The ``OvisProcessor`` of a v1 directory: its tokenizer, its CLIPImageProcessor settings as
    ``pad`` preprocessing, and the chat format mapped from ``conversation_formatter_class``."""
    from transformers import AutoTokenizer

    from ovis.interfaces import ImageProcessor
    from ovis.plugin_host import get_host
    from ovis.processing import OvisProcessor

    directory = Path(directory)
    notes = [] if notes is None else notes
    config = read_config(directory)
    if not is_original_config(config):
        raise NotAnOvisCheckpointError(f"{directory}: not an original Ovis v1 checkpoint")
    translation = translate_config(config, _read_preprocessor(directory))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{directory}: could not load the tokenizer ({exc})") from exc
    _settle_pad_token(tokenizer, notes)
    spec = translation.vision_spec
    return OvisProcessor(
        tokenizer=tokenizer,
        image_processor=ImageProcessor(spec.preprocess),
        chat_format=get_host().chat_format(translation.chat_format),
        num_image_tokens=spec.num_patches + (2 if translation.config["use_indicators"] else 0),
        max_length=translation.config["multimodal_max_length"],
    )


def load_original(directory: str | Path, *, dtype: str | torch.dtype | None = None):
    """``(model, processor, notes)`` from a v1 directory."""
    from ovis.model import OvisForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    checkpoint = read_original(directory)
    model = OvisForCausalLM.from_pretrained(None, config=checkpoint.config, state_dict=checkpoint.state, **kwargs)
    notes = list(checkpoint.notes)
    processor = load_original_processor(directory, notes)
    _sync_generation(model, processor)
    return model, processor, notes


def _sync_generation(model, processor) -> None:
    generation = model.llm.generation_config
    generation.pad_token_id = processor.tokenizer.pad_token_id
    if processor.tokenizer.eos_token_id is not None:
        generation.eos_token_id = processor.tokenizer.eos_token_id


# -- writing --------------------------------------------------------------------------------------

def parse_size(value: int | str) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1000`` -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"shard size {value!r}: expected a number of bytes or e.g. 5GB, 500MB, 2GiB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    size = int(number * base**power)
    if size <= 0:
        raise ValueError(f"shard size {value!r} must be positive")
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
    import transformers

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
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {
        "architectures": list(ORIGINAL_ARCHITECTURES),
        "auto_map": dict(AUTO_MAP),
        "model_type": "ovis",
        "conversation_formatter_class": formatter,
        "hidden_size": config.llm_config.hidden_size,
        "multimodal_max_length": config.multimodal_max_length,
        "llm_config": legacy_llm_config(config.llm_config),
        "visual_tokenizer_config": {
            "model_type": VISUAL_TOKENIZER_TYPE,
            "vocab_size": config.visual_vocab_size,
            "tokenize_function": config.tokenize_function,
            "tau": config.tau,
            "depths": None,
            "use_indicators": config.use_indicators,
            "drop_cls_token": True,
            "backbone_config": backbone,
            "hidden_stride": 1,
        },
        "torch_dtype": dtype,
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
    tower = {k[len(_BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(_BACKBONE_PREFIX)}
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


def _check_out(out: Path, overwrite: bool, sources: tuple[Path, ...] = ()) -> None:
    for source in sources:
        if out.resolve() == source.resolve():
            raise ConversionError(f"--out {out} is the source directory; write to another directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --overwrite")


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
    _check_out(out, overwrite)
    chat_format = processor.chat_format if processor is not None else None
    config = original_config(model, chat_format)
    spec = processor.image_processor.spec if processor is not None else model.backbone.spec.preprocess
    preprocessor = original_preprocessor_config(spec)
    state, notes = original_state_dict(model)
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
    notes.append(f"wrote {len(state)} tensors in {len(names)} file(s): {names[0]}{' ...' if len(names) > 1 else ''}")
    notes.append(f"chat format -> conversation_formatter_class {config['conversation_formatter_class']}")
    if code:
        notes.append(f"copied {len(code)} remote-code file(s) from {code_from}")
    return notes


# -- the conversion -------------------------------------------------------------------------------

@dataclass
class ConversionReport:
    source: Path
    out: Path
    source_format: str
    target_format: str
    notes: list[str]


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: Literal["ovis", "original"],
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    safetensors: bool = False,
    code_from: str | Path | None = None,
) -> ConversionReport:
    """Convert a checkpoint directory: ``to="ovis"`` reads an original Ovis v1 checkpoint and writes
    an ovis model; ``to="original"`` reads an ovis model (or a v1 checkpoint) and writes the v1
    layout. ``out`` is written to a temporary sibling and renamed: an error leaves nothing there."""
    from ovis.compose import DTYPES, load, save

    src, out = Path(src).expanduser(), Path(out).expanduser()
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source_format = checkpoint_format(src)
    _check_out(out, overwrite, (src,))
    if to == "ovis":
        if source_format != "original":
            raise ConversionError(
                f"{src} is already in ovis format; --from original reads an original Ovis v1 checkpoint "
                "(use --to original to write one)"
            )
        model, processor, notes = load_original(src, dtype=DTYPES[dtype] if dtype else None)
        save(model, processor, out, overwrite=overwrite)
    elif to == "original":
        if source_format == "original":
            model, processor, notes = load_original(src, dtype=DTYPES[dtype] if dtype else None)
        else:
            model, processor = load(src, dtype=dtype)
            notes = []
        notes += save_original(
            model, processor, out, overwrite=overwrite, max_shard_size=max_shard_size,
            safetensors=safetensors, code_from=code_from,
        )
    else:
        raise ValueError(f"to must be 'ovis' or 'original', got {to!r}")
    return ConversionReport(src, out, source_format, to, notes)

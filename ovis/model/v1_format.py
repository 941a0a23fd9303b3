"""The original Ovis v1 checkpoint format ("original"): detect it and translate its config.

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
converts an open_clip or timm CLIP tower to the transformers layout (:mod:`ovis.model.vit_layouts`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ovis.errors import OvisError
from ovis.interfaces import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, VisionSpec
from ovis.json_files import read_json_object
from ovis.model.visual_tokenizer import TOKENIZE_FUNCTIONS
from ovis.plugin_host import PluginHost, get_host

_T = TypeVar("_T")
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
_CLIP_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)
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


def read_json(path: Path, what: str) -> dict:
    try:
        return read_json_object(path, what)
    except FileNotFoundError as exc:
        raise NotAnOvisCheckpointError(
            f"{path.parent}: no {path.name}; neither an ovis model directory nor an original Ovis v1 checkpoint"
        ) from exc


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.exists():
        raise NotAnOvisCheckpointError(f"model directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise NotAnOvisCheckpointError(f"model directory {str(directory)!r} is not a directory")
    return read_json(directory / CONFIG_FILE, "the model config")


#: ``visual_tokenizer_config.model_type`` of the Ovis 1.6 / Ovis2 releases ("ovis2",
#: :mod:`ovis.model.ovis2_release_format`), which share v1's top-level fields
RELEASE_TOKENIZER_TYPES = ("aimv2_visual_tokenizer", "siglip_visual_tokenizer")


def _release_tokenizer(config: Mapping[str, Any]) -> bool:
    vt = config.get("visual_tokenizer_config")
    return isinstance(vt, Mapping) and vt.get("model_type") in RELEASE_TOKENIZER_TYPES


def is_original_config(config: Mapping[str, Any]) -> bool:
    """A v1 config: ``visual_tokenizer_config`` (not an Ovis2 release's) and no ovis ``vision_spec``."""
    return (
        config.get("model_type", "ovis") == "ovis"
        and config.get("visual_tokenizer_config") is not None
        and not config.get("vision_spec")
        and not _release_tokenizer(config)
    )


def checkpoint_format(directory: str | Path) -> Literal["ovis", "original", "hf-ovis2", "ovis2"]:
    """``"ovis"``, ``"original"``, ``"hf-ovis2"`` (transformers' Ovis2 layout, read by
    :mod:`ovis.model.ovis2_format`) or ``"ovis2"`` (the AIDC-AI Ovis2 release layout,
    :mod:`ovis.model.ovis2_release_format`); anything else is a :class:`NotAnOvisCheckpointError`."""
    return config_format(read_config(directory), directory)


def config_format(config: Mapping[str, Any], directory: str | Path) -> Literal["ovis", "original", "hf-ovis2", "ovis2"]:
    """:func:`checkpoint_format` of a ``config.json`` already read from ``directory``."""
    if config.get("model_type") == "ovis2":
        return "hf-ovis2"
    if config.get("model_type") == "ovis":
        if config.get("vision_spec"):
            return "ovis"
        if is_original_config(config):
            return "original"
        if not config.get("vision_spec") and _release_tokenizer(config):
            return "ovis2"
    found = config.get("model_type")
    raise NotAnOvisCheckpointError(
        f"{directory}: neither an ovis model (config.json with model_type 'ovis' and a vision_spec) nor an "
        f"original Ovis v1 checkpoint (model_type 'ovis' with a visual_tokenizer_config); its config.json has "
        f"model_type {found!r}"
        + ("" if found != "ovis" else " but neither field")
        + " (transformers Ovis2 checkpoints, model_type 'ovis2', are read too)"
    )


def holds_config(path: str | Path | None, accepts: Callable[[Mapping[str, Any]], bool]) -> bool:
    """Whether ``path`` is a local directory holding a ``config.json`` that ``accepts`` (a layout's
    config test) recognises; an unreadable or absent file, or one that is not a JSON object, is
    ``False``, never an error."""
    if path is None:
        return False
    try:
        file = Path(path) / CONFIG_FILE
        if not file.is_file():
            return False
        data = json.loads(file.read_text())
        return isinstance(data, Mapping) and accepts(data)
    except (OSError, ValueError, TypeError):
        return False


def is_original_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a local directory holding a v1 ``config.json`` (never raises)."""
    return holds_config(path, is_original_config)


# -- config translation ---------------------------------------------------------------------------


@dataclass
class ConfigTranslation:
    """What a foreign config (v1, the Ovis2 release's or, extended, hf-ovis2's; with its preprocessor
    config) becomes."""

    config: dict[str, Any]  # OvisConfig keyword arguments
    vision_spec: VisionSpec
    chat_format: str
    notes: list[str] = field(default_factory=list)


def _as_dict(value: Any, what: str) -> dict:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConversionError(f"config.json {what} must be a JSON object, got {type(value).__name__}")
    return dict(value)


def chat_format_for(formatter_class: str | None, host: PluginHost | None = None) -> str:
    """The registered chat format whose ``v1_formatter_class`` is ``formatter_class``."""
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


def pixel_settings(processor: Mapping[str, Any], what: str) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """``(interpolation, mean, std)`` of an image processor config (the fields CLIPImageProcessor and
    Ovis2ImageProcessor share), refusing resampling, rescaling or normalising that ovis does not do."""
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
    return _RESAMPLE[resample], mean, std


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
    interpolation, mean, std = pixel_settings(processor, what)
    if processor.get("do_center_crop"):
        notes.append(f"{what}: do_center_crop ignored (Ovis v1 resizes the long side and pads instead)")
    spec = ImagePreprocessSpec(image_size=size, mean=mean, std=std, resize="pad", interpolation=interpolation)
    notes.append(
        f"{what} (CLIPImageProcessor, {size} px, {interpolation}) -> resize 'pad' "
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


def _visual_tokenizer_fields(vt: dict[str, Any]) -> tuple[dict, str, int, bool]:
    """``(backbone_config, tokenize_function, vocab_size, use_indicators)`` of a v1
    ``visual_tokenizer_config``, refusing what v1 checkpoints never hold."""
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
    vocab = visual_vocab_size(vt)
    use_indicators = bool(vt.get("use_indicators", False))
    return backbone, tokenize_function, vocab, use_indicators


def visual_vocab_size(vt: Mapping[str, Any]) -> int:
    """``visual_tokenizer_config.vocab_size`` (v1, Ovis2 release), which has no default."""
    if "vocab_size" not in vt:
        raise ConversionError("visual_tokenizer_config has no vocab_size")
    return _number(vt["vocab_size"], "visual_tokenizer_config.vocab_size", int)


def llm_config_of(config: Mapping[str, Any]) -> dict:
    """``llm_config`` of a v1-style ``config.json`` (v1, Ovis2 release), checked against ``hidden_size``."""
    llm = _as_dict(config.get("llm_config"), "llm_config")
    if not llm.get("model_type"):
        raise ConversionError("llm_config has no model_type")
    if config.get("hidden_size") is not None and llm.get("hidden_size") not in (None, config["hidden_size"]):
        raise ShapeMismatchError(
            f"config.json hidden_size {config['hidden_size']} differs from llm_config.hidden_size {llm['hidden_size']}"
        )
    return llm


def structural_kwargs(
    llm: dict,
    spec: VisionSpec,
    vocab: int,
    tokenize_function: str,
    chat_format: str,
    *,
    tau: float,
    use_indicators: bool,
    multimodal_max_length: int,
    dtype: str | None,
    **more: Any,
) -> dict[str, Any]:
    """``OvisConfig`` arguments of a translated checkpoint (v1, Ovis2 release, hf-ovis2): the LLM from
    ``llm``, ``spec``'s tower, the structural adapter; ``more``: the layout's own arguments; ``dtype``
    only when the file names one."""
    kwargs = {
        "llm_config": llm,
        "vision_spec": spec.model_dump(mode="json"),
        "llm_spec": None,
        "visual_vocab_size": vocab,
        "tokenize_function": tokenize_function,
        "tau": tau,
        "use_indicators": use_indicators,
        "adapter": "structural",
        "multimodal_max_length": multimodal_max_length,
        "chat_format": chat_format,
        **more,
    }
    if dtype:
        kwargs["dtype"] = dtype
    return kwargs


def ovis_config_kwargs(
    config: Mapping[str, Any],
    vt: Mapping[str, Any],
    llm: dict,
    spec: VisionSpec,
    vocab: int,
    tokenize_function: str,
    chat_format: str,
    *,
    use_indicators: bool,
    max_length: int,
    **layout: Any,
) -> dict[str, Any]:
    """:func:`structural_kwargs` of a v1-style ``config.json`` (v1, Ovis2 release): ``tau``,
    ``multimodal_max_length`` (``max_length`` when absent), the formatter class and dtype as the file
    gives them; ``layout``: the image layout's own arguments."""
    return structural_kwargs(
        llm,
        spec,
        vocab,
        tokenize_function,
        chat_format,
        tau=_number(vt.get("tau", 1.0), "visual_tokenizer_config.tau", float),
        use_indicators=use_indicators,
        multimodal_max_length=_number(config.get("multimodal_max_length", max_length), "multimodal_max_length", int),
        conversation_formatter_class=config.get("conversation_formatter_class"),
        **layout,
        dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def refuses_bad_values(translate: Callable[..., _T]) -> Callable[..., _T]:
    """``translate`` (a config translation) reporting a field of the wrong type or shape deep in the
    config (the named checks cover the common ones) as a one-line ConversionError: the input is at fault."""

    @functools.wraps(translate)
    def checked(*args: Any, **kwargs: Any) -> _T:
        try:
            return translate(*args, **kwargs)
        except OvisError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConversionError(
                f"config.json holds a value of the wrong type or shape ({type(exc).__name__}: {first[:300]})"
            ) from exc

    return checked


@refuses_bad_values
def translate_config(
    config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None, *, host=None
) -> ConfigTranslation:
    """A v1 ``config.json`` (+ its ``preprocessor_config.json``) -> ``OvisConfig`` arguments."""
    return _translate(config, preprocessor, host)


def _number(value: Any, what: str, kind: type[int] | type[float]) -> Any:
    """``value`` as ``kind``; a ConversionError naming ``what`` for a string, a bool or null."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        expected = "a whole number" if kind is int else "a number"
        raise ConversionError(f"config.json {what} is {value!r}; expected {expected}")
    return kind(value)


def _translate(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None, host) -> ConfigTranslation:
    if config.get("model_type", "ovis") != "ovis":
        raise NotAnOvisCheckpointError(f"config model_type {config.get('model_type')!r} is not 'ovis'")
    vt = _as_dict(config.get("visual_tokenizer_config"), "visual_tokenizer_config")
    backbone, tokenize_function, vocab, use_indicators = _visual_tokenizer_fields(vt)

    llm = llm_config_of(config)
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
        f"llm_config ({llm['model_type']}) and multimodal_max_length {config.get('multimodal_max_length', 2048)} kept",
    ]
    kwargs = ovis_config_kwargs(
        config, vt, llm, spec, vocab, tokenize_function, chat_format, use_indicators=use_indicators, max_length=2048
    )
    return ConfigTranslation(kwargs, spec, chat_format, notes)


def read_preprocessor(directory: Path) -> dict | None:
    path = directory / PREPROCESSOR_FILE
    return read_json(path, "the image processor config") if path.is_file() else None

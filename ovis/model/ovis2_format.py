"""transformers' native Ovis2 checkpoint layout ("hf-ovis2"): detect it, translate its config, map its
tensor names, read one as an ovis model.

An hf-ovis2 directory (``Ovis2ForConditionalGeneration``, the converted ``*-hf`` checkpoints) holds:

* ``config.json``: ``model_type: "ovis2"``, ``vision_config`` (``ovis2_vision``: an AIMv2 trunk's sizes,
  ``vocab_size`` V, ``hidden_stride``, ``num_visual_indicator_tokens`` 5, ``tokenize_function``),
  ``text_config`` (the LLM's), ``image_token_id``, ``visual_indicator_token_ids`` (5 ids, filled with
  the visual embedding table's rows ``V-5 ... V-1``), ``vocab_size`` (the ``lm_head``'s rows),
  ``hidden_size`` and ``tie_word_embeddings``;
* weights ``model.vision_tower.transformer.*`` (AIMv2, ``patch_embedding`` for AIMv2's
  ``patch_embed``), ``model.vision_tower.head_linear`` / ``head_norm``, ``model.visual_embeddings_table``,
  ``model.language_model.*`` (the LLM without its head) and ``lm_head``;
* a tokenizer with ``<image>``, ``<IMG_ATOM>`` and the five indicator tokens, and the
  ``Ovis2Processor``'s ``processor_config.json`` (``image_seq_length``; transformers 5 nests the
  ``Ovis2ImageProcessor`` settings, ``crop_to_patches`` and ``max_patches``, in it under
  ``image_processor``, 4.x wrote them to ``preprocessor_config.json``).

transformers' vision tower applies AIMv2's final RMSNorm to the features (the AIDC-AI release does
not); the translated vision spec sets ``apply_final_norm`` so the AIMv2 backbone does the same.
Settings only ovis has (tile fitting, covering threshold, chat format, tau) travel in config.json
under ``"ovis"``, which transformers keeps and ignores, so a round trip is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovis.interfaces import CLIP_MEAN, CLIP_STD, ImagePreprocessSpec, VisionSpec
from ovis.model.v1_format import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    ConfigTranslation,
    ConversionError,
    ShapeMismatchError,
    UnsupportedError,
    _as_dict,
    holds_config,
    pixel_settings,
    read_json,
    refuses_bad_values,
    structural_kwargs,
)
from ovis.model.v1_weights import ForeignCheckpoint
from ovis.model.visual_tokenizer import TOKENIZE_FUNCTIONS

HF_OVIS2_TYPE = "ovis2"
HF_OVIS2_VISION_TYPE = "ovis2_vision"
HF_ARCHITECTURES = ["Ovis2ForConditionalGeneration"]
PROCESSOR_CONFIG_FILE = "processor_config.json"
#: text models whose causal LM is exactly ``model`` + ``lm_head`` (what Ovis2ForConditionalGeneration
#: rebuilds around ``AutoModel``); Gemma 2's logit soft-capping, for one, would be lost
TEXT_TYPES = ("qwen2", "qwen3", "llama")
#: the chat format assumed when config.json carries none (``"ovis"`` block)
DEFAULT_CHAT_FORMATS = {"qwen2": "chatml", "qwen3": "qwen3", "llama": "llama3.2"}
#: config.json's block for the settings only ovis has (transformers and the release's code keep and ignore it)
EXTRAS_KEY = "ovis"
EXTRA_FIELDS = ("chat_format", "tile_resize", "covering_threshold", "tau", "multimodal_max_length")
#: the tokens of transformers' Ovis2Processor: the text marker, the image position, and the five
#: indicators in the order of ``visual_indicator_token_ids`` (= ovis.model.merging.INDICATOR_IDS)
IMAGE_MARKER_TOKEN = "<image>"
IMAGE_ATOM_TOKEN = "<IMG_ATOM>"
INDICATOR_TOKENS = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
#: Ovis2VisionConfig's trunk fields, which are AIMv2's (Aimv2VisionConfig) under the same names
VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "rms_norm_eps",
    "attention_dropout",
    "qkv_bias",
    "mlp_bias",
    "hidden_act",
    "initializer_range",
)
#: ovis key prefix <-> hf-ovis2 key prefix (first match wins, so the longer prefixes come first)
KEY_PREFIXES = (
    (
        "visual_tokenizer.backbone.vision_model.embeddings.patch_embed.",
        "model.vision_tower.transformer.embeddings.patch_embedding.",
    ),
    ("visual_tokenizer.backbone.vision_model.", "model.vision_tower.transformer."),
    ("visual_tokenizer.head.0.", "model.vision_tower.head_linear."),
    ("visual_tokenizer.head.1.", "model.vision_tower.head_norm."),
    ("vte.", "model.visual_embeddings_table."),
    ("llm.model.", "model.language_model."),
    ("llm.lm_head.", "lm_head."),
)
#: AIMv2's attention-pooling head (``use_head``): not part of the features, and no hf-ovis2 tensor holds it
AIMV2_POOL_HEAD = "visual_tokenizer.backbone.vision_model.head."


def ovis_extras(config: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The settings only ovis has that a foreign layout (hf-ovis2, Ovis2 release) keeps in config.json
    under :data:`EXTRAS_KEY`; a field outside ``fields`` is refused."""
    extras = _as_dict(config.get(EXTRAS_KEY) or {}, EXTRAS_KEY)
    unknown = set(extras) - set(fields)
    if unknown:
        raise ConversionError(f"config.json {EXTRAS_KEY}: unknown field(s) {', '.join(sorted(unknown))}")
    return extras


def is_hf_ovis2_config(config: Mapping[str, Any]) -> bool:
    return config.get("model_type") == HF_OVIS2_TYPE


def is_hf_ovis2_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a local directory holding an hf-ovis2 ``config.json`` (never raises)."""
    return holds_config(path, is_hf_ovis2_config)


def to_hf_key(key: str) -> str | None:
    """The hf-ovis2 name of an ovis state-dict key (``None``: no hf-ovis2 tensor holds it)."""
    if key.startswith(AIMV2_POOL_HEAD):
        return None
    for ours, theirs in KEY_PREFIXES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    return None


def from_hf_key(key: str) -> str | None:
    """The ovis name of an hf-ovis2 state-dict key (``None``: not one ovis knows)."""
    for ours, theirs in KEY_PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs) :]
    return None


# -- config translation ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class HfOvis2Translation(ConfigTranslation):
    """What an hf-ovis2 config (with its processor configs) becomes: a config translation plus the
    positions transformers' Ovis2Processor gives images."""

    tokens_per_tile: int
    image_token_id: int
    indicator_token_ids: list[int]


def _square(value: Any, what: str) -> int:
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise UnsupportedError(f"{what} {dict(value)} is not square; ovis fits views to a square")
            return int(value["height"])
        raise ConversionError(f"{what} {dict(value)}: expected height and width")
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise UnsupportedError(f"{what} {list(value)} is not square; ovis fits views to a square")
        return int(value[0])
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"{what} is {value!r}; expected a whole number")
    return value


def vision_spec_from_hf(vision: Mapping[str, Any], preprocess: ImagePreprocessSpec) -> VisionSpec:
    """An ``ovis2_vision`` config -> a VisionSpec for the hf-aimv2-vision builder (final norm applied)."""
    from transformers import Ovis2VisionConfig

    known = {k: vision[k] for k in VISION_FIELDS if k in vision}
    try:
        filled = Ovis2VisionConfig(**known)  # transformers' defaults for what the file leaves out
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"config.json vision_config: {str(exc).splitlines()[0][:300]}") from exc
    arch = {k: getattr(filled, k) for k in VISION_FIELDS}
    arch["image_size"] = _square(arch["image_size"], "vision_config.image_size")
    arch["patch_size"] = _square(arch["patch_size"], "vision_config.patch_size")
    arch.update(use_head=False, apply_final_norm=True)
    return aimv2_spec(
        arch,
        preprocess,
        name="aimv2-hf-ovis2",
        description=(
            "AIMv2 trunk of a transformers Ovis2 checkpoint (final RMSNorm applied, as Ovis2VisionModel does)"
        ),
    )


def aimv2_spec(arch: dict[str, Any], preprocess: ImagePreprocessSpec, *, name: str, description: str) -> VisionSpec:
    """A VisionSpec for the hf-aimv2-vision builder from an AIMv2 ``architecture`` (transformers' names)."""
    return VisionSpec(
        name=name,
        family="aimv2",
        builder="hf-aimv2-vision",
        plugin="ovis-plugin-hf-vision",
        source="transformers",
        description=description,
        hidden_size=arch["hidden_size"],
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
        num_layers=arch["num_hidden_layers"],
        num_heads=arch["num_attention_heads"],
        has_cls_token=False,
        preprocess=preprocess,
        architecture=arch,
    )


def tiling_from_image_processor(
    processor: Mapping[str, Any] | None, image_size: int
) -> tuple[ImagePreprocessSpec, int, list[str]]:
    """An ``Ovis2ImageProcessor`` config -> ``(preprocessing, max_partition, notes)``."""
    what = PREPROCESSOR_FILE
    if processor is None:
        spec = ImagePreprocessSpec(image_size=image_size, mean=CLIP_MEAN, std=CLIP_STD, resize="pad")
        return spec, 9, [f"no {what}: CLIP mean/std, bicubic, {image_size} px, at most 9 tiles"]
    size = _square(processor.get("size", {"height": image_size, "width": image_size}), f"{what} size")
    if size != image_size:
        raise ShapeMismatchError(f"{what}: size {size} differs from vision_config.image_size {image_size}")
    interpolation, mean, std = pixel_settings(processor, what)
    if processor.get("crop_to_patches", False):
        max_partition = processor.get("max_patches", 12)
        if isinstance(max_partition, bool) or not isinstance(max_partition, int) or max_partition < 1:
            raise ConversionError(f"{what}: max_patches {max_partition!r}; expected a whole number >= 1")
        if processor.get("min_patches", 1) != 1:
            raise UnsupportedError(f"{what}: min_patches {processor['min_patches']} is not supported (ovis: 1)")
        if not processor.get("use_covering_area_grid", True):
            raise UnsupportedError(f"{what}: use_covering_area_grid false is not supported (ovis chooses by coverage)")
    else:
        max_partition = 1
    spec = ImagePreprocessSpec(image_size=size, mean=mean, std=std, resize="pad", interpolation=interpolation)
    note = (
        f"{what} (Ovis2ImageProcessor, {size} px, {interpolation}, crop_to_patches "
        f"{bool(processor.get('crop_to_patches', False))}) -> max_partition {max_partition}"
    )
    return spec, max_partition, [note]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConversionError(f"config.json {what} is {value!r}; expected a whole number")
    return value


@refuses_bad_values
def translate_hf_config(
    config: Mapping[str, Any],
    preprocessor: Mapping[str, Any] | None = None,
    processor_config: Mapping[str, Any] | None = None,
) -> HfOvis2Translation:
    """An hf-ovis2 ``config.json`` (+ ``preprocessor_config.json``, ``processor_config.json``) ->
    ``OvisConfig`` arguments, refusing what an ovis model cannot hold."""
    if not is_hf_ovis2_config(config):
        raise ConversionError(f"config.json model_type {config.get('model_type')!r} is not {HF_OVIS2_TYPE!r}")
    vision = _as_dict(config.get("vision_config") or {}, "vision_config")
    text = _as_dict(config.get("text_config") or {"model_type": "qwen2"}, "text_config")
    extras = ovis_extras(config, EXTRA_FIELDS)
    indicators = vision.get("num_visual_indicator_tokens", 5)
    if indicators != 5:
        raise UnsupportedError(f"vision_config.num_visual_indicator_tokens {indicators!r}: ovis's tiled layout has 5")
    tokenize_function = vision.get("tokenize_function", "softmax")
    if tokenize_function not in TOKENIZE_FUNCTIONS:
        raise ConversionError(
            f"vision_config.tokenize_function {tokenize_function!r}; expected one of {', '.join(TOKENIZE_FUNCTIONS)}"
        )
    vocab = _int(vision.get("vocab_size", 16384), "vision_config.vocab_size")
    stride = _int(vision.get("hidden_stride", 1), "vision_config.hidden_stride")
    text_type = text.get("model_type")
    if text_type not in TEXT_TYPES:
        raise UnsupportedError(
            f"text_config.model_type {text_type!r}: ovis reads hf-ovis2 checkpoints whose LLM is one of "
            f"{', '.join(TEXT_TYPES)} (a causal LM that is its base model plus lm_head)"
        )
    text_vocab = text.get("vocab_size")
    lm_rows = config.get("vocab_size", 151643)
    if text_vocab is not None and lm_rows != text_vocab:
        raise UnsupportedError(
            f"config.json vocab_size {lm_rows} (lm_head rows) differs from text_config.vocab_size {text_vocab} "
            "(embedding rows); ovis's LLM has one vocabulary for both"
        )
    if config.get("hidden_size") is not None and text.get("hidden_size") not in (None, config["hidden_size"]):
        raise ShapeMismatchError(
            f"config.json hidden_size {config['hidden_size']} differs from "
            f"text_config.hidden_size {text['hidden_size']}"
        )
    tie = bool(config.get("tie_word_embeddings", True))
    llm = {**text, "tie_word_embeddings": tie}
    image_size = _square(vision.get("image_size", 224), "vision_config.image_size")
    preprocess, max_partition, notes = tiling_from_image_processor(preprocessor, image_size)
    spec = vision_spec_from_hf(vision, preprocess)
    side = spec.image_size // spec.patch_size
    tokens_per_tile = (-(-side // stride)) ** 2
    if processor_config and processor_config.get("image_seq_length", tokens_per_tile) != tokens_per_tile:
        raise ShapeMismatchError(
            f"{PROCESSOR_CONFIG_FILE}: image_seq_length {processor_config['image_seq_length']} but the vision tower "
            f"gives {tokens_per_tile} tokens per view ({side} x {side} patches, hidden_stride {stride})"
        )
    chat_format = extras.get("chat_format") or DEFAULT_CHAT_FORMATS[text_type]
    indicator_ids = list(config.get("visual_indicator_token_ids", (151666, 151667, 151668, 151669, 151670)))
    if len(indicator_ids) != 5:
        raise ConversionError(f"config.json visual_indicator_token_ids {indicator_ids}: expected 5 ids")
    image_token_id = _int(config.get("image_token_id", 151665), "image_token_id")
    notes[:0] = [
        f"vision_config (AIMv2 trunk: {spec.num_layers} layers, width {spec.hidden_size}, patch {spec.patch_size}, "
        f"{spec.image_size} px) -> vision_spec for builder 'hf-aimv2-vision' with apply_final_norm (transformers' "
        "Ovis2VisionModel normalises the features)",
        f"vision_config.vocab_size {vocab}, hidden_stride {stride}, tokenize_function {tokenize_function} -> "
        "the tiled layout's structural adapter (5 indicator rows)",
        f"text_config ({text_type}) -> llm_config, tie_word_embeddings {tie}",
        f"image_token_id {image_token_id} and visual_indicator_token_ids {indicator_ids} -> ovis's image and "
        "indicator positions",
        f"chat format '{chat_format}'"
        + ("" if extras.get("chat_format") else f" (assumed for a {text_type} LLM; config.json names none)"),
    ]
    kwargs = structural_kwargs(
        llm,
        spec,
        vocab,
        tokenize_function,
        chat_format,
        tau=float(extras.get("tau", 1.0)),
        use_indicators=True,
        multimodal_max_length=int(extras.get("multimodal_max_length", 8192)),
        image_layout="tiled",
        hidden_stride=stride,
        max_partition=max_partition,
        covering_threshold=float(extras.get("covering_threshold", 0.9)),
        tile_resize=extras.get("tile_resize", "canvas"),
        dtype=config.get("dtype") or config.get("torch_dtype"),
    )
    return HfOvis2Translation(
        kwargs,
        spec,
        chat_format,
        notes,
        tokens_per_tile=tokens_per_tile,
        image_token_id=image_token_id,
        indicator_token_ids=indicator_ids,
    )


def read_hf_configs(directory: Path) -> tuple[dict, dict | None, dict | None]:
    """``config.json``, ``preprocessor_config.json`` and ``processor_config.json`` (the last two may be absent)."""
    config = read_json(directory / CONFIG_FILE, "the model config")
    pre = directory / PREPROCESSOR_FILE
    proc = directory / PROCESSOR_CONFIG_FILE
    processor = read_json(proc, "the processor config") if proc.is_file() else None
    # transformers 5 nests the image processor in processor_config.json; 4.x wrote preprocessor_config.json
    nested = processor.get("image_processor") if processor else None
    if isinstance(nested, Mapping):
        image = dict(nested)
    else:
        image = read_json(pre, "the image processor config") if pre.is_file() else None
    return config, image, processor


def state_from_hf(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """An hf-ovis2 state dict under ovis's names; a tensor ovis does not know is named."""
    out, unknown = {}, []
    for key, tensor in state.items():
        ours = from_hf_key(key)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = tensor
    if unknown:
        raise ShapeMismatchError(
            f"{source}: {len(unknown)} tensor(s) are not part of the hf-ovis2 layout, e.g. {', '.join(unknown[:3])}"
        )
    return out


class HfOvis2Checkpoint(ForeignCheckpoint):
    """A transformers Ovis2 (hf-ovis2) directory read and checked."""

    described = "a transformers Ovis2 checkpoint (hf-ovis2)"
    source_format = "hf-ovis2"

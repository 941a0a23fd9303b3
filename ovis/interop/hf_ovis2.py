"""Interop with transformers' native Ovis2 layout ("hf-ovis2", ``Ovis2ForConditionalGeneration``): load
one as an ovis model and write an ovis model in it. What the layout holds, and reading it, is the model
layer's (:mod:`ovis.model.ovis2_format`), so ``OvisForCausalLM.from_pretrained`` / ``ovis.load`` read
hf-ovis2 directories directly.

The layout expresses one kind of model: an AIMv2 trunk whose features pass its final RMSNorm, the
structural adapter in the tiled layout (five indicators, any ``hidden_stride``, softmax / st_argmax /
gumbel_argmax), an LLM that is a base model plus ``lm_head`` (Qwen2 / Qwen3 / Llama) and no visual
row scaling. Anything else is refused with the reason (:func:`check_expressible`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ovis.fsutil import atomic_directory, check_output_dir
from ovis.interop.foreign import load_foreign
from ovis.interop.v1_writer import weights_note, write_weights
from ovis.model.modeling_ovis import read_hf_ovis2
from ovis.model.ovis2_format import (
    AIMV2_POOL_HEAD,
    EXTRAS_KEY,
    HF_ARCHITECTURES,
    HF_OVIS2_TYPE,
    HF_OVIS2_VISION_TYPE,
    IMAGE_ATOM_TOKEN,
    IMAGE_MARKER_TOKEN,
    INDICATOR_TOKENS,
    TEXT_TYPES,
    VISION_FIELDS,
    to_hf_key,
)
from ovis.model.v1_format import _RESAMPLE_ID, CONFIG_FILE, UnsupportedError
from ovis.processing import load_hf_ovis2_processor

__all__ = ["check_expressible", "hf_ovis2_config", "hf_ovis2_state_dict", "load_hf_ovis2", "save_hf_ovis2"]

_AIMV2_BUILDER = "hf-aimv2-vision"


def load_hf_ovis2(directory: str | Path, *, dtype: str | torch.dtype | None = None):
    """``(model, processor, notes)`` from an hf-ovis2 directory."""
    model, processor, notes = load_foreign(directory, read_hf_ovis2, load_hf_ovis2_processor, dtype)
    return model, processor, notes


def check_expressible(model, *, keep_unnormalised: bool = False) -> list[str]:
    """Refuse (UnsupportedError, with the reason) a model the hf-ovis2 layout cannot express;
    returns notes on what is dropped. ``keep_unnormalised``: write an AIMv2 model that does not
    apply the final RMSNorm anyway (transformers will apply it: its outputs differ from ovis's)."""
    config = model.config
    spec = model.backbone.spec
    why = None
    if spec.builder != _AIMV2_BUILDER:
        why = (
            f"its vision backbone {spec.name!r} (builder {spec.builder!r}) is not AIMv2: transformers' "
            "Ovis2VisionModel is an AIMv2 trunk (builder 'hf-aimv2-vision')"
        )
    elif config.adapter != "structural":
        why = f"adapter {config.adapter!r}: Ovis2 has the structural adapter (visual tokenizer + embedding table) only"
    elif getattr(config, "image_layout", "v1") != "tiled":
        why = (
            "the v1 image layout (one square, 2 indicators): Ovis2 uses the tiled layout with 5 indicators "
            "(compose with --image-layout tiled)"
        )
    elif config.llm_config.model_type not in TEXT_TYPES:
        why = (
            f"LLM type {config.llm_config.model_type!r}: Ovis2ForConditionalGeneration rebuilds the causal LM "
            f"as base model + lm_head, which is exact for {', '.join(TEXT_TYPES)} only"
        )
    elif getattr(config, "visual_embedding_scale", 1.0) != 1.0:
        why = f"visual_embedding_scale {config.visual_embedding_scale}: Ovis2 does not scale visual rows"
    elif spec.architecture.get("is_native", False):
        why = "AIMv2 with native (sinusoidal) positions: Ovis2's trunk has a learned position table"
    if why:
        raise UnsupportedError(f"the hf-ovis2 layout cannot express this model: {why}")
    notes = []
    if not spec.architecture.get("apply_final_norm", False):
        if not keep_unnormalised:
            raise UnsupportedError(
                "the hf-ovis2 layout cannot express this model: its AIMv2 features are taken before the final "
                "RMSNorm (as the AIDC-AI Ovis2 release does), but transformers' Ovis2VisionModel applies that norm. "
                "Use --to ovis2 (the release layout) or --keep-unnormalised to write it anyway (its outputs in "
                "transformers will then differ)"
            )
        notes.append(
            "AIMv2 features: this model skips the final RMSNorm but transformers' Ovis2VisionModel applies "
            "it, so the written model's outputs differ (--keep-unnormalised)"
        )
    return notes


def hf_ovis2_config(model, chat_format: str | None, ids: dict[str, int]) -> dict:
    """The hf-ovis2 ``config.json`` of an ovis model (``ids``: token name -> id in its tokenizer)."""
    import transformers
    from transformers import Aimv2VisionConfig

    config = model.config
    arch = Aimv2VisionConfig(**{k: v for k, v in model.backbone.spec.architecture.items() if k in VISION_FIELDS})
    vision = {k: getattr(arch, k) for k in VISION_FIELDS}
    vision.update(
        model_type=HF_OVIS2_VISION_TYPE,
        vocab_size=config.visual_vocab_size,
        hidden_stride=config.hidden_stride,
        num_visual_indicator_tokens=5,
        tokenize_function=config.tokenize_function,
    )
    text = config.llm_config.to_dict()
    tie = bool(getattr(config.llm_config, "tie_word_embeddings", False))
    text["tie_word_embeddings"] = tie
    extras = {
        "chat_format": chat_format or config.chat_format,
        "tile_resize": config.tile_resize,
        "covering_threshold": config.covering_threshold,
        "tau": config.tau,
        "multimodal_max_length": config.multimodal_max_length,
    }
    return {
        "architectures": list(HF_ARCHITECTURES),
        "model_type": HF_OVIS2_TYPE,
        "vision_config": vision,
        "text_config": text,
        "image_token_id": ids[IMAGE_ATOM_TOKEN],
        "visual_indicator_token_ids": [ids[name] for name in INDICATOR_TOKENS],
        "vocab_size": config.llm_config.vocab_size,
        "hidden_size": config.llm_config.hidden_size,
        "tie_word_embeddings": tie,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        EXTRAS_KEY: extras,
        "transformers_version": transformers.__version__,
    }


def hf_ovis2_state_dict(model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's tensors under hf-ovis2 names (a tied ``lm_head`` left to transformers to tie)."""
    state, notes = {}, []
    tied = bool(getattr(model.config.llm_config, "tie_word_embeddings", False))
    dropped = []
    for key, tensor in model.state_dict().items():
        if tied and key == "llm.lm_head.weight":
            continue
        name = to_hf_key(key)
        if name is None:
            if not key.startswith(AIMV2_POOL_HEAD):
                raise UnsupportedError(f"the hf-ovis2 layout has no tensor for {key!r}")
            dropped.append(key)
            continue
        state[name] = tensor
    if dropped:
        notes.append(
            f"AIMv2's attention-pooling head (unused by the features; no hf-ovis2 tensor) dropped: "
            f"{len(dropped)} tensor(s)"
        )
    return state, notes


def _tokenizer_with_ovis2_tokens(tokenizer, rows: int, directory: Path) -> tuple[object, dict[str, int], list[str]]:
    """A copy of ``tokenizer`` (saved to and read back from ``directory``) holding transformers' Ovis2
    tokens; their ids must fall inside the LLM's ``rows`` embedding rows."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(directory)
    copy = AutoTokenizer.from_pretrained(str(directory))
    names = [IMAGE_ATOM_TOKEN, *INDICATOR_TOKENS, IMAGE_MARKER_TOKEN]
    vocab = copy.get_vocab()
    missing = [name for name in names if name not in vocab]
    notes = []
    if missing:
        copy.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        notes.append(f"tokenizer: added {', '.join(missing)} (transformers' Ovis2Processor tokens)")
    ids = {name: copy.convert_tokens_to_ids(name) for name in names}
    too_big = {name: i for name, i in ids.items() if i >= rows}
    if too_big:
        raise UnsupportedError(
            f"the hf-ovis2 layout looks up its image and indicator tokens in the LLM's embedding table, which has "
            f"{rows} rows, but the tokenizer gives them ids {too_big}; use an LLM whose table has spare rows "
            "(Qwen2.5's does)"
        )
    return copy, ids, notes


def _image_processor_config(processor, config) -> dict:
    spec = processor.image_processor.spec
    side = spec.image_size
    return {
        "image_processor_type": "Ovis2ImageProcessor",
        "crop_to_patches": config.max_partition > 1,
        "min_patches": 1,
        "max_patches": config.max_partition,
        "use_covering_area_grid": True,
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": side, "width": side},
        "resample": _RESAMPLE_ID[spec.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(spec.mean),
        "image_std": list(spec.std),
    }


def save_hf_ovis2(
    model,
    processor,
    out: str | Path,
    *,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    keep_unnormalised: bool = False,
) -> list[str]:
    """Write ``model`` and ``processor`` to ``out`` in transformers' Ovis2 layout, atomically: config.json,
    safetensors weights, the tokenizer with Ovis2Processor's tokens, ``preprocessor_config.json``
    (Ovis2ImageProcessor), ``processor_config.json``, the chat template and ``generation_config.json``.
    Returns notes on what was mapped."""
    out = Path(out).expanduser()
    check_output_dir(out, overwrite=overwrite)
    notes = check_expressible(model, keep_unnormalised=keep_unnormalised)
    state, more = hf_ovis2_state_dict(model)
    notes += more
    config = model.config
    with atomic_directory(out) as tmp:
        tokenizer, ids, more = _tokenizer_with_ovis2_tokens(processor.tokenizer, config.llm_config.vocab_size, tmp)
        notes += more
        tokenizer.save_pretrained(tmp)
        chat = processor.chat_format.name
        hf_config = hf_ovis2_config(model, chat, ids)
        names = write_weights(state, tmp, max_shard_size=max_shard_size, safetensors=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(_image_processor_config(processor, config), indent=2, sort_keys=True) + "\n"
        )
        processor_config = {"processor_class": "Ovis2Processor", "image_seq_length": model.tokens_per_tile}
        (tmp / "processor_config.json").write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")
        if tokenizer.chat_template:
            (tmp / "chat_template.jinja").write_text(tokenizer.chat_template)
        model.llm.generation_config.save_pretrained(tmp)
    notes.append(weights_note(state, names))
    notes.append(
        f"image positions: {IMAGE_ATOM_TOKEN} = {ids[IMAGE_ATOM_TOKEN]}, indicators "
        f"{[ids[n] for n in INDICATOR_TOKENS]}; chat format '{chat}' kept in config.json's '{EXTRAS_KEY}'"
    )
    if config.tile_resize != "canvas" or config.covering_threshold != 0.9:
        notes.append(
            f"tiling: this model fits views by '{config.tile_resize}' with covering_threshold "
            f"{config.covering_threshold}; transformers' Ovis2ImageProcessor uses 'canvas' and 0.9 (ovis reads "
            f"the model's own back from config.json's '{EXTRAS_KEY}')"
        )
    return notes

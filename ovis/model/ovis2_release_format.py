"""The original AIDC-AI Ovis2 release layout ("ovis2"): detect it, translate its config, map its
tensor names, read one as an ovis model.

An Ovis2 release directory (``AIDC-AI/Ovis2-1B`` ... ``-34B``, remote code) holds:

* ``config.json``: ``model_type: "ovis"``, ``architectures: ["Ovis"]``, ``auto_map``, ``llm_config``,
  ``visual_tokenizer_config`` of ``model_type: "aimv2_visual_tokenizer"`` (``vocab_size``,
  ``tokenize_function``, ``tau``, ``hidden_stride``, ``drop_cls_token`` false, ``depths`` and
  ``backbone_config``, an ``aimv2`` dict: ``hidden_size``, ``intermediate_size``,
  ``num_hidden_layers``, ``num_attention_heads``, ``num_channels``, ``image_size``, ``patch_size``,
  ``rms_norm_eps``, ``attention_dropout``, ``projection_dropout``, ``qkv_bias``, ``use_bias``),
  ``multimodal_max_length``, ``hidden_size`` and ``conversation_formatter_class``;
* weights under ovis's names (``llm.*``, ``visual_tokenizer.head.0/1``, ``vte.weight``) except the
  AIMv2 trunk, which is Apple's own module layout: ``preprocessor.patchifier.proj`` / ``.norm``,
  ``preprocessor.pos_embed`` ``[1, N, D]``, ``trunk.blocks.i.attn.qkv`` (q, k, v fused along the
  output rows), ``attn.proj``, ``norm_1`` / ``norm_2``, ``mlp.fc1`` (gate, through SiLU), ``mlp.fc3``
  (up), ``mlp.fc2`` (down) and ``trunk.post_trunk_norm`` (stored, not applied: the features are
  the last block's output, what ovis's AIMv2 backbone gives without ``apply_final_norm``);
* the tokenizer and a ``CLIPImageProcessor`` ``preprocessor_config.json``. Tiling (``max_partition``,
  9 for Ovis2) is a call argument in the release's code, not part of the checkpoint.

Sources: the release's configuration classes as vLLM and the AIDC-AI/Ovis repository copy them
(``vllm/transformers_utils/configs/ovis.py``, ``ovis/vllm/aimv2/modeling_aimv2.py``); the release's
own ``modeling_ovis.py`` was not available offline, so the Ovis2 prompt format is taken to be its
``QwenConversationFormatter`` (ovis's ``chatml``) as that copy shows. ``siglip_visual_tokenizer``
(Ovis 1.6) checkpoints are recognised and refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ovis.model.ovis2_format import aimv2_spec, ovis_extras
from ovis.model.v1_format import (
    RELEASE_TOKENIZER_TYPES,
    ConfigTranslation,
    ConversionError,
    ShapeMismatchError,
    UnsupportedError,
    _as_dict,
    _number,
    _square_size,
    chat_format_for,
    holds_config,
    llm_config_of,
    ovis_config_kwargs,
    preprocess_from_clip_processor,
    refuses_bad_values,
    visual_vocab_size,
)
from ovis.model.v1_weights import ForeignCheckpoint
from ovis.model.visual_tokenizer import TOKENIZE_FUNCTIONS

AIMV2_TOKENIZER_TYPE = "aimv2_visual_tokenizer"
AIMV2_BACKBONE_TYPE = "aimv2"
EXTRA_FIELDS = ("max_partition", "covering_threshold", "tile_resize", "chat_format")
#: the release's AIMv2Config fields and their defaults
AIMV2_DEFAULTS = {
    "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24, "num_attention_heads": 8,
    "num_channels": 3, "image_size": 224, "patch_size": 14, "rms_norm_eps": 1e-5, "attention_dropout": 0.0,
    "projection_dropout": 0.0, "qkv_bias": False, "use_bias": False,
}  # fmt: skip
OURS = "visual_tokenizer.backbone.vision_model."
THEIRS = "visual_tokenizer.backbone."
#: per-block names: release -> ovis (transformers Aimv2), the fused qkv aside
_BLOCK = {"attn.proj": "attention.out_proj", "norm_1": "rms_norm1", "norm_2": "rms_norm2",
          "mlp.fc1": "ffn.gate_proj", "mlp.fc3": "ffn.up_proj", "mlp.fc2": "ffn.down_proj"}  # fmt: skip
_TOP = {"preprocessor.patchifier.proj": "embeddings.patch_embed", "preprocessor.patchifier.norm": "embeddings.rms_norm",
        "trunk.post_trunk_norm": "rms_norm"}  # fmt: skip
_POS_THEIRS, _POS_OURS = "preprocessor.pos_embed", "embeddings.position_embedding.weight"


def is_release_config(config: Mapping[str, Any]) -> bool:
    """An Ovis 1.6 / Ovis2 release config: ``model_type`` ovis, no ovis ``vision_spec``, a
    ``visual_tokenizer_config`` of one of :data:`RELEASE_TOKENIZER_TYPES`."""
    vt = config.get("visual_tokenizer_config")
    return (
        config.get("model_type", "ovis") == "ovis"
        and not config.get("vision_spec")
        and isinstance(vt, Mapping)
        and vt.get("model_type") in RELEASE_TOKENIZER_TYPES
    )


def is_release_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a local directory holding an Ovis2 release ``config.json`` (never raises)."""
    return holds_config(path, is_release_config)


# -- tensors ------------------------------------------------------------------------------------------


def _rename(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old) :]
    return None


def state_from_release(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Release tensor names -> ovis's (fused qkv split into q, k, v; ``pos_embed`` squeezed)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(THEIRS):
            out[key] = tensor
            continue
        name = key[len(THEIRS) :]
        if name == _POS_THEIRS:
            out[OURS + _POS_OURS] = tensor.reshape(tensor.shape[-2], tensor.shape[-1])
            continue
        renamed = _rename(name, _TOP)
        if renamed is None and name.startswith("trunk.blocks."):
            index, rest = name[len("trunk.blocks.") :].split(".", 1)
            prefix = f"encoder.layers.{index}."
            if rest.startswith("attn.qkv."):
                if tensor.shape[0] % 3:
                    raise ShapeMismatchError(f"{source}: {key} has {tensor.shape[0]} rows, not 3 x the width")
                for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                    out[OURS + prefix + f"attention.{part}_proj." + rest[len("attn.qkv.") :]] = chunk.clone()
                continue
            inner = _rename(rest, _BLOCK)
            renamed = prefix + inner if inner is not None else None
        if renamed is None:
            raise ShapeMismatchError(f"{source}: tensor {key!r} is not part of the Ovis2 release's AIMv2 layout")
        out[OURS + renamed] = tensor
    return out


def state_to_release(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ovis tensor names -> the release's (q, k, v fused; ``pos_embed`` as ``[1, N, D]``)."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(OURS):
            out[key] = tensor
            continue
        name = key[len(OURS) :]
        if name == _POS_OURS:
            out[THEIRS + _POS_THEIRS] = tensor.unsqueeze(0)
            continue
        renamed = _rename(name, top)
        if renamed is None and name.startswith("encoder.layers."):
            index, rest = name[len("encoder.layers.") :].split(".", 1)
            if rest.startswith(("attention.q_proj.", "attention.k_proj.", "attention.v_proj.")):
                if rest.startswith("attention.q_proj."):
                    suffix = rest[len("attention.q_proj.") :]
                    parts = [state[f"{OURS}encoder.layers.{index}.attention.{p}_proj.{suffix}"] for p in "qkv"]
                    out[f"{THEIRS}trunk.blocks.{index}.attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
                continue
            inner = _rename(rest, block)
            renamed = f"trunk.blocks.{index}.{inner}" if inner is not None else None
        if renamed is None:
            raise UnsupportedError(f"the Ovis2 release's AIMv2 layout has no tensor for {key!r}")
        out[THEIRS + renamed] = tensor
    return out


# -- config -------------------------------------------------------------------------------------------


def aimv2_architecture(backbone: Mapping[str, Any]) -> dict[str, Any]:
    """A release ``backbone_config`` (``aimv2``) -> the hf-aimv2-vision builder's architecture."""
    if backbone.get("model_type") != AIMV2_BACKBONE_TYPE:
        raise UnsupportedError(
            f"visual_tokenizer_config.backbone_config.model_type {backbone.get('model_type')!r}: the Ovis2 "
            f"release's AIMv2 tokenizer uses {AIMV2_BACKBONE_TYPE!r}"
        )
    values = {k: backbone.get(k, default) for k, default in AIMV2_DEFAULTS.items()}
    if values["qkv_bias"] != values["use_bias"]:
        raise UnsupportedError(
            f"backbone_config qkv_bias {values['qkv_bias']} with use_bias {values['use_bias']}: transformers' AIMv2 "
            "gives the attention output projection the qkv bias setting, so the two must agree"
        )
    arch = {k: values[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "num_channels", "rms_norm_eps", "attention_dropout", "qkv_bias")}  # fmt: skip
    arch["image_size"] = _square_size(values["image_size"], "backbone_config image_size")
    arch["patch_size"] = _square_size(values["patch_size"], "backbone_config patch_size")
    arch.update(mlp_bias=values["use_bias"], hidden_act="silu", use_head=False)
    return arch


@refuses_bad_values
def translate_release_config(
    config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None, *, host=None
) -> ConfigTranslation:
    """An Ovis2 release ``config.json`` (+ its CLIPImageProcessor config) -> ``OvisConfig`` arguments."""
    vt = _as_dict(config.get("visual_tokenizer_config"), "visual_tokenizer_config")
    if vt.get("model_type") != AIMV2_TOKENIZER_TYPE:
        raise UnsupportedError(
            f"visual_tokenizer_config.model_type {vt.get('model_type')!r}: ovis reads the Ovis2 release layout "
            f"({AIMV2_TOKENIZER_TYPE!r}); Ovis 1.6's SigLIP tokenizer is not converted yet"
        )
    extras = ovis_extras(config, EXTRA_FIELDS)
    if vt.get("drop_cls_token"):
        raise UnsupportedError("visual_tokenizer_config.drop_cls_token true: AIMv2 has no CLS token to drop")
    tokenize_function = vt.get("tokenize_function", "softmax")
    if tokenize_function not in TOKENIZE_FUNCTIONS:
        raise ConversionError(f"visual_tokenizer_config.tokenize_function {tokenize_function!r}; expected one of "
                              f"{', '.join(TOKENIZE_FUNCTIONS)}")  # fmt: skip
    vocab = visual_vocab_size(vt)
    stride = _number(vt.get("hidden_stride", 1), "visual_tokenizer_config.hidden_stride", int)
    backbone = _as_dict(vt.get("backbone_config") or {}, "visual_tokenizer_config.backbone_config")
    arch = aimv2_architecture(backbone)
    depths = vt.get("depths")
    if depths:
        if len(depths) != 1:
            raise UnsupportedError(f"visual_tokenizer_config.depths {depths}: the release takes one depth")
        arch["num_hidden_layers"] = int(depths[0])  # the release builds this many blocks
    llm = llm_config_of(config)
    chat_format = extras.get("chat_format") or chat_format_for(config.get("conversation_formatter_class"), host)
    preprocess, notes = preprocess_from_clip_processor(preprocessor, arch["image_size"])
    spec = aimv2_spec(
        arch,
        preprocess,
        name="aimv2-ovis2-release",
        description=("AIMv2 trunk of an AIDC-AI Ovis2 release checkpoint (features before the final norm)"),
    )
    max_partition = int(extras.get("max_partition", 9))
    notes[:0] = [
        f"visual_tokenizer_config.backbone_config (aimv2: {spec.num_layers} layers, width {spec.hidden_size}, "
        f"patch {spec.patch_size}, {spec.image_size} px) -> vision_spec for builder 'hf-aimv2-vision' (features "
        "before the final norm, as the release takes them)",
        f"visual_tokenizer_config.vocab_size {vocab}, hidden_stride {stride}, tokenize_function {tokenize_function} "
        "-> the tiled layout (5 indicator rows)",
        f"conversation_formatter_class {config.get('conversation_formatter_class')} -> chat format '{chat_format}'",
        f"tiling: max_partition {max_partition}"
        + ("" if "max_partition" in extras else " (the Ovis2 default; the release passes it per call)"),
    ]
    kwargs = ovis_config_kwargs(
        config,
        vt,
        llm,
        spec,
        vocab,
        tokenize_function,
        chat_format,
        use_indicators=True,
        max_length=8192,
        image_layout="tiled",
        hidden_stride=stride,
        max_partition=max_partition,
        covering_threshold=float(extras.get("covering_threshold", 0.9)),
        tile_resize=extras.get("tile_resize", "pad"),
    )
    return ConfigTranslation(kwargs, spec, chat_format, notes)


class ReleaseCheckpoint(ForeignCheckpoint):
    """An AIDC-AI Ovis2 release directory read and checked."""

    described = "an AIDC-AI Ovis2 release checkpoint"
    source_format = "ovis2"

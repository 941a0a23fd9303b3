"""Interop with the original AIDC-AI Ovis2 release layout ("ovis2": remote-code ``Ovis``,
``aimv2_visual_tokenizer``): load one as an ovis model and write an ovis model in it. What the layout
holds, and reading it, is :mod:`ovis.model.ovis2_release_format`'s.

The layout expresses: an AIMv2 tower whose features are taken before the final norm (the release's
choice), the structural adapter in the tiled layout, and a chat format with a release formatter class
(``conversation_formatter_class``). The release cuts ``pad`` tiles; ovis's tiling settings are kept in
config.json under ``"ovis"`` so a round trip is exact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ovis.fsutil import atomic_directory, check_output_dir
from ovis.interop.v1_writer import legacy_llm_config, original_preprocessor_config, write_weights
from ovis.model import OvisForCausalLM
from ovis.model.modeling_ovis import read_release
from ovis.model.ovis2_format import EXTRAS_KEY
from ovis.model.ovis2_release_format import (
    AIMV2_BACKBONE_TYPE,
    AIMV2_DEFAULTS,
    AIMV2_TOKENIZER_TYPE,
    state_to_release,
)
from ovis.model.v1_format import (
    AUTO_MAP,
    CONFIG_FILE,
    ORIGINAL_ARCHITECTURES,
    PREPROCESSOR_FILE,
    ConversionError,
    UnsupportedError,
)
from ovis.processing import load_release_processor

__all__ = ["load_release", "release_config", "save_release"]


def load_release(directory: str | Path, *, dtype: str | torch.dtype | None = None):
    """``(model, processor, notes)`` from an AIDC-AI Ovis2 release directory."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    checkpoint = read_release(directory)
    model = OvisForCausalLM.from_pretrained(None, config=checkpoint.config, state_dict=checkpoint.state, **kwargs)
    notes = list(checkpoint.notes)
    processor = load_release_processor(directory, notes)
    return model, processor, notes


def release_config(model, chat_format) -> dict:
    """The release ``config.json`` of an ovis model, refusing what the release cannot express."""
    import transformers

    config = model.config
    spec = model.backbone.spec
    arch = spec.architecture
    why = None
    if spec.builder != "hf-aimv2-vision":
        why = f"its vision backbone {spec.name!r} is not AIMv2 (the release's {AIMV2_TOKENIZER_TYPE})"
    elif config.adapter != "structural":
        why = f"adapter {config.adapter!r}: the release has the structural adapter only"
    elif config.image_layout != "tiled":
        why = "the v1 image layout: the Ovis2 release uses the tiled layout with 5 indicators"
    elif arch.get("apply_final_norm", False):
        why = "its AIMv2 applies the final norm (read from hf-ovis2); the release takes the features before it"
    elif arch.get("is_native", False):
        why = "AIMv2 with native (sinusoidal) positions: the release's trunk has a learned position table"
    elif arch.get("hidden_act", "silu") != "silu":
        why = f"AIMv2 hidden_act {arch['hidden_act']!r}: the release's SwiGLU uses silu"
    elif arch.get("qkv_bias", False) != arch.get("mlp_bias", False):
        why = "AIMv2 qkv_bias differs from mlp_bias: the release has one use_bias for the projection and the MLP"
    formatter = getattr(chat_format, "v1_formatter_class", None) or config.conversation_formatter_class
    if not why and not formatter:
        why = (f"chat format {getattr(chat_format, 'name', config.chat_format)!r} has no release "
               "conversation_formatter_class (e.g. chatml -> QwenConversationFormatter; the Ovis2 releases "
               "prompt Qwen2.5 with chatml: compose with --chat-format chatml)")  # fmt: skip
    if why:
        raise UnsupportedError(f"the Ovis2 release layout cannot express this model: {why}")
    backbone = {k: arch.get(k, default) for k, default in AIMV2_DEFAULTS.items() if k != "use_bias"}
    backbone.update(model_type=AIMV2_BACKBONE_TYPE, use_bias=arch.get("mlp_bias", False), projection_dropout=0.0)
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
            "model_type": AIMV2_TOKENIZER_TYPE,
            "vocab_size": config.visual_vocab_size,
            "tokenize_function": config.tokenize_function,
            "tau": config.tau,
            "depths": None,
            "drop_cls_token": False,
            "hidden_stride": config.hidden_stride,
            "backbone_config": backbone,
        },
        EXTRAS_KEY: {
            "max_partition": config.max_partition,
            "covering_threshold": config.covering_threshold,
            "tile_resize": config.tile_resize,
            "chat_format": getattr(chat_format, "name", config.chat_format),
        },
        "torch_dtype": dtype,
        "transformers_version": transformers.__version__,
    }


def save_release(
    model,
    processor,
    out: str | Path,
    *,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
    code_from: str | Path | None = None,
) -> list[str]:
    """Write ``model`` and ``processor`` to ``out`` in the AIDC-AI Ovis2 release layout, atomically
    (config.json, safetensors shards, the tokenizer, a CLIPImageProcessor config; ``code_from``: copy
    the ``*.py`` of a release checkpoint beside, for ``trust_remote_code`` loaders)."""
    out = Path(out).expanduser()
    check_output_dir(out, overwrite=overwrite)
    config = release_config(model, processor.chat_format)
    preprocessor = original_preprocessor_config(processor.image_processor.spec)
    state = state_to_release(model.state_dict())
    code = sorted(Path(code_from).glob("*.py")) if code_from else []
    if code_from and not code:
        raise ConversionError(f"--code-from {code_from}: no *.py files there")
    notes = []
    if model.config.tile_resize != "pad":
        notes.append(f"tile_resize {model.config.tile_resize!r}: the release's code cuts 'pad' tiles (ovis reads "
                     f"this model's own back from config.json's '{EXTRAS_KEY}')")  # fmt: skip
    with atomic_directory(out) as tmp:
        names = write_weights(state, tmp, max_shard_size=max_shard_size, safetensors=True)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        processor.tokenizer.save_pretrained(tmp)
        (tmp / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")
        model.llm.generation_config.save_pretrained(tmp)
        for path in code:
            shutil.copy2(path, tmp / path.name)
    notes.append(f"wrote {len(state)} tensors in {len(names)} file(s): {names[0]}{' ...' if len(names) > 1 else ''}; "
                 "AIMv2 trunk in the release's names (q/k/v fused into attn.qkv)")  # fmt: skip
    notes.append(f"chat format -> conversation_formatter_class {config['conversation_formatter_class']}")
    return notes

"""Interop with the original AIDC-AI Ovis2 release layout ("ovis2": remote-code ``Ovis``,
``aimv2_visual_tokenizer``): load one as an ovis model and write an ovis model in it. What the layout
holds, and reading it, is :mod:`ovis.model.ovis2_release_format`'s.

The layout expresses: an AIMv2 tower whose features are taken before the final norm (the release's
choice), the structural adapter in the tiled layout, and a chat format with a release formatter class
(``conversation_formatter_class``). The release cuts ``pad`` tiles; ovis's tiling settings are kept in
config.json under ``"ovis"`` so a round trip is exact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ovis.fsutil import check_output_dir
from ovis.interop.foreign import load_foreign
from ovis.interop.v1_writer import (
    original_preprocessor_config,
    remote_code_config,
    weights_note,
    write_remote_code_checkpoint,
)
from ovis.model.modeling_ovis import read_release
from ovis.model.ovis2_format import EXTRAS_KEY
from ovis.model.ovis2_release_format import (
    AIMV2_BACKBONE_TYPE,
    AIMV2_DEFAULTS,
    AIMV2_TOKENIZER_TYPE,
    state_to_release,
)
from ovis.model.v1_format import (
    UnsupportedError,
)
from ovis.processing import load_release_processor

__all__ = ["load_release", "release_config", "save_release"]


def load_release(directory: str | Path, *, dtype: str | torch.dtype | None = None):
    """``(model, processor, notes)`` from an AIDC-AI Ovis2 release directory."""
    model, processor, notes = load_foreign(directory, read_release, load_release_processor, dtype)
    return model, processor, notes


def release_config(model, chat_format) -> dict:
    """The release ``config.json`` of an ovis model, refusing what the release cannot express."""
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
    written = remote_code_config(
        model,
        formatter,
        AIMV2_TOKENIZER_TYPE,
        drop_cls_token=False,
        hidden_stride=config.hidden_stride,
        backbone_config=backbone,
    )
    written[EXTRAS_KEY] = {
        "max_partition": config.max_partition,
        "covering_threshold": config.covering_threshold,
        "tile_resize": config.tile_resize,
        "chat_format": getattr(chat_format, "name", config.chat_format),
    }
    return written


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
    names, _ = write_remote_code_checkpoint(
        out, model, processor, config, preprocessor, state, max_shard_size, safetensors=True, code_from=code_from
    )
    notes = []
    if model.config.tile_resize != "pad":
        notes.append(f"tile_resize {model.config.tile_resize!r}: the release's code cuts 'pad' tiles (ovis reads "
                     f"this model's own back from config.json's '{EXTRAS_KEY}')")  # fmt: skip
    notes.append(f"{weights_note(state, names)}; AIMv2 trunk in the release's names (q/k/v fused into attn.qkv)")
    notes.append(f"chat format -> conversation_formatter_class {config['conversation_formatter_class']}")
    return notes

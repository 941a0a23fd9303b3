"""One CLIP ViT, three state-dict layouts: Hugging Face transformers, open_clip and timm.

The three libraries build the same network (pre-norm ViT, class token, learned positions, a patch
convolution without bias, ``ln_pre`` before the blocks and ``ln_post`` after them) and name its
weights differently:

=================================  =====================================  ===========================
transformers (``vision_model.``)   open_clip (``visual.``)                 timm (``trunk.``)
=================================  =====================================  ===========================
embeddings.class_embedding [D]     class_embedding [D]                    cls_token [1, 1, D]
embeddings.patch_embedding         conv1                                  patch_embed.proj
embeddings.position_embedding      positional_embedding [N+1, D]          pos_embed [1, N+1, D]
  .weight [N+1, D]
pre_layrnorm                       ln_pre                                 norm_pre
encoder.layers.i.self_attn         transformer.resblocks.i.attn           blocks.i.attn.qkv
  .{q,k,v}_proj (three)              .in_proj_{weight,bias} (fused q|k|v)   (fused q|k|v)
  .out_proj                          .out_proj                              blocks.i.attn.proj
encoder.layers.i.layer_norm1/2     transformer.resblocks.i.ln_1/2         blocks.i.norm1/2
encoder.layers.i.mlp.fc1/fc2       transformer.resblocks.i.mlp.c_fc/c_proj  blocks.i.mlp.fc1/fc2
post_layernorm                     ln_post                                norm
(none)                             proj [D, E] (image projection)         (none)
=================================  =====================================  ===========================

The prefixes are those of the ovis backbones (``HFCLIPVision.vision_model``,
``OpenCLIPVision.visual``, ``TimmViT.trunk``), so a backbone's ``state_dict()`` converts as is.
Conversion goes through the transformers layout; a key that fits none of the rows is an error
(nothing is dropped silently) except open_clip's ``proj``, which the patch features do not use and
which the other two layouts have no place for: it is reported in ``dropped``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ovis.errors import OvisError

Layout = Literal["hf", "open_clip", "timm"]
LAYOUTS: tuple[Layout, ...] = ("hf", "open_clip", "timm")
#: the attribute each ovis backbone keeps its encoder under
PREFIXES: dict[str, str] = {"hf": "vision_model.", "open_clip": "visual.", "timm": "trunk."}
#: the ovis vision builders whose encoders have these layouts (CLIP towers only)
BUILDER_LAYOUTS: dict[str, Layout] = {"hf-clip-vision": "hf", "open_clip": "open_clip", "timm-vit": "timm"}
#: keys of a layout that the patch features do not use and that no other layout holds
ONLY_IN: dict[str, tuple[str, ...]] = {"open_clip": ("proj",)}


class ViTLayoutError(OvisError, ValueError):
    """A state dict that is not a plain CLIP ViT in the layout it was said to be in."""


@dataclass
class ViTConversion:
    state: dict[str, torch.Tensor]
    #: source keys with no counterpart in the target layout (open_clip's unused ``proj``)
    dropped: list[str] = field(default_factory=list)


# -- per-layout renames to and from the transformers names (without prefixes) --------------------
_HF_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_TIMM_LAYER = re.compile(r"^blocks\.(\d+)\.(.+)$")

_OC_TOP = {
    "class_embedding": "embeddings.class_embedding",
    "conv1.weight": "embeddings.patch_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
_OC_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OC_FUSED = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}

_TIMM_TOP = {
    "cls_token": "embeddings.class_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "pos_embed": "embeddings.position_embedding.weight",
    "norm_pre.weight": "pre_layrnorm.weight",
    "norm_pre.bias": "pre_layrnorm.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_TIMM_BLOCK = {
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_TIMM_FUSED = {"attn.qkv.weight": "weight", "attn.qkv.bias": "bias"}

_HF_TOP = {
    "embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
    "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias",
}
_HF_BLOCK = set(_OC_BLOCK.values()) | {f"self_attn.{p}_proj.{t}" for p in "qkv" for t in ("weight", "bias")}


def _strip(state: Mapping[str, torch.Tensor], prefix: str, layout: str) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(state)
    wrong = [k for k in state if not k.startswith(prefix)]
    if wrong:
        raise ViTLayoutError(
            f"not a {layout} ViT state dict: {len(wrong)} key(s) lack the prefix {prefix!r}, e.g. {wrong[0]!r}"
        )
    return {k[len(prefix):]: v for k, v in state.items()}


def _unknown(layout: str, keys: list[str]) -> ViTLayoutError:
    shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
    return ViTLayoutError(
        f"{len(keys)} key(s) are not part of a CLIP ViT in the {layout} layout: {shown} "
        "(only plain CLIP towers convert: class token, pre-norm, no layer scale or pooling head)"
    )


def _split_qkv(fused: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if fused.shape[0] % 3:
        raise ViTLayoutError(f"{key}: fused q/k/v of shape {tuple(fused.shape)} does not split in three")
    return tuple(t.clone() for t in fused.chunk(3, dim=0))  # type: ignore[return-value]


def _from_fused_layout(
    state: dict[str, torch.Tensor],
    layout: str,
    top: dict[str, str],
    block_pattern: re.Pattern,
    block: dict[str, str],
    fused: dict[str, str],
    reshape: Callable[[str, torch.Tensor], torch.Tensor],
) -> ViTConversion:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key in top:
            out[top[key]] = reshape(top[key], value)
            continue
        match = block_pattern.match(key)
        if match:
            layer, rest = match.groups()
            base = f"encoder.layers.{layer}"
            if rest in block:
                out[f"{base}.{block[rest]}"] = value
                continue
            if rest in fused:
                kind = fused[rest]
                for name, part in zip("qkv", _split_qkv(value, key), strict=True):
                    out[f"{base}.self_attn.{name}_proj.{kind}"] = part
                continue
        if key in ONLY_IN.get(layout, ()):
            dropped.append(key)
            continue
        unknown.append(key)
    if unknown:
        raise _unknown(layout, unknown)
    return ViTConversion(out, dropped)


def _to_fused_layout(
    state: dict[str, torch.Tensor],
    top: dict[str, str],
    block_prefix: str,
    block: dict[str, str],
    fused: dict[str, str],
    reshape: Callable[[str, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    top_inv = {v: k for k, v in top.items()}
    block_inv = {v: k for k, v in block.items()}
    fused_inv = {v: k for k, v in fused.items()}
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in top_inv:
            out[top_inv[key]] = reshape(key, value)
            continue
        match = _HF_LAYER.match(key)
        if match:
            layer, rest = match.groups()
            if rest in block_inv:
                out[f"{block_prefix}{layer}.{block_inv[rest]}"] = value
                continue
            parts = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if parts:
                qkv.setdefault((layer, parts.group(2)), {})[parts.group(1)] = value
                continue
        unknown.append(key)
    if unknown:
        raise _unknown("hf", unknown)
    for (layer, kind), parts in sorted(qkv.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise ViTLayoutError(f"layer {layer}: self_attn {kind} of {', '.join(missing)} missing; cannot fuse q/k/v")
        out[f"{block_prefix}{layer}.{fused_inv[kind]}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _check_hf(state: dict[str, torch.Tensor]) -> None:
    unknown = []
    for key in state:
        match = _HF_LAYER.match(key)
        if key in _HF_TOP or (match and match.group(2) in _HF_BLOCK):
            continue
        unknown.append(key)
    if unknown:
        raise _unknown("hf", unknown)


def _same(_key: str, value: torch.Tensor) -> torch.Tensor:
    return value


def _timm_to_hf_shape(hf_key: str, value: torch.Tensor) -> torch.Tensor:
    if hf_key == "embeddings.class_embedding":
        return value.reshape(-1)
    if hf_key == "embeddings.position_embedding.weight":
        return value.reshape(value.shape[-2], value.shape[-1])
    return value


def _hf_to_timm_shape(hf_key: str, value: torch.Tensor) -> torch.Tensor:
    if hf_key == "embeddings.class_embedding":
        return value.reshape(1, 1, -1)
    if hf_key == "embeddings.position_embedding.weight":
        return value.unsqueeze(0)
    return value


def _to_hf(state: dict[str, torch.Tensor], src: Layout) -> ViTConversion:
    if src == "hf":
        _check_hf(state)
        return ViTConversion(dict(state))
    if src == "open_clip":
        return _from_fused_layout(state, src, _OC_TOP, _OC_LAYER, _OC_BLOCK, _OC_FUSED, _same)
    return _from_fused_layout(state, src, _TIMM_TOP, _TIMM_LAYER, _TIMM_BLOCK, _TIMM_FUSED, _timm_to_hf_shape)


def _from_hf(state: dict[str, torch.Tensor], dst: Layout) -> dict[str, torch.Tensor]:
    if dst == "hf":
        return dict(state)
    if dst == "open_clip":
        return _to_fused_layout(state, _OC_TOP, "transformer.resblocks.", _OC_BLOCK, _OC_FUSED, _same)
    return _to_fused_layout(state, _TIMM_TOP, "blocks.", _TIMM_BLOCK, _TIMM_FUSED, _hf_to_timm_shape)


def convert_vit_state_dict(
    state: Mapping[str, torch.Tensor],
    src: Layout,
    dst: Layout,
    *,
    src_prefix: str | None = None,
    dst_prefix: str | None = None,
) -> ViTConversion:
    """Convert a CLIP ViT state dict from one library's layout to another's.

    ``src_prefix`` / ``dst_prefix`` default to the ovis backbones' (``vision_model.``,
    ``visual.``, ``trunk.``); pass ``""`` for a bare tower's state dict. Tensors are not copied
    except where q/k/v are split or fused.
    """
    for name in (src, dst):
        if name not in LAYOUTS:
            raise ViTLayoutError(f"unknown ViT layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    src_prefix = PREFIXES[src] if src_prefix is None else src_prefix
    dst_prefix = PREFIXES[dst] if dst_prefix is None else dst_prefix
    if src == dst:  # a re-prefix; nothing is dropped
        return ViTConversion({dst_prefix + k: v for k, v in _strip(state, src_prefix, src).items()})
    hf = _to_hf(_strip(state, src_prefix, src), src)
    out = _from_hf(hf.state, dst)
    return ViTConversion(
        {dst_prefix + k: v for k, v in out.items()},
        [src_prefix + k for k in hf.dropped],
    )


def layout_of(backbone: nn.Module) -> Layout:
    """The layout of an ovis vision backbone (CLIP towers of hf-vision, open-clip and timm)."""
    spec = getattr(backbone, "spec", None)
    builder = getattr(spec, "builder", None)
    layout = BUILDER_LAYOUTS.get(builder or "")
    if layout is None or (layout == "open_clip" and hasattr(getattr(backbone, "visual", None), "trunk")):
        raise ViTLayoutError(
            f"vision backbone {getattr(spec, 'name', type(backbone).__name__)!r} (builder {builder!r}) is not a "
            f"CLIP ViT with a known layout; supported builders: {', '.join(BUILDER_LAYOUTS)}"
        )
    return layout


def load_vit_state_dict(backbone: nn.Module, state: Mapping[str, torch.Tensor], src: Layout) -> list[str]:
    """Load a CLIP ViT state dict of layout ``src`` into an ovis backbone of any layout.

    Strict, except for keys only the backbone's layout has (open_clip's ``proj``), which keep their
    current values; returns those keys.
    """
    dst = layout_of(backbone)
    converted = convert_vit_state_dict(state, src, dst).state
    own = backbone.state_dict()
    kept = [k for k in own if k not in converted and k.removeprefix(PREFIXES[dst]) in ONLY_IN.get(dst, ())]
    for key in kept:
        converted[key] = own[key]
    wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in converted.items() if k in own
             and v.shape != own[k].shape}
    if wrong:
        key, (got, want) = next(iter(wrong.items()))
        raise ViTLayoutError(
            f"{len(wrong)} tensor(s) do not fit backbone {backbone.spec.name!r}, e.g. {key}: {got} vs {want}"
        )
    backbone.load_state_dict(converted, strict=True)
    return kept


# -- the transformers CLIPVisionConfig of a built tower --------------------------------------------

def _activation(module: nn.Module) -> str:
    name = type(module).__name__.lower()
    if "quickgelu" in name:
        return "quick_gelu"
    if name in ("gelu", "geluactivation") and getattr(module, "approximate", "none") == "none":
        return "gelu"
    raise ViTLayoutError(f"activation {type(module).__name__} has no CLIPVisionConfig hidden_act equivalent")


def _square(value, what: str) -> int:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if values[0] != values[1]:
        raise ViTLayoutError(f"{what} {values} is not square; CLIPVisionConfig needs a square one")
    return int(values[0])


def clip_vision_config(backbone: nn.Module) -> dict:
    """The transformers ``CLIPVisionConfig`` fields of an ovis CLIP backbone (read off the module).

    What the backbone's weights become in the transformers layout, e.g. to write an Ovis v1
    ``backbone_config`` for an encoder built by open_clip or timm.
    """
    layout = layout_of(backbone)
    if layout == "hf":
        config = backbone.vision_model.config
        keys = ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
                "num_channels", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
                "initializer_range", "initializer_factor")
        return {k: getattr(config, k) for k in keys if hasattr(config, k)}
    if layout == "open_clip":
        visual = backbone.visual
        blocks = visual.transformer.resblocks
        first = blocks[0]
        extras = [n for n in ("attn_pool", "attn_pool_contrastive") if getattr(visual, n, None) is not None]
        if extras or not isinstance(visual.ln_pre, nn.LayerNorm) or not isinstance(first.ls_1, nn.Identity):
            raise ViTLayoutError(f"open_clip tower of {backbone.spec.name!r} is not a plain CLIP ViT")
        conv = visual.conv1
        return {
            "hidden_size": conv.out_channels,
            "intermediate_size": first.mlp.c_fc.out_features,
            "projection_dim": int(visual.proj.shape[1]) if visual.proj is not None else conv.out_channels,
            "num_hidden_layers": len(blocks),
            "num_attention_heads": first.attn.num_heads,
            "num_channels": conv.in_channels,
            "image_size": _square(visual.image_size, "image size"),
            "patch_size": _square(visual.patch_size, "patch size"),
            "hidden_act": _activation(first.mlp[1]),
            "layer_norm_eps": first.ln_1.eps,
        }
    trunk = backbone.trunk
    first = trunk.blocks[0]
    plain = (
        trunk.cls_token is not None and trunk.num_reg_tokens == 0 and not trunk.no_embed_class
        and isinstance(trunk.norm_pre, nn.LayerNorm) and isinstance(trunk.norm, nn.LayerNorm)
        and trunk.patch_embed.proj.bias is None and isinstance(first.ls1, nn.Identity)
        and isinstance(first.attn.q_norm, nn.Identity)
    )
    if not plain:
        raise ViTLayoutError(f"timm model of {backbone.spec.name!r} is not a plain CLIP ViT")
    proj = trunk.patch_embed.proj
    return {
        "hidden_size": trunk.embed_dim,
        "intermediate_size": first.mlp.fc1.out_features,
        "projection_dim": trunk.embed_dim,
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": first.attn.num_heads,
        "num_channels": proj.in_channels,
        "image_size": _square(trunk.patch_embed.img_size, "image size"),
        "patch_size": _square(trunk.patch_embed.patch_size, "patch size"),
        "hidden_act": _activation(first.mlp.act),
        "layer_norm_eps": first.norm1.eps,
    }

"""One CLIP ViT from three libraries (transformers, open_clip, timm): weight conversion between their
state-dict layouts gives the same patch features. Tiny random models; nothing downloaded."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from ovis.model.vit_layouts import (
    LAYOUTS,
    ViTLayoutError,
    clip_vision_config,
    convert_vit_state_dict,
    load_vit_state_dict,
)
from ovis.plugin_host import get_host

PRESETS = {"hf": "clip-tiny", "open_clip": "clip-tiny-openclip", "timm": "clip-tiny-timm"}


def _build(layout: str, seed: int, *, perturb: bool = False):
    entry = get_host().vision(PRESETS[layout])
    torch.manual_seed(seed)
    model = entry.factory.from_spec(entry.spec, pretrained=False).eval()
    if perturb:  # move every weight (norms included) off its default initialisation
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.2 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(123)
    return torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(LAYOUTS, LAYOUTS)))
def test_converted_weights_give_the_same_features(src, dst, pixels):
    source = _build(src, 0, perturb=True)
    target = _build(dst, 1)
    kept = load_vit_state_dict(target, source.state_dict(), src)
    # open_clip's image projection is not used by the features and has no place in the other layouts.
    assert kept == (["visual.proj"] if dst == "open_clip" and src != "open_clip" else [])
    with torch.no_grad():
        expected, got = source(pixels), target(pixels)
    assert got.shape == (2, 16, 64)
    # Same math, different attention kernels: equal to float32 precision (kernels differ by CPU, so
    # a few ulps of accumulated rounding; a wrong mapping is off by O(1)).
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert expected.abs().max() > 0.1  # not trivially equal


def test_round_trips_through_every_layout_are_bit_identical():
    source = _build("hf", 0, perturb=True).state_dict()
    for path in (("hf", "open_clip", "hf"), ("hf", "timm", "hf"), ("hf", "open_clip", "timm", "hf"),
                 ("hf", "timm", "open_clip", "hf")):
        state = source
        for a, b in itertools.pairwise(path):
            state = convert_vit_state_dict(state, a, b).state
        assert state.keys() == source.keys(), path
        for key in source:
            assert torch.equal(state[key], source[key]), f"{path}: {key}"


def test_fused_qkv_is_q_then_k_then_v():
    hf = _build("hf", 0, perturb=True).state_dict()
    oc = convert_vit_state_dict(hf, "hf", "open_clip").state
    timm = convert_vit_state_dict(hf, "hf", "timm").state
    attn = "vision_model.encoder.layers.1.self_attn"
    expected = torch.cat([hf[f"{attn}.q_proj.weight"], hf[f"{attn}.k_proj.weight"], hf[f"{attn}.v_proj.weight"]])
    assert torch.equal(oc["visual.transformer.resblocks.1.attn.in_proj_weight"], expected)
    assert torch.equal(timm["trunk.blocks.1.attn.qkv.weight"], expected)
    assert timm["trunk.cls_token"].shape == (1, 1, 64) and timm["trunk.pos_embed"].shape == (1, 17, 64)


def test_open_clip_projection_is_reported_as_dropped():
    state = _build("open_clip", 0).state_dict()
    result = convert_vit_state_dict(state, "open_clip", "hf")
    assert result.dropped == ["visual.proj"]
    assert not any("proj" == k.rsplit(".", 1)[-1] for k in result.state)


def test_bare_towers_convert_without_prefixes():
    state = {k.removeprefix("vision_model."): v for k, v in _build("hf", 0).state_dict().items()}
    out = convert_vit_state_dict(state, "hf", "timm", src_prefix="", dst_prefix="").state
    assert "cls_token" in out and "blocks.0.attn.qkv.bias" in out


def test_unknown_keys_and_bad_inputs_are_named():
    state = dict(_build("open_clip", 0).state_dict())
    state["visual.attn_pool.query"] = torch.zeros(4)
    with pytest.raises(ViTLayoutError, match=r"not part of a CLIP ViT in the open_clip layout: 'attn_pool.query'"):
        convert_vit_state_dict(state, "open_clip", "hf")
    with pytest.raises(ViTLayoutError, match="lack the prefix 'trunk.'"):
        convert_vit_state_dict(_build("hf", 0).state_dict(), "timm", "hf")
    hf = dict(_build("hf", 0).state_dict())
    del hf["vision_model.encoder.layers.0.self_attn.k_proj.bias"]
    with pytest.raises(ViTLayoutError, match="layer 0: self_attn bias of k missing"):
        convert_vit_state_dict(hf, "hf", "timm")
    with pytest.raises(ViTLayoutError, match="unknown ViT layout 'jax'"):
        convert_vit_state_dict(hf, "hf", "jax")


def test_siglip_is_not_a_clip_layout():
    entry = get_host().vision("siglip-tiny")
    siglip = entry.factory.from_spec(entry.spec, pretrained=False)
    with pytest.raises(ViTLayoutError, match="not a CLIP ViT with a known layout"):
        clip_vision_config(siglip)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_clip_vision_config_rebuilds_the_tower_in_transformers(layout, pixels):
    source = _build(layout, 0, perturb=True)
    config = clip_vision_config(source)
    reference = clip_vision_config(_build("hf", 0))
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps", "num_channels"):
        assert config[key] == reference[key], key
    clip = CLIPVisionModel(CLIPVisionConfig(**config)).eval()
    # transformers 5's CLIPVisionModel holds the tower's modules directly (no inner vision_model).
    state = convert_vit_state_dict(source.state_dict(), layout, "hf", dst_prefix="").state
    clip.load_state_dict(state)
    with torch.no_grad():
        features = clip(pixel_values=pixels).last_hidden_state[:, 1:]
        torch.testing.assert_close(features, source(pixels), rtol=1e-4, atol=1e-4)

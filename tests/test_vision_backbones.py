"""Contract tests for the vision backbone plugins and the vision presets.

One contract test runs over every installed tiny vision backbone (the first-party plugins
hf-vision, open-clip and timm, and any other installed plugin's tiny presets). The full-size
presets are built on the meta device only: nothing is downloaded anywhere in this file.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ovis.interfaces import VisionBackbone, VisionSpec, load_preset_file
from ovis.interfaces.presets import preset_files
from ovis.plugin_host import PluginHost
from ovis.testing import check_vision_backbone

FIRST_PARTY = {
    "ovis-plugin-hf-vision": {"hf-clip-vision", "hf-siglip-vision", "hf-siglip2-vision", "hf-aimv2-vision"},
    "ovis-plugin-open-clip": {"open_clip"},
    "ovis-plugin-timm": {"timm-vit"},
}
OUR_BUILDERS = set().union(*FIRST_PARTY.values())

HOST = PluginHost()
TINY = [e.spec.name for e in HOST.list("vision") if e.spec.tiny]
FULL = [e.spec.name for e in HOST.list("vision") if not e.spec.tiny and e.spec.builder in OUR_BUILDERS]


def _vit_params(*, width, layers, mlp, patch, grid, cls_token, patch_bias, final_norms, extra=0):
    """Parameters of a pre-norm ViT: patch conv + CLS + positions + blocks + final norms + extra."""
    embed = 3 * patch * patch * width + (width if patch_bias else 0)
    embed += (grid * grid + cls_token) * width + (width if cls_token else 0)
    block = 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width) + 2 * 2 * width
    return embed + layers * block + final_norms * 2 * width + extra


# CLIP ViT-L/14 @ 336: conv without bias, CLS token, 577 positions, pre- and post-norm.
# = 303,507,456; open_clip also keeps its 1024 x 768 image projection (+786,432).
_CLIP_L = _vit_params(width=1024, layers=24, mlp=4096, patch=14, grid=24, cls_token=1, patch_bias=False,
                      final_norms=2)
# SigLIP so400m/14 @ 384: conv with bias, no CLS, 27 x 27 positions, post-norm, and the attention
# pooling head (probe + attention + norm + MLP) that every source keeps: 428,225,600.
_SIGLIP_HEAD = 1152 + 4 * (1152 * 1152 + 1152) + 2 * 1152 + (1152 * 4304 + 4304) + (4304 * 1152 + 1152)
_SIGLIP_SO400M = _vit_params(width=1152, layers=27, mlp=4304, patch=14, grid=27, cls_token=0, patch_bias=True,
                             final_norms=1, extra=_SIGLIP_HEAD)
# SigLIP2 so400m/16 @ 512, FixRes: SigLIP's architecture with 32 x 32 positions (428,772,800);
# NaFlex: a linear patch embedding (same count as the conv) and a 16 x 16 position table that is
# resized to the grid (427,888,064).
_SIGLIP2_SO400M_512 = _vit_params(width=1152, layers=27, mlp=4304, patch=16, grid=32, cls_token=0, patch_bias=True,
                                  final_norms=1, extra=_SIGLIP_HEAD)
_SIGLIP2_NAFLEX_512 = _SIGLIP2_SO400M_512 - (32 * 32 - 16 * 16) * 1152


def _aimv2_params(*, width, mlp, layers=24, patch=14, grid=32):
    """AIMv2 vision encoder without a head: patch conv (with bias) + RMSNorm + positions, blocks of
    4 bias-free attention projections, a bias-free SwiGLU (3 matrices) and 2 RMSNorms, final RMSNorm."""
    embed = 3 * patch * patch * width + width + width + grid * grid * width
    return embed + layers * (4 * width * width + 3 * width * mlp + 2 * width) + width


# AIMv2 sizes: apple/ml-aim aim-v2 (aimv2_large / huge / 1B: width, MLP, heads; 24 blocks), at 448 px
# (32 x 32 positions). Published as 0.3B, 0.6B and 1.2B; the Ovis2-4B release's safetensors index
# confirms huge to the parameter (tests/test_ovis2_parts.py).
_AIMV2 = {
    "aimv2-large-patch14-448": _aimv2_params(width=1024, mlp=2816),  # 309,984,256
    "aimv2-huge-patch14-448": _aimv2_params(width=1536, mlp=4096),  # 682,031,616
    "aimv2-1b-patch14-448": _aimv2_params(width=2048, mlp=5632),  # 1,236,531,200
}
EXPECTED_PARAMS = {
    "clip-vit-l-14-336": _CLIP_L,
    "clip-vit-l-14-336-timm": _CLIP_L,
    "clip-vit-l-14-336-openclip": _CLIP_L + 1024 * 768,
    "siglip-so400m-384": _SIGLIP_SO400M,
    "siglip-so400m-384-openclip": _SIGLIP_SO400M,
    "siglip-so400m-384-timm": _SIGLIP_SO400M,
    "siglip2-so400m-patch16-512": _SIGLIP2_SO400M_512,
    "siglip2-so400m-patch16-naflex-512": _SIGLIP2_NAFLEX_512,
    **_AIMV2,
}
EXPECTED_PATCHES = {"clip": 576, "siglip": 729, "siglip2": 1024, "aimv2": 1024}


def _build(name: str, seed: int = 0, spec: VisionSpec | None = None, pretrained: bool = False):
    entry = HOST.vision(name)
    torch.manual_seed(seed)
    return entry.factory.from_spec(spec or entry.spec, pretrained=pretrained)


def test_first_party_plugins_load_cleanly():
    for plugin, builders in FIRST_PARTY.items():
        info = HOST.plugins.get(plugin)
        assert info is not None, f"{plugin} is not installed (pip install -e plugins/...)"
        assert info.errors == [], info.errors
        assert info.registered["vision"], f"{plugin} registered no vision backbone"
        for name in info.registered["vision"]:
            assert HOST.vision(name).spec.builder in builders
    for required in ("clip-tiny", "clip-tiny-openclip", "clip-tiny-timm", "siglip-tiny", "siglip-tiny-timm",
                     "siglip2-tiny", "aimv2-tiny"):
        assert required in TINY
    assert HOST.vision("clip").spec.name == "clip-vit-l-14-336"
    assert HOST.vision("siglip").spec.name == "siglip-so400m-384"


@pytest.mark.parametrize("name", TINY)
def test_vision_backbone_contract(name, tmp_path):
    check_vision_backbone(name, tmp_path)


@pytest.mark.parametrize("name", [n for n in TINY if HOST.vision(n).spec.builder in OUR_BUILDERS])
def test_first_party_builders_reject_bad_specs(name):
    spec = HOST.vision(name).spec
    with pytest.raises(ValueError, match="has no weights"):
        HOST.vision(name).factory.from_spec(spec, pretrained=True)
    wrong = spec.model_copy(update={"num_layers": spec.num_layers + 1, "hidden_size": spec.hidden_size * 2})
    with pytest.raises(ValueError, match=f"{name}.*does not match its model"):
        HOST.vision(name).factory.from_spec(wrong, pretrained=False)


def test_every_vision_preset_file_validates():
    files = preset_files("vision")
    assert files
    names = set()
    for path in files:
        spec = load_preset_file(path, "vision")  # raises PresetError naming the file and field
        assert spec.name not in names, f"duplicate preset name {spec.name}"
        names.add(spec.name)
        assert spec.name.startswith(spec.family), f"{path.name}: the name must start with the family"
        if spec.builder in OUR_BUILDERS:
            assert spec.builder in FIRST_PARTY.get(spec.plugin, ()), f"{path.name}: plugin vs builder"
            assert spec.tiny == (spec.weights is None), f"{path.name}: only tiny presets have no weights"
            entry = HOST.vision(spec.name)
            assert entry.spec == spec and entry.plugin == spec.plugin
    assert set(EXPECTED_PARAMS) <= names
    full_first_party = {n for n in names if HOST.vision(n).spec.builder in OUR_BUILDERS
                        and not HOST.vision(n).spec.tiny}
    assert full_first_party <= set(EXPECTED_PARAMS), "every full-size first-party preset has a known count"


@pytest.mark.parametrize("name", FULL)
def test_full_size_preset_builds_on_meta(name):
    spec = HOST.vision(name).spec
    with torch.device("meta"):
        model = _build(name)
        out = model(torch.empty(1, 3, spec.image_size, spec.image_size))
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.is_meta for t in tensors)
    assert out.shape == (1, spec.num_patches, spec.hidden_size)
    if spec.family in EXPECTED_PATCHES:
        assert spec.num_patches == EXPECTED_PATCHES[spec.family]
    if name in EXPECTED_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]


def test_full_size_architectures_match_the_library_configs():
    """The presets spell out the architecture; check it against what the libraries ship."""
    import open_clip
    import timm

    for name in FULL:
        spec = HOST.vision(name).spec
        arch = spec.architecture
        if spec.builder == "open_clip":
            shipped = open_clip.get_model_config(arch["model_name"])
            assert shipped["embed_dim"] == arch["embed_dim"], name
            for key, value in shipped["vision_cfg"].items():
                assert arch["vision_cfg"].get(key) == value, f"{name}: vision_cfg.{key}"
        elif spec.builder == "timm-vit":
            with torch.device("meta"):
                shipped = timm.create_model(arch["model_name"], num_classes=0).state_dict()
                ours = _build(name).trunk.state_dict()
            assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in shipped.items()}, name


# -- loading weights from local files -------------------------------------------------------------

def _same_outputs(a: VisionBackbone, b: VisionBackbone) -> None:
    size = a.spec.image_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def _local(name: str, weights) -> VisionSpec:
    return HOST.vision(name).spec.model_copy(update={"weights": str(weights)})


HF_TINY = ["clip-tiny", "siglip-tiny", "siglip2-tiny", "aimv2-tiny"]


@pytest.mark.parametrize("name", HF_TINY)
def test_hf_loads_a_local_directory(name, tmp_path):
    model = _build(name)
    model.vision_model.save_pretrained(tmp_path / "vision")
    _same_outputs(_build(name, seed=1, spec=_local(name, tmp_path / "vision"), pretrained=True), model)


# (AIMv2's released encoders are vision-only checkpoints: no two-tower case to load)
@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny", "siglip2-tiny"])
def test_hf_loads_the_vision_half_of_a_full_checkpoint(name, tmp_path):
    """Like openai/clip-vit-large-patch14-336: a CLIPModel/SiglipModel/... directory, text tower included."""
    import transformers

    family = name.removesuffix("-tiny")
    prefix = {"clip": "CLIP", "siglip": "Siglip", "siglip2": "Siglip2"}[family]
    config_cls, model_cls = getattr(transformers, f"{prefix}Config"), getattr(transformers, f"{prefix}Model")
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99}
    full = model_cls(config_cls(vision_config=HOST.vision(name).spec.architecture, text_config=text))
    full.save_pretrained(tmp_path / "full")
    loaded = _build(name, seed=1, spec=_local(name, tmp_path / "full"), pretrained=True)
    reference = type(loaded)(HOST.vision(name).spec, full.vision_model)
    _same_outputs(loaded, reference)


def test_open_clip_loads_local_state_dict_files(tmp_path):
    import open_clip

    name = "clip-tiny-openclip"
    model = _build(name)
    # The backbone's own state dict, as safetensors.
    save_file(model.state_dict(), str(tmp_path / "tower.safetensors"))
    loaded = _build(name, seed=1, spec=_local(name, tmp_path / "tower.safetensors"), pretrained=True)
    _same_outputs(loaded, model)
    # A full open_clip checkpoint (text tower included, DDP-prefixed, torch format).
    arch = HOST.vision(name).spec.architecture
    text = {"context_length": 8, "vocab_size": 99, "width": 32, "heads": 2, "layers": 1}
    clip = open_clip.CLIP(embed_dim=arch["embed_dim"], vision_cfg=arch["vision_cfg"], text_cfg=text,
                          quick_gelu=arch["quick_gelu"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, tmp_path / "clip.pt")
    loaded = _build(name, seed=1, spec=_local(name, tmp_path / "clip.pt"), pretrained=True)
    _same_outputs(loaded, type(model)(HOST.vision(name).spec, clip.visual))


@pytest.mark.parametrize("name", ["clip-tiny-timm", "siglip-tiny-timm"])
def test_timm_loads_a_local_file(name, tmp_path):
    model = _build(name)
    save_file(model.trunk.state_dict(), str(tmp_path / "timm.safetensors"))
    loaded = _build(name, seed=1, spec=_local(name, tmp_path / "timm.safetensors"), pretrained=True)
    _same_outputs(loaded, model)

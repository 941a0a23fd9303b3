"""The released Ovis2 models' parts, from the presets on the meta device (nothing downloaded).

Ovis2 pairs an AIMv2 encoder at 448 px with a Qwen2.5 Instruct LLM (the Ovis2 model cards' "Model
Zoo" table, copied in ``OVIS2``). Its visual tokenizer merges each 2 x 2 block of patch features
(``hidden_stride`` 2) before a ``Linear(4 * width -> 65536 - 5, no bias) -> LayerNorm`` head, and
its visual embedding table has 65,536 rows (the last 5 are the indicator rows).

Checked two ways:
- against transformers' own ``Ovis2VisionModel`` (``models/ovis2``), built on the meta device with
  each encoder's numbers: its tower equals our backbone and its head our formula, to the parameter;
- against the Ovis2-4B release itself: its ``model.safetensors.index.json`` gives ``total_size``
  9,232,212,972 bytes, all bfloat16, i.e. 4,616,106,486 stored parameters. Our aimv2-huge +
  head(65,536, stride 2) + VTE + qwen2.5-3b, plus the lm_head the release stores apart although
  Qwen2.5-3B ties it, adds up to exactly that.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Ovis2VisionConfig
from transformers.models.ovis2.modeling_ovis2 import Ovis2VisionModel

from ovis.plugin_host import get_host

#: Ovis2 model -> (vision preset, LLM preset), from the Ovis2 model cards
OVIS2 = {
    "Ovis2-1B": ("aimv2-large-patch14-448", "qwen2.5-0.5b"),
    "Ovis2-2B": ("aimv2-large-patch14-448", "qwen2.5-1.5b"),
    "Ovis2-4B": ("aimv2-huge-patch14-448", "qwen2.5-3b"),
    "Ovis2-8B": ("aimv2-huge-patch14-448", "qwen2.5-7b"),
    "Ovis2-16B": ("aimv2-huge-patch14-448", "qwen2.5-14b"),
    "Ovis2-34B": ("aimv2-1b-patch14-448", "qwen2.5-32b"),
}
VISUAL_VOCAB_SIZE, HIDDEN_STRIDE, INDICATORS = 65536, 2, 5
#: AIDC-AI/Ovis2-4B model.safetensors.index.json, metadata.total_size (bytes, bfloat16)
OVIS2_4B_TOTAL_BYTES = 9_232_212_972


def head_params(width: int) -> int:
    """Linear(width * s^2 -> V - 5, no bias) + LayerNorm(V - 5)."""
    out = VISUAL_VOCAB_SIZE - INDICATORS
    return width * HIDDEN_STRIDE**2 * out + 2 * out


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def parts(model: str) -> dict[str, int]:
    host = get_host()
    vit_name, llm_name = OVIS2[model]
    vit, llm = host.vision(vit_name), host.llm(llm_name)
    with torch.device("meta"):
        backbone = vit.factory.from_spec(vit.spec, pretrained=False)
        lm = llm.factory(llm.spec).build_model(pretrained=False)
    tied = lm.config.tie_word_embeddings
    return {
        "backbone": _count(backbone),
        "head": head_params(vit.spec.hidden_size),
        "vte": VISUAL_VOCAB_SIZE * llm.spec.hidden_size,
        "llm": _count(lm),
        "stored_lm_head_copy": llm.spec.vocab_size * llm.spec.hidden_size if tied else 0,
    }


def test_ovis2_4b_parts_add_up_to_the_release():
    p = parts("Ovis2-4B")
    assert p["backbone"] == 682_031_616 and p["llm"] == 3_085_938_688
    assert sum(p.values()) == OVIS2_4B_TOTAL_BYTES // 2 == 4_616_106_486


#: one Ovis2 model per encoder
BY_ENCODER = {vit: model for model, (vit, _) in reversed(OVIS2.items())}


@pytest.mark.parametrize("model", sorted(BY_ENCODER.values()))
def test_transformers_ovis2_vision_tower_equals_backbone_plus_head(model):
    """transformers' Ovis2VisionModel (AIMv2 trunk + merged head) with the encoder's numbers."""
    spec = get_host().vision(OVIS2[model][0]).spec
    arch = spec.architecture
    config = Ovis2VisionConfig(
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=arch["num_attention_heads"],
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
        rms_norm_eps=arch["rms_norm_eps"],
        vocab_size=VISUAL_VOCAB_SIZE,
        hidden_stride=HIDDEN_STRIDE,
    )
    with torch.device("meta"):
        tower = Ovis2VisionModel(config)
    p = parts(model)
    assert _count(tower.transformer) == p["backbone"]
    assert _count(tower.head_linear) + _count(tower.head_norm) == p["head"]


def test_ovis2_8b_is_aimv2_huge_and_qwen25_7b():
    p = parts("Ovis2-8B")
    assert p == {
        "backbone": 682_031_616,
        "head": 402_753_526,
        "vte": 65536 * 3584,
        "llm": 7_615_616_512,
        "stored_lm_head_copy": 0,
    }

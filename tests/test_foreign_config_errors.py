"""A foreign config.json (hf-ovis2, Ovis2 release) with a field of the wrong type in its ``"ovis"``
block is refused with a one-line ConversionError, as v1 configs are, not a bare ValueError."""

import copy

import pytest

from ovis.model.ovis2_format import translate_hf_config
from ovis.model.ovis2_release_format import translate_release_config
from ovis.model.v1_format import ConversionError

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "image_size": 28, "patch_size": 14}  # fmt: skip
HF = {
    "model_type": "ovis2",
    "vision_config": {"model_type": "ovis2_vision", **SIZES, "vocab_size": 40, "hidden_stride": 2},
    "text_config": {"model_type": "qwen2", "hidden_size": 16, "vocab_size": 100},
    "vocab_size": 100,
    "hidden_size": 16,
}
RELEASE = {
    "model_type": "ovis",
    "llm_config": {"model_type": "qwen2", "hidden_size": 16},
    "hidden_size": 16,
    "visual_tokenizer_config": {
        "model_type": "aimv2_visual_tokenizer",
        "vocab_size": 40,
        "hidden_stride": 2,
        "backbone_config": {"model_type": "aimv2", **SIZES},
    },
    "conversation_formatter_class": "QwenConversationFormatter",
}
CASES = [
    (translate_hf_config, HF, "tau"),
    (translate_hf_config, HF, "multimodal_max_length"),
    (translate_hf_config, HF, "covering_threshold"),
    (translate_release_config, RELEASE, "max_partition"),
    (translate_release_config, RELEASE, "covering_threshold"),
]


@pytest.mark.parametrize(("translate", "base", "name"), CASES)
def test_a_wrong_type_in_the_ovis_block_is_a_conversion_error(translate, base, name):
    assert translate(copy.deepcopy(base)).config["vision_spec"]  # the config without the bad field is fine
    config = {**copy.deepcopy(base), "ovis": {name: "many"}}
    with pytest.raises(ConversionError, match=r"wrong type or shape \(ValueError: .*'many'"):
        translate(config)

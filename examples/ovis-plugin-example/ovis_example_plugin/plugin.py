"""The plugin module named by the ``ovis.plugins`` entry point: registers what this package adds.

The specs are built in code here; a plugin could equally read YAML presets of its own. Each spec's
``plugin`` names this distribution (``ovis-plugin-example``), which the host checks.
"""

from __future__ import annotations

from ovis.interfaces import ImagePreprocessSpec, LLMSpec, VisionSpec, hookimpl
from ovis_example_plugin.chat import ExampleChatFormat, PlainChatFormat
from ovis_example_plugin.llm import OFFLINE_TOKENIZER, ExampleLLM
from ovis_example_plugin.vit import ExampleViT

EXAMPLE_VIT = VisionSpec(
    name="example-vit",
    aliases=["example"],
    family="example",
    builder="example-vit",
    plugin="ovis-plugin-example",
    source="other",
    description="A 2-layer pure-PyTorch ViT (width 32, 32 px, patch 8): 16 patches",
    tiny=True,
    hidden_size=32,
    image_size=32,
    patch_size=8,
    num_layers=2,
    num_heads=2,
    has_cls_token=False,
    preprocess=ImagePreprocessSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash"),
)

EXAMPLE_LLM = LLMSpec(
    name="example-llm",
    aliases=["example-lm"],
    family="example",
    builder="example-llm",
    plugin="ovis-plugin-example",
    source="transformers",
    description="A 2-layer Llama-architecture LM (width 64) with a byte-level tokenizer built offline",
    tiny=True,
    hidden_size=64,
    num_layers=2,
    vocab_size=261,  # 5 special tokens + 256 bytes: the tokenizer's length
    context_length=512,
    chat_format="example-chat",
    tokenizer=OFFLINE_TOKENIZER,
    # Passed to transformers' AutoConfig.for_model("llama", ...): hidden_size, num_hidden_layers and
    # vocab_size repeat the fields above; the rest would otherwise take Llama's defaults (a 32000
    # vocabulary, bos 1 / eos 2...).
    architecture={
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 261,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": 1,
        "pad_token_id": 0,
    },
)


@hookimpl
def register_vision_backbones(register):
    register(EXAMPLE_VIT, ExampleViT)


@hookimpl
def register_llms(register):
    register(EXAMPLE_LLM, ExampleLLM)


@hookimpl
def register_chat_formats(register):
    register(PlainChatFormat())
    register(ExampleChatFormat())

"""Qwen3, Gemma 2 and Llama 3.2 (the LLMs of Ovis2.5, Ovis1.6-Gemma2 and a small Llama) against
transformers' own classes, and what each family needs beyond the common contract.

The contract itself (build, train a step, generate, tokenizer, local round trip) runs over every
tiny preset in ``test_llms.py``; full-size parameter counts are there too.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import ovis
from ovis.plugin_host import get_host

#: tiny preset -> the transformers causal-LM class and config class it must equal
REFERENCE = {
    "qwen3-tiny": ("Qwen3ForCausalLM", "Qwen3Config"),
    "gemma2-tiny": ("Gemma2ForCausalLM", "Gemma2Config"),
    "llama3.2-tiny": ("LlamaForCausalLM", "LlamaConfig"),
}


def _llm(name: str):
    entry = get_host().llm(name)
    return entry.factory(entry.spec)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_logits_equal_transformers_own_model(name):
    """The plugin's model and one built by hand from the preset's numbers with the family's own
    transformers classes, same weights: same logits at float32 (1e-5), same greedy ids."""
    llm = _llm(name)
    torch.manual_seed(0)
    ours = llm.build_model(pretrained=False).eval()
    model_name, config_name = REFERENCE[name]
    arch = {k: v for k, v in llm.spec.architecture.items() if k not in ("model_type", "architectures")}
    reference = getattr(transformers, model_name)(getattr(transformers, config_name)(**arch)).eval()
    assert type(ours) is type(reference)
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)  # a tied head is not stored apart
    reference.tie_weights()
    ids = torch.randint(5, llm.spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)
        kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        assert torch.equal(ours.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_qwen3_architecture_facts():
    config = _llm("qwen3-8b").build_config()
    assert (config.head_dim, config.num_key_value_heads, config.intermediate_size) == (128, 8, 12288)
    assert not config.attention_bias and not config.tie_word_embeddings
    with torch.device("meta"):
        model = _llm("qwen3-tiny").build_model(pretrained=False)
    layer = model.model.layers[0].self_attn
    assert layer.q_norm.weight.shape == (16,) and layer.k_norm.weight.shape == (16,)  # per-head RMSNorm
    assert layer.q_proj.bias is None
    assert _llm("qwen3-1.7b").build_config().tie_word_embeddings


def test_llama32_architecture_facts():
    config = _llm("llama3.2-3b").build_config()
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("llama3", 32.0, 8192)
    assert config.tie_word_embeddings and config.head_dim == 128 and config.max_position_embeddings == 131072


def test_gemma2_architecture_facts():
    config = _llm("gemma2-9b").build_config()
    assert (config.final_logit_softcapping, config.attn_logit_softcapping, config.sliding_window) == (30.0, 50.0, 4096)
    assert config.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert (config.query_pre_attn_scalar, config.head_dim) == (256, 256)
    assert _llm("gemma2-27b").build_config().query_pre_attn_scalar == 144


@pytest.mark.parametrize("name", ["gemma2-tiny", "qwen3-tiny", "llama3.2-tiny"])
def test_embedding_scale(name):
    llm = _llm(name)
    torch.manual_seed(0)
    model = llm.build_model(pretrained=False)
    expected = math.sqrt(llm.spec.hidden_size) if llm.spec.builder == "gemma" else 1.0
    assert llm.embedding_scale(model) == pytest.approx(expected)
    ids = torch.tensor([[5, 6, 7]])
    table = model.get_input_embeddings()
    torch.testing.assert_close(table(ids), table.weight[ids] * expected)


def test_gemma_composed_model_scales_visual_rows_and_not_text_twice():
    """Composed with a vision backbone, a Gemma model's text-only logits equal the bare LLM's
    (text rows scaled once, inside Gemma's embedding), and its visual rows carry sqrt(hidden)."""
    model, processor = ovis.compose(vit="aimv2-tiny", llm="gemma2-tiny", visual_vocab_size=64)
    model.eval()
    assert model.config.visual_embedding_scale == pytest.approx(8.0)
    batch = processor([[{"role": "user", "content": "What is in the picture?"}]], [[]])
    with torch.no_grad():
        composed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        bare = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(composed, bare, rtol=1e-5, atol=1e-5)
        pixels = torch.randn(1, 3, 64, 64)
        scaled = model.encode_images(pixels)
        model.config.visual_embedding_scale = 1.0
        plain = model.encode_images(pixels)
    torch.testing.assert_close(scaled, plain * 8.0)


def test_gemma_toy_tokenizer_is_gemma_shaped():
    tok = _llm("gemma2-tiny").build_tokenizer()
    assert type(tok).__name__ == "GemmaTokenizer"
    assert tok("picture")["input_ids"][0] == 2, "a <bos> in front, as Gemma's tokenizer adds"
    ids = tok.encode("The red square", add_special_tokens=False)
    assert "▁red" in tok.convert_ids_to_tokens(ids), "spaces become '▁' and start a piece"
    # characters the toy corpus never saw fall back to bytes (Gemma's byte fallback) and decode back
    text = "漢字 🙂 Ω"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids and tok.decode(ids) == text
    assert all(tok.convert_ids_to_tokens(i).startswith("<0x") for i in tok.encode("漢", add_special_tokens=False))
    assert len(tok) <= get_host().llm("gemma2-tiny").spec.vocab_size


def test_gemma_hub_style_tokenizer_folder_is_settled(tmp_path):
    """A folder like google/gemma-2-9b-it's (eos <eos>): eos becomes <end_of_turn>, pad stays <pad>,
    its own chat template is kept."""
    llm = _llm("gemma2-tiny")
    tok = llm.build_tokenizer()
    tok.eos_token = "<eos>"
    tok.chat_template = "{{ 'own template' }}"
    tok.save_pretrained(tmp_path)
    local = type(llm)(llm.spec.model_copy(update={"tokenizer": str(tmp_path)}))
    loaded = local.build_tokenizer()
    assert (loaded.eos_token, loaded.eos_token_id, loaded.pad_token_id) == ("<end_of_turn>", 107, 0)
    assert loaded.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "own template"
    assert local.special_tokens() == {"bos": "<bos>", "eos": "<end_of_turn>", "pad": "<pad>"}


def test_gemma2_2b_preset_is_transformers_default_config():
    """Gemma2Config's defaults describe google/gemma-2-2b: the preset repeats them."""
    arch = _llm("gemma2-2b").spec.architecture
    default = transformers.Gemma2Config()
    skip = {"model_type", "architectures", "dtype", "rope_theta"}  # rope_theta lives in rope_parameters
    assert {k: getattr(default, k) for k in arch if k not in skip} == {k: v for k, v in arch.items() if k not in skip}
    assert default.rope_parameters["rope_theta"] == arch["rope_theta"]

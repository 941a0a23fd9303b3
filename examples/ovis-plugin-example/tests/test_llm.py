"""The example LLM: its spec agrees with the model and tokenizer it builds, offline."""

from __future__ import annotations

import torch
from ovis_example_plugin.llm import VOCAB_SIZE, ExampleLLM, build_byte_tokenizer
from ovis_example_plugin.plugin import EXAMPLE_LLM


def test_the_spec_agrees_with_the_model_and_the_tokenizer():
    llm = ExampleLLM(EXAMPLE_LLM)
    config = llm.build_config()  # HFCausalLM checks hidden_size, num_layers and vocab_size
    tokenizer = llm.build_tokenizer()
    assert len(tokenizer) == EXAMPLE_LLM.vocab_size == VOCAB_SIZE
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert config.max_position_embeddings == EXAMPLE_LLM.context_length


def test_the_model_builds_offline_and_predicts_every_token():
    torch.manual_seed(0)
    model = ExampleLLM(EXAMPLE_LLM).build_model(pretrained=False).eval()
    ids = build_byte_tokenizer()("Hello, world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], EXAMPLE_LLM.vocab_size)
    assert torch.isfinite(logits).all()


def test_a_tokenizer_directory_gives_the_same_tokenizer(tmp_path):
    """`ovis compose --llm-weights DIR` points `tokenizer` at DIR: the saved tokenizer loads back."""
    build_byte_tokenizer().save_pretrained(tmp_path)
    loaded = ExampleLLM(EXAMPLE_LLM.model_copy(update={"tokenizer": str(tmp_path)})).build_tokenizer()
    text = "<|user|>\nHi there, ✓<|end|>\n"
    assert loaded.encode(text) == build_byte_tokenizer().encode(text)
    assert loaded.chat_template == build_byte_tokenizer().chat_template

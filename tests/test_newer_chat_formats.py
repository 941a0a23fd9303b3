"""The chat formats of the newer LLM families: ``qwen3`` (Ovis2.5), ``llama3.2`` and ``gemma``
(Ovis1.6-Gemma2), against their tiny presets' offline tokenizers.

As in ``test_chat_formats.py`` for the older families: the rendered prompt equals the tokenizer's
own ``apply_chat_template``, tokenizing segment by segment equals tokenizing the whole prompt,
labels cover exactly the replies plus their end-of-turn token; and each format's own layout is
written out once by hand.
"""

from __future__ import annotations

import functools

import pytest

from ovis.interfaces import ChatFormatError
from ovis.interfaces.chat import IGNORE_INDEX, IMAGE_MARKER, IMAGE_PLACEHOLDER_ID, tokenize_segments
from ovis.plugin_host import get_host

#: one tiny preset per newer chat format
FAMILIES = ["qwen3-tiny", "llama3.2-tiny", "gemma2-tiny"]
FORMATS = {"qwen3", "llama3.2", "gemma"}
END_OF_TURN = {"qwen3": "<|im_end|>", "llama3.2": "<|eot_id|>", "gemma": "<end_of_turn>"}
HEADER = {
    "qwen3": "<|im_start|>assistant\n",
    "llama3.2": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": "<start_of_turn>model\n",
}
U, A, S = "user", "assistant", "system"


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


CONVERSATIONS = {
    "single-turn": conv((U, "What colour is the sky?"), (A, "It is blue.")),
    "multi-turn": conv((U, "Hi!"), (A, "Hello, how can I help?"), (U, "Count to three."), (A, "1, 2, 3.")),
    "whitespace-unicode": conv(
        (U, "  Üben wir: 漢字 and emoji 🙂\n\n"),
        (A, "Sure — here's a list:\n- one\n- two\n\n```py\nx = 12345\n```"),
        (U, "\tnumbers 9876543210?  "),
        (A, "Yes: 9876543210 ."),
    ),
    "system": conv((S, "You answer briefly."), (U, "Capital of France?"), (A, "Paris.")),
}
PROMPTS = {
    "first-turn": conv((U, "Describe the picture.")),
    "follow-up": conv((U, "Hi"), (A, "Hello!"), (U, "What can you do?")),
    "system-first-turn": conv((S, "You are terse."), (U, "Describe it.")),
}


@functools.cache
def family(preset: str):
    host = get_host()
    entry = host.llm(preset)
    return host.chat_format(entry.spec.chat_format), entry.factory(entry.spec).build_tokenizer()


def reply_groups(labels: list[int]) -> list[list[int]]:
    groups: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                groups.append([])
            groups[-1].append(label)
        previous = label
    return groups


def _skip_system_for_gemma(fmt, messages):
    if fmt.name == "gemma" and messages[0]["role"] == "system":
        pytest.skip("gemma has no system role (tested to fail below)")


def test_formats_are_registered_with_their_facts():
    host = get_host()
    assert FORMATS <= set(host.chat_formats())
    assert {host.llm(p).spec.chat_format for p in FAMILIES} == FORMATS
    qwen3, llama32, gemma = (host.chat_format(n) for n in ("qwen3", "llama3.2", "gemma"))
    assert qwen3.default_system is None and qwen3.v1_formatter_class == "Qwen3ConversationFormatter"
    assert gemma.default_system is None and gemma.v1_formatter_class == "GemmaConversationFormatter"
    assert llama32.default_system == ""
    assert {f.end_of_turn for f in (qwen3, llama32, gemma)} == set(END_OF_TURN.values())


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_training_conversation_matches_template_tokens_and_labels(preset, case):
    fmt, tok = family(preset)
    messages = CONVERSATIONS[case]
    _skip_system_for_gemma(fmt, messages)
    rendered = fmt.render(messages)
    assert rendered == tok.apply_chat_template(messages, tokenize=False)
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids == tok.encode(rendered, add_special_tokens=False), "tokenization mismatch"
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if fmt.name != "qwen3":
        replies = [r.strip() for r in replies]
    eot = END_OF_TURN[fmt.name]
    assert [tok.decode(g) for g in reply_groups(labels)] == [r + eot for r in replies]
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(labels, ids, strict=True))


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_generation_prompt_matches_template(preset, case):
    fmt, tok = family(preset)
    messages = PROMPTS[case]
    _skip_system_for_gemma(fmt, messages)
    rendered = fmt.render(messages, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith(HEADER[fmt.name])
    ids, labels = tokenize_segments(tok, fmt.segments(messages, add_generation_prompt=True))
    assert ids == tok.encode(rendered, add_special_tokens=False)
    assert labels[-1] == IGNORE_INDEX
    templated = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(templated) == ids


def test_qwen3_layout_is_ovis25s():
    """Ovis2.5's Qwen3ConversationFormatter: no system turn unless given; a plain reply follows an
    empty thinking block (not learned); a reply with its own thinking keeps it (learned)."""
    fmt, tok = family("qwen3-tiny")
    messages = conv((U, "Hi"), (A, "Yo"), (U, "Why?"), (A, "<think>\nBecause.\n</think>\n\nSo."))
    assert fmt.render(messages) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>\n"
        "<|im_start|>user\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nBecause.\n</think>\n\nSo.<|im_end|>\n"
    )
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids == tok.encode(fmt.render(messages), add_special_tokens=False)
    assert [tok.decode(g) for g in reply_groups(labels)] == [
        "Yo<|im_end|>",
        "<think>\nBecause.\n</think>\n\nSo.<|im_end|>",
    ]
    assert fmt.render(conv((U, "Hi")), add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("reply", ["\n\nLeading blank line.", " \n  indented", "\n", "  two"])
def test_qwen3_reply_with_leading_whitespace_tokenizes_like_the_whole(reply):
    fmt, tok = family("qwen3-tiny")
    messages = conv((U, "Go"), (A, reply), (U, "Again"), (A, reply))
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids == tok.encode(fmt.render(messages), add_special_tokens=False)
    assert len(reply_groups(labels)) == 2


def test_llama32_layout_always_has_the_dated_system_turn():
    fmt, _ = family("llama3.2-tiny")
    dated = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
    assert fmt.render(conv((U, " Hi "), (A, " Yo\n"))) == (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{dated}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>"
    )
    with_system = fmt.render(conv((S, "  Be terse. "), (U, "Hi")), add_generation_prompt=True)
    assert with_system.startswith(
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{dated}Be terse.<|eot_id|>"
    )


def test_gemma_layout_and_no_system_role():
    fmt, tok = family("gemma2-tiny")
    messages = conv((U, " <image>\nWhat is it? "), (A, "  A red square.\n"), (U, "Sure?"), (A, "Yes."))
    assert fmt.render(messages) == (
        "<bos><start_of_turn>user\n<image>\nWhat is it?<end_of_turn>\n"
        "<start_of_turn>model\nA red square.<end_of_turn>\n"
        "<start_of_turn>user\nSure?<end_of_turn>\n"
        "<start_of_turn>model\nYes.<end_of_turn>\n"
    )
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids[0] == tok.bos_token_id == 2 and ids.count(IMAGE_PLACEHOLDER_ID) == 1
    assert [tok.decode(g) for g in reply_groups(labels)] == ["A red square.<end_of_turn>", "Yes.<end_of_turn>"]
    assert fmt.stop_token_ids(tok) == [107]
    with pytest.raises(ChatFormatError, match="no system role"):
        fmt.segments(conv((S, "Be terse."), (U, "Hi")), add_generation_prompt=True)


@pytest.mark.parametrize("preset", FAMILIES)
def test_image_markers_become_one_placeholder_each(preset):
    fmt, tok = family(preset)
    messages = conv(
        (U, f"{IMAGE_MARKER}\nFirst?"), (A, "A cat."), (U, f"And? {IMAGE_MARKER} {IMAGE_MARKER}"), (A, "Dogs.")
    )
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids.count(IMAGE_PLACEHOLDER_ID) == 3
    eot = END_OF_TURN[fmt.name]
    assert [tok.decode(g) for g in reply_groups(labels)] == ["A cat." + eot, "Dogs." + eot]
    with pytest.raises(ChatFormatError, match="alternate"):
        fmt.segments(conv((U, "Hi"), (U, "Again")))

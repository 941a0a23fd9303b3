"""Chat formats of the first-party LLM plugins against their families' real tokenizers.

For every shipped family (one tiny preset each, with the real vocabulary and chat template built
offline): the rendered prompt equals the tokenizer's own ``apply_chat_template``, tokenizing
segment by segment equals tokenizing the whole prompt, labels cover exactly the assistant replies
plus their end-of-turn token, ``<image>`` becomes one placeholder, and bad conversations fail.
"""

from __future__ import annotations

import functools

import pytest

from ovis.interfaces import ChatFormat, ChatFormatError, Message
from ovis.interfaces.chat import IGNORE_INDEX, IMAGE_MARKER, IMAGE_PLACEHOLDER_ID, tokenize_segments
from ovis.plugin_host import get_host

FIRST_PARTY = {"ovis-plugin-llama", "ovis-plugin-qwen"}
#: one tiny preset per chat format: the family's real tokenizer and template, built offline
FAMILIES = ["llama3-tiny", "qwen1.5-tiny", "qwen2.5-tiny"]
END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>", "qwen2.5": "<|im_end|>"}
#: does the tokenizer's template itself add the default system turn? (Meta's Llama 3 does not)
TEMPLATE_HAS_DEFAULT_SYSTEM = {"llama3": False, "chatml": True, "qwen2.5": True}

U, A, S = "user", "assistant", "system"


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


CONVERSATIONS = {
    "single-turn": conv((U, "What colour is the sky?"), (A, "It is blue.")),
    "multi-turn": conv(
        (U, "Hi!"), (A, "Hello, how can I help?"), (U, "Count to three."), (A, "1, 2, 3.")
    ),
    "system": conv((S, "You answer briefly."), (U, "Capital of France?"), (A, "Paris.")),
    "system-multi": conv(
        (S, "Be terse."), (U, "2+2?"), (A, "4"), (U, "And 3+3?"), (A, "6, obviously.")
    ),
    "whitespace-unicode": conv(
        (U, "  Üben wir: 漢字 and emoji 🙂\n\n"),
        (A, "Sure — here's a list:\n- one\n- two\n\n```py\nx = 12345\n```"),
        (U, "\tnumbers 9876543210?  "),
        (A, "Yes: 9876543210 ."),
    ),
}
PROMPTS = {  # for add_generation_prompt=True
    "first-turn": conv((U, "Describe the picture.")),
    "system-first-turn": conv((S, "You are terse."), (U, "Describe it.")),
    "follow-up": conv((U, "Hi"), (A, "Hello!"), (U, "What can you do?")),
}


@functools.cache
def family(preset: str):
    """(chat format, tokenizer) of a tiny preset, built once per test session."""
    host = get_host()
    entry = host.llm(preset)
    return host.chat_format(entry.spec.chat_format), entry.factory(entry.spec).build_tokenizer()


def template_messages(fmt: ChatFormat, messages: list[dict]) -> list[dict]:
    """What to hand the tokenizer's template so that it renders what ``fmt`` does."""
    if messages[0]["role"] != "system" and fmt.default_system is not None:
        return [{"role": "system", "content": fmt.default_system}, *messages]
    return messages


def reply_groups(labels: list[int]) -> list[list[int]]:
    """Runs of learned (non-ignored) label ids."""
    groups: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                groups.append([])
            groups[-1].append(label)
        previous = label
    return groups


def test_every_first_party_chat_format_is_covered():
    host = get_host()
    ours = {name for name, plugin in host.chat_formats().items() if plugin in FIRST_PARTY}
    newer = {"qwen3", "llama3.2"}  # tested with gemma in test_newer_chat_formats.py
    assert ours == {"llama3", "chatml", "qwen2.5"} | newer
    assert {host.llm(p).spec.chat_format for p in FAMILIES} == ours - newer
    for plugin in FIRST_PARTY:
        assert host.plugins[plugin].errors == []


def test_formats_carry_ovis_v1_facts():
    host = get_host()
    llama3, chatml, qwen25 = (host.chat_format(n) for n in ("llama3", "chatml", "qwen2.5"))
    assert llama3.default_system == "You are a helpful and honest multimodal assistant."
    assert llama3.v1_formatter_class == "Llama3ConversationFormatter"
    assert chatml.default_system == "You are a helpful assistant."
    assert chatml.v1_formatter_class == "QwenConversationFormatter"
    assert qwen25.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_training_conversation_matches_template_tokens_and_labels(preset, case):
    fmt, tok = family(preset)
    messages = CONVERSATIONS[case]
    rendered = fmt.render(messages)
    assert rendered == tok.apply_chat_template(
        template_messages(fmt, messages), tokenize=False, add_generation_prompt=False
    )

    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids == tok.encode(rendered, add_special_tokens=False), "tokenization mismatch"
    assert len(labels) == len(ids)

    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if fmt.name == "llama3":
        replies = [r.strip() for r in replies]
    eot = END_OF_TURN[fmt.name]
    decoded = [tok.decode(group) for group in reply_groups(labels)]
    assert decoded == [reply + eot for reply in replies]
    assert all(label in (IGNORE_INDEX, i) for label, i in zip(labels, ids, strict=True))


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_generation_prompt_matches_template(preset, case):
    fmt, tok = family(preset)
    messages = PROMPTS[case]
    rendered = fmt.render(messages, add_generation_prompt=True)
    assert rendered == tok.apply_chat_template(
        template_messages(fmt, messages), tokenize=False, add_generation_prompt=True
    )
    ids, labels = tokenize_segments(tok, fmt.segments(messages, add_generation_prompt=True))
    assert ids == tok.encode(rendered, add_special_tokens=False)
    # earlier replies stay learnable; the open assistant header is not
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [tok.decode(g) for g in reply_groups(labels)] == [r + END_OF_TURN[fmt.name] for r in replies]
    assert labels[-1] == IGNORE_INDEX
    header = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}.get(
        fmt.name, "<|im_start|>assistant\n"
    )
    assert rendered.endswith(header)
    # The ids of the tokenizer's own tokenizing path agree too.
    templated = tok.apply_chat_template(
        template_messages(fmt, messages), tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert list(templated) == ids


@pytest.mark.parametrize("preset", FAMILIES)
def test_default_system_prompt(preset):
    fmt, tok = family(preset)
    messages = PROMPTS["first-turn"]
    rendered = fmt.render(messages, add_generation_prompt=True)
    assert fmt.default_system in rendered
    own = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if TEMPLATE_HAS_DEFAULT_SYSTEM[fmt.name]:
        assert rendered == own
    else:  # Meta's template adds no system turn; the format adds Ovis v1's
        assert fmt.default_system not in own
    # An explicit system message (even an empty one) replaces the default.
    explicit = fmt.render([{"role": "system", "content": ""}, *messages], add_generation_prompt=True)
    assert fmt.default_system not in explicit
    assert explicit == tok.apply_chat_template(
        [{"role": "system", "content": ""}, *messages], tokenize=False, add_generation_prompt=True
    )


def test_chatml_layout_and_llama3_layout():
    chatml, _ = family("qwen1.5-tiny")
    assert chatml.render(conv((U, "<image> Hi"), (A, "Yo"))) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image> Hi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    )
    llama3, _ = family("llama3-tiny")
    assert llama3.render(conv((U, " Hi "), (A, " Yo\n"))) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful and honest multimodal assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>"
    )


@pytest.mark.parametrize("preset", ["qwen1.5-tiny", "qwen2.5-tiny"])
@pytest.mark.parametrize(
    "reply",
    ["\n\nLeading blank line.", " \n  indented", "\r\n\r\nwindows", "\u3000\nwide space", "\n", "  two"],
)
def test_chatml_reply_with_leading_whitespace_tokenizes_like_the_whole(preset, reply):
    """The pre-tokenizer fuses the header's newline with a reply's leading line breaks; the
    format keeps those in the prompt so segment-wise ids still equal whole-text ids."""
    fmt, tok = family(preset)
    messages = conv((U, "Go"), (A, reply), (U, "Again"), (A, reply))
    rendered = fmt.render(messages)
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids == tok.encode(rendered, add_special_tokens=False)
    groups = reply_groups(labels)
    assert len(groups) == 2 and all(tok.decode(g).endswith("<|im_end|>") for g in groups)
    assert reply.endswith(tok.decode(groups[0]).removesuffix("<|im_end|>"))


@pytest.mark.parametrize("preset", FAMILIES)
def test_image_markers_become_one_placeholder_each(preset):
    fmt, tok = family(preset)
    messages = conv(
        (U, f"{IMAGE_MARKER}\nWhat is in the first picture?"),
        (A, "A cat."),
        (U, f"And here? {IMAGE_MARKER} {IMAGE_MARKER}"),
        (A, "Two dogs."),
    )
    ids, labels = tokenize_segments(tok, fmt.segments(messages))
    assert ids.count(IMAGE_PLACEHOLDER_ID) == 3
    assert all(labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == IMAGE_PLACEHOLDER_ID)
    text_ids = [t for t in ids if t != IMAGE_PLACEHOLDER_ID]
    assert IMAGE_MARKER not in tok.decode(text_ids)
    eot = END_OF_TURN[fmt.name]
    assert [tok.decode(g) for g in reply_groups(labels)] == ["A cat." + eot, "Two dogs." + eot]
    # the runner's query form: "<image> " + text, then an open assistant turn
    prompt_ids, _ = tokenize_segments(
        tok, fmt.segments(conv((U, f"{IMAGE_MARKER} Describe it.")), add_generation_prompt=True)
    )
    assert prompt_ids.count(IMAGE_PLACEHOLDER_ID) == 1


BAD = {
    "system-not-first": (conv((U, "Hi"), (S, "Late system"), (A, "Hello")), False, "system"),
    "starts-with-assistant": (conv((A, "Hello"), (U, "Hi")), False, "expected a user"),
    "two-users-in-a-row": (conv((U, "Hi"), (U, "Again"), (A, "Hello")), False, "alternate"),
    "two-assistants": (conv((U, "Hi"), (A, "Hello"), (A, "Again")), False, "alternate"),
    "empty": ([], False, "at least one user"),
    "system-only": (conv((S, "Sys")), True, "at least one user"),
    "prompt-after-reply": (conv((U, "Hi"), (A, "Hello")), True, "end with a user"),
}


@pytest.mark.parametrize("preset", FAMILIES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_conversations_fail_clearly(preset, case):
    fmt, _ = family(preset)
    messages, generation, message = BAD[case]
    with pytest.raises(ChatFormatError, match=message):
        fmt.segments(messages, add_generation_prompt=generation)


@pytest.mark.parametrize("preset", FAMILIES)
def test_bad_roles_and_images_in_replies_fail(preset):
    fmt, tok = family(preset)
    with pytest.raises(ValueError, match="role"):
        fmt.segments([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatFormatError, match="cannot be learned"):
        tokenize_segments(tok, fmt.segments(conv((U, "Draw"), (A, f"Here: {IMAGE_MARKER}"))))


@pytest.mark.parametrize("preset", FAMILIES)
def test_accepts_message_objects(preset):
    fmt, _ = family(preset)
    messages = CONVERSATIONS["single-turn"]
    assert fmt.render([Message(**m) for m in messages]) == fmt.render(messages)

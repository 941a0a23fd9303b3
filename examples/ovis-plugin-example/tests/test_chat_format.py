"""The chat formats against the tokenizer: the test the plugin guide asks every LLM plugin to write.

Two things must hold for training and inference to agree: ``render()`` equals
``tokenizer.apply_chat_template``, and tokenizing the segments one by one (what training does, to
line labels up) equals tokenizing the rendered prompt (what inference does). ``ovis.testing`` checks
both, and what is learned.
"""

from __future__ import annotations

import pytest
from ovis_example_plugin.chat import END, ExampleChatFormat, PlainChatFormat
from ovis_example_plugin.llm import build_byte_tokenizer

from ovis.interfaces import IMAGE_PLACEHOLDER_ID, tokenize_segments
from ovis.testing import check_chat_format


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_the_chat_format_keeps_ovis_contract(tokenizer):
    """render() equals the tokenizer's template; the segments tokenize like the rendered prompt;
    the replies and their <|end|> are learned (ovis.testing's conversations: system turns, images,
    several turns, whitespace and non-ASCII text)."""
    check_chat_format(ExampleChatFormat(), tokenizer)


def test_the_plain_format_keeps_it_too():
    plain = build_byte_tokenizer()
    plain.chat_template = None  # (the tokenizer's template is example-chat's)
    check_chat_format(PlainChatFormat(), plain)


def test_an_image_marker_becomes_one_placeholder(tokenizer):
    messages = [{"role": "user", "content": "<image>\nWhat is this?"}]
    ids, _ = tokenize_segments(tokenizer, ExampleChatFormat().segments(messages, add_generation_prompt=True))
    assert ids.count(IMAGE_PLACEHOLDER_ID) == 1


def test_generation_stops_at_the_end_of_turn_token(tokenizer):
    assert ExampleChatFormat().stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(END)]
    assert tokenizer.eos_token == END

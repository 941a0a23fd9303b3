"""The chat format against the tokenizer's own template: the test the plugin guide asks every LLM
plugin to write.

Two things must hold for training and inference to agree: ``render()`` equals
``tokenizer.apply_chat_template``, and tokenizing the segments one by one (what training does, to
line labels up) equals tokenizing the rendered prompt (what inference does).
"""

from __future__ import annotations

import pytest
from ovis_example_plugin.chat import END, ExampleChatFormat
from ovis_example_plugin.llm import build_byte_tokenizer

from ovis.interfaces import IGNORE_INDEX, IMAGE_PLACEHOLDER_ID, tokenize_segments

SYSTEM = {"role": "system", "content": "Answer in one word."}
ASK = {"role": "user", "content": "What colour is the sky?"}
REPLY = {"role": "assistant", "content": " Blue,\n\nmostly. Ünïcode ✓ "}
AGAIN = {"role": "user", "content": "And at night?\n"}

PROMPTS = [[ASK], [SYSTEM, ASK], [ASK, REPLY, AGAIN], [SYSTEM, ASK, REPLY, AGAIN]]
DIALOGUES = [[ASK, REPLY], [SYSTEM, ASK, REPLY], [ASK, REPLY, AGAIN, {"role": "assistant", "content": "Black."}]]
CASES = [(p, gen) for p in PROMPTS for gen in (False, True)] + [(d, False) for d in DIALOGUES]


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.mark.parametrize(("messages", "add_generation_prompt"), CASES)
def test_render_equals_the_tokenizers_chat_template(tokenizer, messages, add_generation_prompt):
    ours = ExampleChatFormat().render(messages, add_generation_prompt=add_generation_prompt)
    theirs = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs


@pytest.mark.parametrize(("messages", "add_generation_prompt"), CASES)
def test_segments_tokenize_like_the_rendered_prompt(tokenizer, messages, add_generation_prompt):
    chat = ExampleChatFormat()
    segments = chat.segments(messages, add_generation_prompt=add_generation_prompt)
    ids, labels = tokenize_segments(tokenizer, segments)
    rendered = chat.render(messages, add_generation_prompt=add_generation_prompt)
    assert ids == tokenizer.encode(rendered, add_special_tokens=False)
    learned = tokenizer.decode([label for label in labels if label != IGNORE_INDEX])
    assert learned == "".join(m["content"] + END for m in messages if m["role"] == "assistant")


def test_an_image_marker_becomes_one_placeholder(tokenizer):
    messages = [{"role": "user", "content": "<image>\nWhat is this?"}]
    ids, _ = tokenize_segments(tokenizer, ExampleChatFormat().segments(messages, add_generation_prompt=True))
    assert ids.count(IMAGE_PLACEHOLDER_ID) == 1


def test_generation_stops_at_the_end_of_turn_token(tokenizer):
    assert ExampleChatFormat().stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(END)]
    assert tokenizer.eos_token == END

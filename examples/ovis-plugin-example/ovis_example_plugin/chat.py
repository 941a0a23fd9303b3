"""The example's two chat formats: ``example-plain`` (plain text) and ``example-chat`` (the LLM's).

``example-chat`` writes each turn as ``<|ROLE|>\\n`` + content + ``<|end|>\\n``; a generation prompt
is an open ``<|assistant|>\\n``. ``CHAT_TEMPLATE`` is the same format as the Jinja template the
tokenizer carries, so that ``tokenizer.apply_chat_template`` agrees with :meth:`segments`; the tests
check both that and that tokenizing the segments one by one equals tokenizing the joined prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from ovis.interfaces import ChatFormat, Message, Segment

END = "<|end|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


class PlainChatFormat(ChatFormat):
    """``User: ...\\nAssistant: ...\\n`` with no special tokens at all."""

    name = "example-plain"

    def segments(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> list[Segment]:
        out = []
        for message in self.coerce(messages):
            header = f"{message.role.capitalize()}: "
            if message.role == "assistant":
                out += [Segment(text=header), Segment(text=message.content + "\n", learn=True)]
            else:
                out.append(Segment(text=header + message.content + "\n"))
        if add_generation_prompt:
            out.append(Segment(text="Assistant: "))
        return out


class ExampleChatFormat(ChatFormat):
    """Role tokens and ``<|end|>``; learned: each assistant reply and its ``<|end|>``.

    Segments are cut right after ``<|assistant|>\\n`` and right after ``<|end|>``, i.e. next to
    special tokens, which the tokenizer never merges with their neighbours. The ``\\n`` after an
    assistant's ``<|end|>`` is not learned: generation stops at ``<|end|>``.
    """

    name = "example-chat"
    end_of_turn = END

    def segments(self, messages: Sequence[Message | dict], *, add_generation_prompt: bool = False) -> list[Segment]:
        # prepare() checks the turn order and puts default_system (None here) first.
        msgs = self.prepare(messages, add_generation_prompt=add_generation_prompt)
        out: list[Segment] = []
        prompt = ""
        for message in msgs:
            if message.role == "assistant":
                out.append(Segment(text=prompt + ROLE_TOKENS["assistant"] + "\n"))
                out.append(Segment(text=message.content + END, learn=True))
                prompt = "\n"
            else:
                prompt += ROLE_TOKENS[message.role] + "\n" + message.content + END + "\n"
        if add_generation_prompt:
            prompt += ROLE_TOKENS["assistant"] + "\n"
        if prompt:
            out.append(Segment(text=prompt))
        return out

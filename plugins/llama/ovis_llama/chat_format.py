"""The ``llama3`` chat format: Meta-Llama-3-Instruct's prompt, with Ovis v1's default system.

``<|begin_of_text|>``, then per turn ``<|start_header_id|>ROLE<|end_header_id|>\\n\\n`` + the
stripped content + ``<|eot_id|>``; a generation prompt is an open assistant header. Learned: each
assistant reply and its ``<|eot_id|>``; the header is not. Every segment boundary falls on a
special token or right after the header's ``\\n\\n`` (content is stripped, so it never begins with
whitespace that could merge with it), hence tokenizing segment by segment equals tokenizing the
joined text.

Unlike Meta's template, which adds no system turn, a conversation without one gets Ovis v1's
"You are a helpful and honest multimodal assistant." (what the released checkpoints were trained
on); pass an explicit system message (even an empty one) to choose otherwise.

``llama3.2`` is Meta's Llama 3.1 / 3.2 Instruct prompt: the same turns, and always a system turn
that starts with the knowledge-cutoff and date lines (the template's fixed fallback date, so that
a prompt does not change from day to day), followed by the stripped system message if any.
"""

from __future__ import annotations

from collections.abc import Sequence

from ovis.interfaces import ChatFormat, Message, Segment
from ovis_llama.tokens import BOS, END_HEADER, EOT, LLAMA32_SYSTEM_PREFIX, START_HEADER

V1_DEFAULT_SYSTEM = "You are a helpful and honest multimodal assistant."


class Llama3ChatFormat(ChatFormat):
    """Meta's Llama 3 chat layout; ``default_system=None`` adds no system turn (Meta's own)."""

    def __init__(
        self,
        name: str = "llama3",
        *,
        default_system: str | None = V1_DEFAULT_SYSTEM,
        v1_formatter_class: str | None = "Llama3ConversationFormatter",
    ) -> None:
        self.name = name
        self.default_system = default_system
        self.v1_formatter_class = v1_formatter_class
        self.end_of_turn = EOT

    @staticmethod
    def header(role: str) -> str:
        return f"{START_HEADER}{role}{END_HEADER}\n\n"

    def body(self, message: Message) -> str:
        """A turn's text between its header and ``<|eot_id|>``."""
        return message.content.strip()

    def segments(self, messages: Sequence[Message | dict], *, add_generation_prompt: bool = False) -> list[Segment]:
        msgs = self.prepare(messages, add_generation_prompt=add_generation_prompt)
        out: list[Segment] = []
        prompt = BOS
        for message in msgs:
            body = self.body(message) + EOT
            if message.role == "assistant":
                out += [Segment(text=prompt + self.header("assistant")), Segment(text=body, learn=True)]
                prompt = ""
            else:
                prompt += self.header(message.role) + body
        if add_generation_prompt:
            prompt += self.header("assistant")
        if prompt:
            out.append(Segment(text=prompt))
        return out


LLAMA3 = Llama3ChatFormat()


class Llama32ChatFormat(Llama3ChatFormat):
    """Meta's Llama 3.1 / 3.2 Instruct layout: a system turn always, opening with the date lines."""

    def __init__(self) -> None:
        super().__init__("llama3.2", default_system="", v1_formatter_class=None)

    def body(self, message: Message) -> str:
        text = message.content.strip()
        return LLAMA32_SYSTEM_PREFIX + text if message.role == "system" else text


LLAMA32 = Llama32ChatFormat()

"""The ``gemma`` chat format: Gemma 2's instruction prompt, as Ovis1.6-Gemma2 trains it.

``<bos>``, then per turn ``<start_of_turn>ROLE\\n`` + the stripped content + ``<end_of_turn>\\n``,
with ROLE ``user`` or ``model`` (the assistant); a generation prompt is an open
``<start_of_turn>model\\n``. Gemma has no system role: Google's template and Ovis's
``GemmaConversationFormatter`` both refuse one, and so does this format (a clear error).

Learned: each reply and its ``<end_of_turn>``; the ``\\n`` after it is not (generation stops at
``<end_of_turn>``). Segment boundaries fall on special tokens or right after a header's ``\\n``;
content is stripped, so a reply never begins with whitespace that could merge with it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ovis.interfaces import ChatFormat, ChatFormatError, Message, Segment
from ovis_gemma.tokens import BOS, END_OF_TURN, ROLES, START_OF_TURN


class GemmaChatFormat(ChatFormat):
    name = "gemma"
    default_system = None
    v1_formatter_class = "GemmaConversationFormatter"
    end_of_turn = END_OF_TURN

    @staticmethod
    def header(role: str) -> str:
        return f"{START_OF_TURN}{ROLES[role]}\n"

    def segments(self, messages: Sequence[Message | dict], *, add_generation_prompt: bool = False) -> list[Segment]:
        msgs = self.prepare(messages, add_generation_prompt=add_generation_prompt)
        if msgs[0].role == "system":
            raise ChatFormatError(
                "the gemma chat format has no system role (Gemma 2 was not trained with one): "
                "put the instructions in the first user message"
            )
        out: list[Segment] = []
        prompt = BOS
        for message in msgs:
            body = message.content.strip() + END_OF_TURN
            if message.role == "assistant":
                out += [Segment(text=prompt + self.header("assistant")), Segment(text=body, learn=True)]
                prompt = "\n"
            else:
                prompt += self.header(message.role) + body + "\n"
        if add_generation_prompt:
            prompt += self.header("assistant")
        out.append(Segment(text=prompt))
        return out


GEMMA = GemmaChatFormat()

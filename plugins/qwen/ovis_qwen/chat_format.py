"""ChatML, Qwen's chat format: ``chatml`` (Qwen1.5 / Ovis v1), ``qwen2.5`` and ``qwen3``.

Each turn is ``<|im_start|>ROLE\\n`` + content + ``<|im_end|>\\n``; there is no BOS, and a default
system turn comes first when the conversation has none; a generation prompt is an open
``<|im_start|>assistant\\n``. Content is used as is (not stripped), as Qwen's own template does.

Learned: each assistant reply and its ``<|im_end|>``. The ``\\n`` after ``<|im_end|>`` is *not*
learned: generation stops at ``<|im_end|>`` (the eos), so the model never has to produce it.

Tokenizing segment by segment equals tokenizing the joined text: boundaries fall on special
tokens, or right after the assistant header, which also takes any leading whitespace of the reply
up to its last line break (the pre-tokenizer would fuse those line breaks with the header's
``\\n``), so such leading blank lines are part of the prompt, not the learned reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from ovis.interfaces import ChatFormat, Message, Segment
from ovis_qwen.tokens import EMPTY_THINK, IM_END, IM_START, QWEN25_SYSTEM, QWEN_SYSTEM

_NOT_REGEX_SPACE = "\x1c\x1d\x1e\x1f"  # str.isspace() but not Unicode White_Space (the regex \s)


def split_leading_breaks(text: str) -> tuple[str, str]:
    """``text`` cut after the last line break of its leading whitespace (``("", text)`` if none)."""
    end = 0
    while end < len(text) and text[end].isspace() and text[end] not in _NOT_REGEX_SPACE:
        end += 1
    lead = text[:end]
    cut = max(lead.rfind("\n"), lead.rfind("\r")) + 1
    return text[:cut], text[cut:]


class ChatMLFormat(ChatFormat):
    """ChatML with a default system prompt (``None``: no system turn unless one is given)."""

    def __init__(self, name: str, *, default_system: str | None, v1_formatter_class: str | None = None) -> None:
        self.name = name
        self.default_system = default_system
        self.v1_formatter_class = v1_formatter_class
        self.end_of_turn = IM_END

    @staticmethod
    def header(role: str) -> str:
        return f"{IM_START}{role}\n"

    def assistant_header(self, content: str) -> str:
        """What opens an assistant turn whose reply is ``content`` (never learned)."""
        return self.header("assistant")

    def segments(self, messages: Sequence[Message | dict], *, add_generation_prompt: bool = False) -> list[Segment]:
        msgs = self.prepare(messages, add_generation_prompt=add_generation_prompt)
        out: list[Segment] = []
        prompt = ""
        for message in msgs:
            if message.role == "assistant":
                lead, reply = split_leading_breaks(message.content)
                out += [
                    Segment(text=prompt + self.assistant_header(message.content) + lead),
                    Segment(text=reply + IM_END, learn=True),
                ]
                prompt = "\n"
            else:
                prompt += self.header(message.role) + message.content + IM_END + "\n"
        if add_generation_prompt:
            prompt += self.header("assistant")
        out.append(Segment(text=prompt))
        return out


#: Qwen1.5-Chat / Ovis v1 (``QwenConversationFormatter``)
CHATML = ChatMLFormat("chatml", default_system=QWEN_SYSTEM, v1_formatter_class="QwenConversationFormatter")
#: Qwen2.5-Instruct: ChatML with Qwen2.5's default system prompt; Ovis v1 had no formatter for it
QWEN25 = ChatMLFormat("qwen2.5", default_system=QWEN25_SYSTEM)


def has_thinking(content: str) -> bool:
    """Whether a reply carries its own reasoning block (``<think>...</think>``)."""
    return "<think>" in content and "</think>" in content


class Qwen3Format(ChatMLFormat):
    """ChatML as Ovis2.5 trains Qwen3 (its ``Qwen3ConversationFormatter``): no default system
    turn, and a reply without its own ``<think>...</think>`` block follows an empty one, which is
    part of the unlearned header. A generation prompt is the bare assistant header (the model
    may think)."""

    def assistant_header(self, content: str) -> str:
        header = self.header("assistant")
        return header if has_thinking(content) else header + EMPTY_THINK


#: Qwen3 (Ovis2.5): ChatML without a default system prompt, empty thinking before plain replies
QWEN3 = Qwen3Format("qwen3", default_system=None, v1_formatter_class="Qwen3ConversationFormatter")

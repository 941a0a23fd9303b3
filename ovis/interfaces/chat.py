"""Chat formats: prompt building and label masking, owned by the LLM plugins.

A format renders a conversation as a list of segments, each marked learnable or not. Training
tokenizes the segments one by one so labels line up exactly; inference joins them. The plugin's
tests check that the joined text equals what the tokenizer's own ``apply_chat_template`` gives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ovis.errors import OvisError, validation_message

IMAGE_MARKER = "<image>"


class Message(BaseModel):
    """One turn of a conversation, as a chat format receives it (plain dicts are accepted too)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"] = Field(
        description="'system' (first message only), then 'user' and 'assistant' alternating, starting with 'user'"
    )
    content: str = Field(description="the text; each '<image>' in it marks where one image's embeddings go")


class Segment(BaseModel):
    """A piece of a rendered prompt, what ``ChatFormat.segments`` returns."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(
        description="prompt text, special tokens written out; cut so that tokenizing the segments one by one "
        "equals tokenizing the joined prompt (cut at special tokens)"
    )
    learn: bool = Field(
        default=False,
        description="True on exactly the assistant replies and their end-of-turn token: their tokens become "
        "training labels, everything else is masked",
    )


class ChatFormatError(OvisError, ValueError):
    """A conversation the format cannot render (bad role order, no turn to learn, ...)."""


class ChatFormat(ABC):
    """Renders messages for one LLM family; a plugin registers an instance.

    Set as class or instance attributes:

    - ``name`` (str, required): unique across plugins; an ``LLMSpec.chat_format`` names it, and it
      is saved with a composed model, so loading looks it up again.
    - ``default_system`` (str or None): a system message put first when a conversation has none
      (see :meth:`prepare`).
    - ``end_of_turn`` (str or None): the special token that closes an assistant turn; generation
      stops there when the tokenizer has it as one token (:meth:`stop_token_ids`).
    - ``v1_formatter_class`` (str or None): the Ovis v1 ``conversation_formatter_class`` it
      matches, for reading and writing v1 checkpoints.

    Implement :meth:`segments`. Test that :meth:`render` equals the tokenizer's own
    ``apply_chat_template`` and that ``tokenize_segments`` equals tokenizing the rendered text.
    """

    name: str = ""
    default_system: str | None = None
    v1_formatter_class: str | None = None
    end_of_turn: str | None = None

    @abstractmethod
    def segments(
        self, messages: Sequence[Message], *, add_generation_prompt: bool = False
    ) -> list[Segment]:
        """Render ``messages`` as segments. Assistant replies (and their end-of-turn token) are
        ``learn=True``; everything else, role headers included, is not. With
        ``add_generation_prompt`` an open assistant header ends the prompt."""

    def stop_token_ids(self, tokenizer) -> list[int]:
        """Ids that end a reply: ``end_of_turn`` when the tokenizer has it as one token."""
        if self.end_of_turn is None:
            return []
        ids = tokenizer.encode(self.end_of_turn, add_special_tokens=False)
        return ids if len(ids) == 1 else []

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
        return "".join(s.text for s in self.segments(messages, add_generation_prompt=add_generation_prompt))

    @classmethod
    def validate_turns(
        cls, messages: Sequence[Message | dict], *, add_generation_prompt: bool
    ) -> list[Message]:
        """Optional system first, then user and assistant alternating, starting with user."""
        msgs = cls.coerce(messages)
        turns = msgs[1:] if msgs and msgs[0].role == "system" else msgs
        if not turns:
            raise ChatFormatError("a conversation needs at least one user message")
        for i, message in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if message.role != expected:
                raise ChatFormatError(
                    f"turn {i}: expected a {expected} message, got {message.role!r} "
                    "(turns must alternate user/assistant, starting with user)"
                )
        if add_generation_prompt and turns[-1].role == "assistant":
            raise ChatFormatError("add_generation_prompt needs the conversation to end with a user message")
        return msgs

    def prepare(self, messages: Sequence[Message | dict], *, add_generation_prompt: bool) -> list[Message]:
        """Validated turns, with ``default_system`` put first when no system message is given."""
        msgs = self.validate_turns(messages, add_generation_prompt=add_generation_prompt)
        if msgs[0].role != "system" and self.default_system is not None:
            msgs.insert(0, Message(role="system", content=self.default_system))
        return msgs

    @staticmethod
    def coerce(messages: Sequence[Message | dict]) -> list[Message]:
        """Accept dicts too; validate role order (optional system first, then user/assistant)."""
        if isinstance(messages, (str, dict)):
            raise ChatFormatError(f"messages must be a list of messages, got a {type(messages).__name__}")
        out = []
        for i, m in enumerate(messages):
            if isinstance(m, Message):
                out.append(m)
                continue
            if not isinstance(m, dict):
                raise ChatFormatError(
                    f"message {i} is a {type(m).__name__}, not a mapping with 'role' and 'content'"
                )
            try:
                out.append(Message(**m))
            except ValidationError as exc:
                raise ChatFormatError(f"message {i}: {validation_message(exc)}") from exc
        for i, message in enumerate(out):
            if message.role == "system" and i != 0:
                raise ChatFormatError(f"message {i}: a system message may only come first")
        return out


IMAGE_PLACEHOLDER_ID = -200  # one per <image> before expansion (the Ovis v1 convention)
IGNORE_INDEX = -100


def tokenize_segments(
    tokenizer, segments: Sequence[Segment]
) -> tuple[list[int], list[int]]:
    """Token ids and labels for rendered segments.

    Each segment is tokenized on its own (no special tokens added: formats write them as text),
    and each ``<image>`` becomes one ``IMAGE_PLACEHOLDER_ID``. Labels copy the ids of learnable
    segments and are ``IGNORE_INDEX`` elsewhere. Chat formats cut segments at special tokens, so
    the result equals tokenizing the joined text; the plugin tests check that per family.
    """
    ids: list[int] = []
    labels: list[int] = []
    for segment in segments:
        pieces = segment.text.split(IMAGE_MARKER)
        for k, piece in enumerate(pieces):
            if k:
                if segment.learn:
                    raise ChatFormatError("an <image> inside an assistant reply cannot be learned")
                ids.append(IMAGE_PLACEHOLDER_ID)
                labels.append(IGNORE_INDEX)
            if piece:
                piece_ids = tokenizer.encode(piece, add_special_tokens=False)
                ids += piece_ids
                labels += piece_ids if segment.learn else [IGNORE_INDEX] * len(piece_ids)
    return ids, labels

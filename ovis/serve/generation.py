"""Generation settings and per-row bookkeeping shared by the runner, the batcher and the servers.

A batch is generated under one set of sampling settings, but requests batched together still need
their own ``max_new_tokens``, stop strings, cancellation and streamed text. :class:`RowTracker` is
called once per step with each row's new token (by ovis's decode loop, or by Hugging Face
``generate`` as a stopping criterion), turns it into text, and says which rows are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import StoppingCriteria

from ovis.serve.errors import GenerationSettingsError

FinishReason = Literal["stop", "length", "cancelled"]


class GenerationParams(BaseModel):
    """Every knob a request can turn. All of them reach the decode loop or ``generate`` (the v1 runner
    dropped them)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(512, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @classmethod
    def from_settings(cls, **settings: Any) -> GenerationParams:
        """Settings a user gave (flags, a request, the UI) -> params, or a
        :class:`~ovis.serve.errors.GenerationSettingsError` naming each bad one."""
        try:
            return cls(**settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise GenerationSettingsError(f"invalid generation settings: {problems}") from exc

    @model_validator(mode="after")
    def _sampling_knobs_need_sampling(self) -> GenerationParams:
        # transformers would silently ignore them under greedy decoding; say so instead.
        if not self.do_sample:
            ignored = [
                name
                for name, value, neutral in (
                    ("temperature", self.temperature, 1.0),
                    ("top_p", self.top_p, None),
                    ("top_k", self.top_k, None),
                )
                if value != neutral
            ]
            if ignored:
                raise ValueError(f"{', '.join(ignored)} only apply when do_sample=True")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one batch (limits and stops are per row)."""
        return (
            self.do_sample,
            self.temperature,
            self.top_p,
            self.top_k,
            self.num_beams,
            self.repetition_penalty,
            self.seed,
        )

    def hf_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"do_sample": self.do_sample, "num_beams": self.num_beams}
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            # Explicit None/0 so a checkpoint's generation_config cannot sneak its own values in.
            kwargs["top_p"] = self.top_p if self.top_p is not None else 1.0
            kwargs["top_k"] = self.top_k if self.top_k is not None else 0
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


@dataclass
class Completion:
    prompt: str
    output: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    token_ids: list[int] = field(default_factory=list)
    first_token_s: float | None = None  # seconds from the start of generation to the first token

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """The v1 runner's result keys, plus what a client needs to know why it stopped."""
        return {
            "prompt": self.prompt,
            "output": self.output,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "finish_reason": self.finish_reason,
        }


class IncrementalDecoder:
    """Token ids in, text deltas out; holds back bytes that do not yet form a whole character.

    Each step decodes a short window, not the whole reply: the tokens from an anchor (a point where
    the text so far ended on a whole character) to the end, whose text before this token is kept
    from the step before, so one decode a step. The tokens after the anchor give context to
    tokenizers that drop a word's leading space at the start of a decode (so a window never starts
    with tokens that decode to nothing). Every ``WINDOW`` tokens the anchor moves up to the last
    settled point (one more decode). A long reply costs the same
    per token at its end as at its start: decoding everything so far grew to ~0.1 ms a token by 512.
    """

    WINDOW = 8

    def __init__(self, tokenizer, skip_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.skip_ids = skip_ids
        self.ids: list[int] = []
        self.text = ""
        self._anchor = 0  # windows start here
        self._settled = 0  # tokens up to here are in ``text``
        self._settled_text = ""  # the text of ids[anchor:settled]

    def push(self, token: int) -> str:
        if token in self.skip_ids:
            return ""
        self.ids.append(token)
        window = self._decode(self._anchor)
        if window.startswith(self._settled_text):
            if window.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                return ""
            delta = window[len(self._settled_text) :]
        else:  # a tokenizer that rewrote earlier text: decode it all this once
            whole = self._decode(0)
            if whole.endswith("\ufffd") or not whole.startswith(self.text):
                return ""
            delta, window = whole[len(self.text) :], ""
        self.text += delta
        moved = ""
        if not window or len(self.ids) - self._anchor > self.WINDOW:
            moved = self._decode(self._settled)
        if moved:
            self._anchor, self._settled_text = self._settled, moved
        else:  # stay: a window must start with visible text, or its first word loses its space
            self._settled_text = window or self._decode(self._anchor)
        self._settled = len(self.ids)
        return delta

    def _decode(self, start: int) -> str:
        return self.tokenizer.decode(self.ids[start:], skip_special_tokens=True)


class Row:
    """One request's state while its batch generates."""

    def __init__(
        self,
        decoder: IncrementalDecoder,
        max_new_tokens: int,
        stop: Sequence[str],
        eos_ids: set[int],
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.decoder = decoder
        self.max_new_tokens = max_new_tokens
        self.stop = list(stop)
        self.eos_ids = eos_ids
        self.on_text = on_text
        self.cancelled = cancelled or (lambda: False)
        self.token_ids: list[int] = []  # the reply's tokens (no end-of-turn token)
        self.generated = 0  # tokens the model produced for this row, end-of-turn included
        self.emitted = ""
        self.finish_reason: FinishReason | None = None
        self.stopped_by_string = False
        self.first_token_at: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def push(self, token: int) -> None:
        if self.done:
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.cancelled():
            self.finish_reason = "cancelled"
            return
        self.generated += 1
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return
        self.token_ids.append(token)
        self.decoder.push(token)
        text = self.decoder.text
        if self.stop:
            hits = [text.find(s, max(0, len(self.emitted) - len(s))) for s in self.stop]
            hits = [h for h in hits if h >= 0]
            if hits:
                self._emit(text[: min(hits)])
                self.finish_reason = "stop"
                self.stopped_by_string = True
                return
            # Hold back a tail that could be the start of a stop string.
            hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            self._emit(text[: len(text) - hold])
        else:
            self._emit(text)
        if self.generated >= self.max_new_tokens:
            self.finish_reason = "length"

    def finish(self) -> None:
        """Generation ended: settle the reason and flush text held back for a possible stop string."""
        if not self.done:
            self.finish_reason = "length" if self.generated >= self.max_new_tokens else "stop"
        if not self.stopped_by_string:
            self._emit(self.decoder.tokenizer.decode(self.token_ids, skip_special_tokens=True))

    def _emit(self, upto: str) -> None:
        if len(upto) > len(self.emitted):
            delta, self.emitted = upto[len(self.emitted) :], upto
            if self.on_text is not None:
                self.on_text(delta)


class RowTracker(StoppingCriteria):
    """Feeds each row its new token and reports the rows that are done: :meth:`step` for ovis's
    decode loop, a call as a stopping criterion for Hugging Face ``generate``.

    With ``inputs_embeds`` only, ``generate`` hands criteria the generated ids alone, so column
    ``t`` is step ``t`` for every row.
    """

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)
        self.seen = 0

    def step(self, tokens: Sequence[int]) -> list[bool]:
        """One new token per row -> whether each row is done."""
        for row, token in zip(self.rows, tokens, strict=True):
            row.push(token)
        return [row.done for row in self.rows]

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.seen :].tolist()
        self.seen = input_ids.shape[1]
        for row, tokens in zip(self.rows, new, strict=True):
            for token in tokens:
                row.push(int(token))
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)

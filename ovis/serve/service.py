"""What the web UI and the HTTP API share: one loaded model, one batcher, one set of limits.

``Service.request`` turns a conversation, its images and generation settings into a queued-ready
:class:`~ovis.serve.runner.PreparedRequest`, enforcing the limits and turning every way the input
can be wrong into a :class:`~ovis.serve.errors.RequestError` (a 4xx), so nothing bad reaches the
worker.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from ovis.errors import ConfigError
from ovis.interfaces import ChatFormatError, Message
from ovis.interfaces.image import ImageError
from ovis.interfaces.video import VideoError
from ovis.processing import SequenceTooLongError
from ovis.serve.batcher import Batcher, Handle
from ovis.serve.errors import GenerationSettingsError, RequestError
from ovis.serve.generation import GenerationParams
from ovis.serve.limits import (
    ServeLimits,
    check_image_count,
    check_max_new_tokens,
    check_max_partition,
    check_prompt_tokens,
)
from ovis.serve.runner import OvisRunner, PreparedRequest, RunnerArguments


@dataclass
class Service:
    """One model behind a batcher, with the limits every front end enforces and the id it reports."""

    runner: OvisRunner
    batcher: Batcher
    limits: ServeLimits
    model_name: str

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        *,
        limits: ServeLimits | None = None,
        model_name: str | None = None,
        max_batch_size: int = 16,
        window_s: float = 0.01,
        device: str | None = None,
        dtype: str | None = None,
    ) -> Service:
        runner = OvisRunner(RunnerArguments(model_path=str(model_path), device=device, dtype=dtype,
                                            max_batch_size=max_batch_size))
        return cls.wrap(runner, limits=limits, model_name=model_name or Path(model_path).name,
                        max_batch_size=max_batch_size, window_s=window_s)

    @classmethod
    def wrap(
        cls, runner: OvisRunner, *, limits: ServeLimits | None = None, model_name: str = "ovis",
        max_batch_size: int = 16, window_s: float = 0.01,
    ) -> Service:
        runner.args.max_batch_size = max_batch_size
        batcher = Batcher(runner, max_batch_size=max_batch_size, window_s=window_s)
        return cls(runner=runner, batcher=batcher, limits=limits or ServeLimits(), model_name=model_name)

    @property
    def prompt_limit(self) -> int:
        processor_limit = self.runner.processor.max_length
        return min(self.limits.max_prompt_tokens or processor_limit, processor_limit)

    def params(self, **settings: Any) -> GenerationParams:
        """Generation settings from a request (unset ones take the server's defaults)."""
        settings = {k: v for k, v in settings.items() if v is not None}
        if "max_new_tokens" in settings:
            check_max_new_tokens(int(settings["max_new_tokens"]), self.limits)
        else:
            settings["max_new_tokens"] = min(self.runner.args.max_new_tokens, self.limits.max_new_tokens)
        if len(settings.get("stop", [])) > self.limits.max_stop:
            raise RequestError(f"stop has {len(settings['stop'])} strings; the limit is {self.limits.max_stop}",
                               param="stop")
        try:
            return GenerationParams.from_settings(**settings)
        except GenerationSettingsError as exc:
            raise RequestError(str(exc)) from exc

    def check_max_partition(self, max_partition: int) -> None:
        """A request's ``max_partition``: within the limit, and for a tiled model only (RequestError)."""
        check_max_partition(max_partition, self.limits)
        try:
            self.runner.check_max_partition(max_partition)
        except ConfigError as exc:
            raise RequestError(str(exc), param="max_partition") from exc

    def request(
        self,
        messages: Sequence[Message | dict],
        images: Sequence[Image.Image],
        params: GenerationParams,
        *,
        max_partition: int | None = None,
        videos: Sequence[Sequence[Image.Image]] = (),
    ) -> PreparedRequest:
        """``videos``: each video's frames, already sampled (one ``<video>`` marker each)."""
        check_image_count(len(images), self.limits)
        if max_partition is not None:
            self.check_max_partition(max_partition)
        if len(videos) > self.limits.max_videos:
            raise RequestError(f"the request has {len(videos)} videos; the limit is {self.limits.max_videos}",
                               param="messages")
        frames = max((len(v) for v in videos), default=1)
        if frames > self.limits.max_video_frames:
            raise RequestError(f"a video has {frames} frames; the limit is {self.limits.max_video_frames}",
                               param="messages")
        check_max_new_tokens(params.max_new_tokens, self.limits, param="max_new_tokens")
        self._refuse_overlong_text(messages)
        self._refuse_special_tokens(messages)
        try:
            request = self.runner.prepare(
                messages, list(images), params, max_partition=max_partition,
                videos=[list(v) for v in videos] or None, num_frames=frames,
            )
        except SequenceTooLongError as exc:
            raise RequestError(f"the prompt is too long: {exc}", param="messages") from exc
        except (ChatFormatError, ImageError, VideoError, ValidationError) as exc:
            raise RequestError(str(exc), param="messages") from exc
        check_prompt_tokens(len(request.sample.input_ids), self.prompt_limit)
        return request

    @functools.cached_property
    def _longest_token_chars(self) -> int:
        """The most characters one token of the vocabulary stands for (at least 1)."""
        return max((len(token) for token in self.runner.tokenizer.get_vocab()), default=1) or 1

    def _refuse_overlong_text(self, messages: Sequence[Message | dict]) -> None:
        """Text that cannot fit the prompt limit whatever its tokens is refused before the tokenizer
        sees it: tokenizing megabytes costs far more memory and time than the text itself."""
        chars = sum(len(_content(message)) for message in messages)
        most = self.prompt_limit * self._longest_token_chars
        if chars > most:
            raise RequestError(
                f"the prompt is too long: {chars:,} characters of text cannot fit in {self.prompt_limit:,} tokens "
                f"(the limit)", param="messages",
            )

    def _refuse_special_tokens(self, messages: Sequence[Message | dict]) -> None:
        """Chat-template tokens typed into a message would be read as real turn boundaries (a
        client could forge an assistant turn or end the reply): refuse them."""
        specials = [t for t in self.runner.tokenizer.all_special_tokens if t]
        for i, message in enumerate(messages):
            content = _content(message)
            found = [t for t in specials if t in content]
            if found:
                raise RequestError(
                    f"message {i} contains the special token {found[0]!r}; special tokens are not allowed in "
                    "message text", param=f"messages[{i}].content",
                )

    def submit(self, request: PreparedRequest, *, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        return self.batcher.submit(request, loop=loop)

    def close(self) -> None:
        self.batcher.close()


def _content(message: Message | dict) -> str:
    return message.content if isinstance(message, Message) else str(message.get("content", ""))

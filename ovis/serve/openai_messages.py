"""OpenAI chat messages -> an ovis conversation: ``<image>`` markers where the ``image_url`` parts
were and ``<video>`` where the ``video_url`` parts were (a base64 data: URL, as vLLM accepts), the
images and sampled video frames decoded (within the limits) in order, and every refusal naming its
field (``messages[1].content[0].image_url``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ovis.interfaces import IMAGE_MARKER
from ovis.interfaces.video import DEFAULT_NUM_FRAMES, VIDEO_MARKER
from ovis.serve.errors import RequestError
from ovis.serve.generation import GenerationParams
from ovis.serve.limits import (
    ServeLimits,
    check_image_count,
    check_num_frames,
    decode_data_url,
    decode_video_data_url,
)
from ovis.serve.openai_schema import ChatCompletionRequest
from ovis.serve.runner import PreparedRequest
from ovis.serve.service import Service

ROLES = ("system", "user", "assistant")


def encode(service: Service, body: ChatCompletionRequest, params: GenerationParams) -> PreparedRequest:
    """Decode the images and tokenize the prompt, within the limits (runs in a worker thread)."""
    if body.max_partition is not None:
        service.check_max_partition(body.max_partition)  # before decoding anything
    if body.num_frames is not None:
        check_num_frames(body.num_frames, service.limits)
        num_frames = body.num_frames
    else:
        num_frames = min(DEFAULT_NUM_FRAMES, service.limits.max_video_frames)
    messages, images, videos = conversation(body.messages, service.limits, num_frames=num_frames)
    return service.request(messages, images, params, max_partition=body.max_partition, videos=videos)


def conversation(
    raw: list[dict[str, Any]], limits: ServeLimits, *, num_frames: int = DEFAULT_NUM_FRAMES
) -> tuple[list[dict[str, str]], list[Image.Image], list[list[Image.Image]]]:
    """OpenAI messages -> ovis messages with ``<image>`` / ``<video>`` markers, the decoded images
    in order, and each video's sampled frames in order."""
    _check_media_count(raw, limits)  # before decoding any of them
    messages: list[dict[str, str]] = []
    media = _Media(images=[], videos=[], num_frames=num_frames)
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = _role(message, where)
        messages.append({"role": role, "content": _content(message.get("content"), role, where, limits, media)})
    return messages, media.images, media.videos


@dataclass
class _Media:
    images: list[Image.Image]
    videos: list[list[Image.Image]]
    num_frames: int


def _count_parts(raw: list[dict[str, Any]], kind: str) -> int:
    return sum(
        1 for m in raw if isinstance(m.get("content"), list)
        for p in m["content"] if isinstance(p, dict) and p.get("type") == kind
    )


def _check_media_count(raw: list[dict[str, Any]], limits: ServeLimits) -> None:
    try:
        check_image_count(_count_parts(raw, "image_url"), limits)
    except RequestError as exc:
        exc.param = "messages"
        raise
    videos = _count_parts(raw, "video_url")
    if videos > limits.max_videos:
        raise RequestError(f"the request has {videos} videos; the limit is {limits.max_videos}", param="messages")


def _role(message: dict[str, Any], where: str) -> str:
    role = message.get("role")
    if role == "developer":
        role = "system"
    if role not in ROLES:
        raise RequestError(
            f"{where}.role must be system, user or assistant, got {role!r} (tool and function messages "
            "are not supported)", param=f"{where}.role",
        )
    if message.get("tool_calls") or message.get("function_call"):
        raise RequestError(f"{where}: tool calls are not supported", param=f"{where}.tool_calls")
    return role


def _content(content: Any, role: str, where: str, limits: ServeLimits, media: _Media) -> str:
    """One message's text; its images and videos are appended to ``media``."""
    if isinstance(content, str):
        _check_text(content, f"{where}.content")
        return content
    if isinstance(content, list):
        pieces = [_part(part, role, f"{where}.content[{j}]", limits, media) for j, part in enumerate(content)]
        return "\n".join(pieces)
    if content is None and role == "assistant":
        return ""
    raise RequestError(
        f"{where}.content must be a string or a list of content parts, got {type(content).__name__}",
        param=f"{where}.content",
    )


def _part(part: Any, role: str, at: str, limits: ServeLimits, media: _Media) -> str:
    """One content part's text: its own for a text part, a marker for an image or a video (appended to
    ``media``)."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise RequestError(f"{at}.text must be a string", param=f"{at}.text")
        _check_text(text, f"{at}.text")
        return text
    if kind == "image_url":
        if role != "user":
            raise RequestError(f"{at}: images are accepted in user messages only", param=f"{at}.type")
        media.images.append(_image(part, at, limits))
        return IMAGE_MARKER
    if kind == "video_url":
        if role != "user":
            raise RequestError(f"{at}: videos are accepted in user messages only", param=f"{at}.type")
        media.videos.append(_video(part, at, limits, media.num_frames))
        return VIDEO_MARKER
    raise RequestError(
        f"{at}.type must be 'text', 'image_url' or 'video_url', got {kind!r}", param=f"{at}.type"
    )


def _check_text(text: str, where: str) -> None:
    """Refuse text no prompt can hold: a typed ``<image>`` (it would be read as an image position with
    no image behind it) or a lone UTF-16 surrogate (JSON can carry ``\\ud800``; UTF-8 cannot)."""
    surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    if surrogate is not None:
        raise RequestError(
            f"{where} contains an unpaired surrogate (U+{ord(surrogate):04X}), which is not text; send valid "
            "Unicode (a character outside the BMP as one code point or a surrogate pair)",
            param=where,
        )
    for marker, part in ((IMAGE_MARKER, "image_url"), (VIDEO_MARKER, "video_url")):
        if marker in text:
            raise RequestError(
                f"{where} contains {marker!r}, which marks {part.split('_')[0]} positions here; send "
                f"{part.split('_')[0]}s as {part} parts",
                param=where,
            )


def _image(part: dict[str, Any], at: str, limits: ServeLimits) -> Image.Image:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise RequestError(f"{at}.image_url.url must be a string (a data: URL)", param=f"{at}.image_url.url")
    try:
        return decode_data_url(url, limits, what=f"{at}.image_url")
    except RequestError as exc:
        exc.param = exc.param or f"{at}.image_url"
        raise


def _video(part: dict[str, Any], at: str, limits: ServeLimits, num_frames: int) -> list[Image.Image]:
    value = part.get("video_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise RequestError(f"{at}.video_url.url must be a string (a data: URL)", param=f"{at}.video_url.url")
    return decode_video_data_url(url, limits, num_frames, what=f"{at}.video_url")

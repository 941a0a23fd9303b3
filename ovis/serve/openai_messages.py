"""OpenAI chat messages -> an ovis conversation: ``<image>`` markers where the ``image_url`` parts
were, the images decoded (within the limits) in order, and every refusal naming its field
(``messages[1].content[0].image_url``)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from ovis.interfaces import IMAGE_MARKER
from ovis.serve.errors import RequestError
from ovis.serve.generation import GenerationParams
from ovis.serve.limits import ServeLimits, check_image_count, decode_data_url
from ovis.serve.openai_schema import ChatCompletionRequest
from ovis.serve.runner import PreparedRequest
from ovis.serve.service import Service

ROLES = ("system", "user", "assistant")


def encode(service: Service, body: ChatCompletionRequest, params: GenerationParams) -> PreparedRequest:
    """Decode the images and tokenize the prompt, within the limits (runs in a worker thread)."""
    messages, images = conversation(body.messages, service.limits)
    return service.request(messages, images, params)


def conversation(raw: list[dict[str, Any]], limits: ServeLimits) -> tuple[list[dict[str, str]], list[Image.Image]]:
    """OpenAI messages -> ovis messages with ``<image>`` markers, and the decoded images in order."""
    _check_image_count(raw, limits)  # before decoding any of them
    messages: list[dict[str, str]] = []
    images: list[Image.Image] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = _role(message, where)
        messages.append({"role": role, "content": _content(message.get("content"), role, where, limits, images)})
    return messages, images


def _check_image_count(raw: list[dict[str, Any]], limits: ServeLimits) -> None:
    count = sum(
        1 for m in raw if isinstance(m.get("content"), list)
        for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url"
    )
    try:
        check_image_count(count, limits)
    except RequestError as exc:
        exc.param = "messages"
        raise


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


def _content(content: Any, role: str, where: str, limits: ServeLimits, images: list[Image.Image]) -> str:
    """One message's text; its images are appended to ``images``."""
    if isinstance(content, str):
        _check_text(content, f"{where}.content")
        return content
    if isinstance(content, list):
        pieces = [_part(part, role, f"{where}.content[{j}]", limits, images) for j, part in enumerate(content)]
        return "\n".join(pieces)
    if content is None and role == "assistant":
        return ""
    raise RequestError(
        f"{where}.content must be a string or a list of content parts, got {type(content).__name__}",
        param=f"{where}.content",
    )


def _part(part: Any, role: str, at: str, limits: ServeLimits, images: list[Image.Image]) -> str:
    """One content part's text: its own for a text part, a marker for an image (appended to ``images``)."""
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
        images.append(_image(part, at, limits))
        return IMAGE_MARKER
    raise RequestError(f"{at}.type must be 'text' or 'image_url', got {kind!r}", param=f"{at}.type")


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
    if IMAGE_MARKER in text:
        raise RequestError(
            f"{where} contains {IMAGE_MARKER!r}, which marks image positions here; send images as image_url parts",
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

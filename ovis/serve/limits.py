"""Input limits for the servers: what a request may carry, checked before any work is queued.

Every violation raises :class:`~ovis.serve.errors.RequestError` with the HTTP status to answer
(400 for a malformed request, 413 for one that is too large) and a message naming the field, the
value and the limit.
Images are decoded by :func:`ovis.interfaces.image.load_image`, the loader every path shares: their pixel
count is checked from the header before decoding, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from ovis.serve.errors import RequestError

#: room for the JSON around the images, and for the text of a long conversation
TEXT_BODY_BYTES = 8 * 2**20
#: the body limit unless set: bodies are buffered whole, up to max_concurrent_requests at once, so
#: the default keeps that product in a few GB (8 images of 10 MiB need more: --max-body-bytes)
DEFAULT_BODY_CAP = 32 * 2**20


class ServeLimits(BaseModel):
    """Per-request limits; the defaults suit a single-GPU server and can be raised by flags."""

    model_config = ConfigDict(extra="forbid")

    max_image_bytes: int = Field(10 * 2**20, ge=1, description="encoded size of one image")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width x height of one image")
    max_images: int = Field(8, ge=0, description="images in one request")
    max_partition: int = Field(16, ge=1, description="the largest max_partition (tiles per image) a request asks")
    max_videos: int = Field(1, ge=0, description="videos (video_url parts) in one request")
    max_video_bytes: int | None = Field(
        None, ge=1, description="encoded size of one video; None: the images' share, max_images x max_image_bytes"
    )
    max_video_frames: int = Field(32, ge=1, description="frames taken from one video (num_frames' ceiling)")
    max_prompt_tokens: int | None = Field(None, ge=1, description="None: the processor's max_length")
    max_new_tokens: int = Field(1024, ge=1, description="the ceiling for max_tokens")
    max_stop: int = Field(4, ge=0, description="stop strings in one request")
    max_body_bytes: int | None = Field(
        None, ge=1, description="bytes of one request body; None: room for max_images images (base64) and "
        "8 MiB of text, at most 32 MiB"
    )

    @property
    def body_limit(self) -> int:
        """The largest request body accepted: ``max_body_bytes``, or what a request within the other
        limits can need (its images base64-encoded, plus text) up to :data:`DEFAULT_BODY_CAP`."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        images = self.max_images * (self.max_image_bytes * 4 // 3 + 4096)
        videos = self.max_videos * (self.video_bytes_limit * 4 // 3 + 4096)
        # a request with both at their largest may hit the body limit (a 413): the common one fits
        return min(max(images, videos) + TEXT_BODY_BYTES, DEFAULT_BODY_CAP)

    @property
    def video_bytes_limit(self) -> int:
        """``max_video_bytes``, or by default the bytes the images of one request may take."""
        if self.max_video_bytes is not None:
            return self.max_video_bytes
        return self.max_images * self.max_image_bytes


def open_image(data: bytes, limits: ServeLimits, *, what: str = "image") -> Image.Image:
    """Decode image bytes within the limits, as RGB."""
    # Here, not at the top, for start-up speed: ovis.interfaces.image imports torch, and `ovis serve`
    # checks its options (this module's ServeLimits) before torch loads.
    from ovis.interfaces.image import ImageError, ImageTooLargeError, load_image

    if len(data) > limits.max_image_bytes:
        raise RequestError(
            f"{what} is {len(data):,} bytes; the limit is {limits.max_image_bytes:,}", status=413
        )
    try:
        # The one loader of ovis: the pixel limit checked from the header before decoding, EXIF
        # orientation applied, every mode (16-bit included) converted to RGB the same way everywhere.
        return load_image(data, what=what, max_pixels=limits.max_image_pixels)
    except ImageTooLargeError as exc:
        if exc.size is None:
            raise RequestError(f"{what} is too large to decode safely ({exc})", status=413) from exc
        width, height = exc.size
        raise RequestError(
            f"{what} is {width}x{height} = {width * height:,} pixels; the limit is {exc.limit:,}", status=413
        ) from exc
    except ImageError as exc:
        cause = exc.__cause__
        if isinstance(cause, UnidentifiedImageError):
            raise RequestError(f"{what} could not be decoded as an image (not a format the server reads)") from exc
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc).removeprefix(f"{what}: ")
        raise RequestError(f"{what} could not be decoded as an image ({detail})") from exc


def decode_data_url(url: str, limits: ServeLimits, *, what: str = "image_url") -> Image.Image:
    """An image from a ``data:image/...;base64,...`` URL. Remote URLs are refused: the server does
    not fetch on a client's behalf."""
    if not url.startswith("data:"):
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise RequestError(
            f"{what}: only data: URLs are accepted (data:image/png;base64,...), got {shown!r}", param=what
        )
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise RequestError(f"{what}: expected data:<mime>;base64,<payload>", param=what)
    # base64 inflates by 4/3: refuse an oversized payload before decoding it.
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
        raise RequestError(
            f"{what} is about {len(payload) * 3 // 4:,} bytes; the limit is {limits.max_image_bytes:,}", status=413
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{what}: the base64 payload is invalid ({exc})", param=what) from exc
    return open_image(data, limits, what=what)


def decode_video_data_url(
    url: str, limits: ServeLimits, num_frames: int, *, what: str = "video_url"
) -> list[Image.Image]:
    """``num_frames`` frames sampled uniformly from a ``data:video/...;base64,...`` URL (decoded with
    PyAV), within the limits: encoded size, frame size (``max_image_pixels``), frame count."""
    if not url.startswith("data:"):
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise RequestError(
            f"{what}: only data: URLs are accepted (data:video/mp4;base64,...), got {shown!r}", param=what
        )
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise RequestError(f"{what}: expected data:<mime>;base64,<payload>", param=what)
    if len(payload) * 3 // 4 > limits.video_bytes_limit + 3:
        raise RequestError(
            f"{what} is about {len(payload) * 3 // 4:,} bytes; the limit is {limits.video_bytes_limit:,}",
            status=413, param=what,
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{what}: the base64 payload is invalid ({exc})", param=what) from exc
    return decode_video(data, limits, num_frames, what=what)


def decode_video(data: bytes, limits: ServeLimits, num_frames: int, *, what: str = "video") -> list[Image.Image]:
    """``num_frames`` frames sampled uniformly from an encoded video (an upload, a data: URL's
    payload), within the limits: encoded size, frame size (``max_image_pixels``), frame count."""
    from ovis.errors import UsageError
    from ovis.interfaces.video import VideoError, load_video

    if len(data) > limits.video_bytes_limit:
        raise RequestError(f"{what} is {len(data):,} bytes; the limit is {limits.video_bytes_limit:,}",
                           status=413, param=what)
    check_num_frames(num_frames, limits)
    try:
        return load_video(data, num_frames, what=what, max_pixels=limits.max_image_pixels)
    except UsageError as exc:  # PyAV missing on the server: its setup, not the request
        raise RequestError(f"{what}: this server cannot read video files ({exc})", status=501, param=what) from exc
    except VideoError as exc:
        raise RequestError(str(exc), param=what) from exc


def check_num_frames(value: int, limits: ServeLimits, *, param: str = "num_frames") -> None:
    if value < 1:
        raise RequestError(f"{param} must be at least 1, got {value}", param=param)
    if value > limits.max_video_frames:
        raise RequestError(f"{param} is {value}; the limit is {limits.max_video_frames}", param=param)


def check_max_partition(value: int, limits: ServeLimits, *, param: str = "max_partition") -> None:
    if value < 1:
        raise RequestError(f"{param} must be at least 1, got {value}", param=param)
    if value > limits.max_partition:
        raise RequestError(f"{param} is {value}; the limit is {limits.max_partition}", param=param)


def check_image_count(count: int, limits: ServeLimits) -> None:
    if count > limits.max_images:
        raise RequestError(f"the request has {count} images; the limit is {limits.max_images}")


def check_max_new_tokens(value: int, limits: ServeLimits, *, param: str = "max_tokens") -> None:
    if value < 1:
        raise RequestError(f"{param} must be at least 1, got {value}", param=param)
    if value > limits.max_new_tokens:
        raise RequestError(f"{param} is {value}; the limit is {limits.max_new_tokens}", param=param)


def check_prompt_tokens(count: int, limit: int) -> None:
    if count > limit:
        raise RequestError(f"the prompt is {count} tokens (images included); the limit is {limit}", param="messages")

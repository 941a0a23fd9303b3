"""Video for prompts: ``<video>`` becomes a few frames sampled uniformly, each given as an image.

Ovis2 has no video encoder of its own: its release (the model card's video example, and VLMEvalKit's
Ovis2 wrapper) samples N frames uniformly and puts one ``<image>`` per frame, one per line, with
``max_partition=1`` (each frame a single tile). ovis does the same: :func:`expand_videos` turns each
``<video>`` marker into its frames' ``<image>`` markers, and the runner tiles frames with one tile.

Files are decoded with PyAV (the optional extra ``video``: ``pip install 'ovis[video]'``), imported
only when a video file is read, so nothing else needs it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ovis.errors import ConfigError, OvisError, UsageError
from ovis.interfaces.chat import IMAGE_MARKER, ChatFormat, ChatFormatError, Message

VIDEO_MARKER = "<video>"
#: frames taken from a video unless asked otherwise (the Ovis2 model card uses 12, VLMEvalKit 8+)
DEFAULT_NUM_FRAMES = 8
#: videos of at least this many frames are sampled by seeking (shorter ones are decoded straight
#: through: as fast, and exact for any frame timing)
SEEK_FROM_FRAMES = 300

#: a video: a file path, its encoded bytes, or its frames (images or image paths) already taken
VideoInput = str | Path | bytes | Sequence[Image.Image | str | Path]


class VideoError(OvisError, ValueError):
    """A video that cannot be read (not a video, corrupt, no frames, too large)."""


def check_num_frames(num_frames: object, *, field: str = "num_frames") -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ConfigError(f"{field} must be a whole number >= 1, got {num_frames!r}")
    return num_frames


def sample_indices(total: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread evenly over ``total`` frames, first and last included (all of
    them when there are no more than ``num_frames``); one frame: the middle one."""
    if total <= num_frames:
        return list(range(total))
    if num_frames == 1:
        return [(total - 1) // 2]
    return [round(i * (total - 1) / (num_frames - 1)) for i in range(num_frames)]


def _av():
    try:
        import av
    except ImportError as exc:
        raise UsageError(
            "reading a video file needs PyAV: pip install 'ovis[video]' (or pip install av); "
            "or pass the video as a list of frames"
        ) from exc
    return av


def read_video(
    source: str | Path | bytes,
    num_frames: int = DEFAULT_NUM_FRAMES,
    *,
    what: str | None = None,
    max_pixels: int | None = None,
) -> list[Image.Image]:
    """Decode ``num_frames`` frames sampled uniformly from a video file (or its bytes) as RGB images.

    ``max_pixels``: refuse frames larger than this (width x height), checked before decoding.
    """
    check_num_frames(num_frames)
    label = what or (str(source) if isinstance(source, (str, Path)) else "video")
    av = _av()
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise VideoError(f"{label}: no such video file")
    opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with av.open(opened) as container:
            streams = container.streams.video
            if not streams:
                raise VideoError(f"{label}: the file has no video stream")
            stream = streams[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if max_pixels is not None and width * height > max_pixels:
                raise VideoError(
                    f"{label}: frames are {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
                )
            total = stream.frames or _frames_from_duration(container, stream)
            if total < SEEK_FROM_FRAMES and not stream.frames:  # a short video without a count: count exactly
                total = sum(1 for _ in container.decode(stream))
        wanted = sample_indices(total, num_frames)
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            stream = container.streams.video[0]
            frames = _seek_frames(container, stream, wanted) if total >= SEEK_FROM_FRAMES else None
        if frames is None:
            with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
                frames = _decode_frames(container, container.streams.video[0], wanted)
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoError(f"{label}: could not be decoded as a video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise VideoError(f"{label}: the video has no frames")
    return frames


def _frames_from_duration(container, stream) -> int:
    """Frames in a video whose header has no count (Matroska, WebM), from its duration and frame
    rate: counting them would decode the whole file twice. 0 when either is unknown."""
    rate = stream.average_rate
    if stream.duration is not None and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # microseconds
    else:
        return 0
    return int(seconds * float(rate)) if rate and seconds > 0 else 0


def _decode_frames(container, stream, wanted: Sequence[int]) -> list[Image.Image]:
    """The frames at ``wanted`` (increasing indices), decoding every frame up to the last."""
    wanted_set, last = set(wanted), max(wanted, default=-1)
    frames = []
    for index, frame in enumerate(container.decode(stream)):
        if index in wanted_set:
            frames.append(frame.to_image().convert("RGB"))
        if index >= last:
            break
    return frames


def _seek_frames(container, stream, wanted: Sequence[int]) -> list[Image.Image] | None:
    """The frames at ``wanted`` by seeking to the keyframe before each and decoding up to it: the
    cost grows with the number of frames taken, not with the video's length. Frame ``i`` is the
    one shown at ``start + i / frame rate``; None (decode instead) when the stream has no constant
    rate to say so, or a frame has no timestamp."""
    rate, base = stream.average_rate, stream.time_base
    if not rate or not base or stream.guessed_rate != rate:
        return None
    start = stream.start_time or 0
    period = 1 / (rate * base)  # one frame, in time-base units
    frames = []
    for index in wanted:
        target = start + index * period
        container.seek(int(target), stream=stream, backward=True)
        found = None
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            found = frame  # past the end (an estimated count that ran over): the last frame
            if frame.pts >= target - period / 2:
                break
        if found is None:
            return None
        frames.append(found.to_image().convert("RGB"))
    return frames


def probe_video(path: str | Path, *, what: str | None = None) -> None:
    """Check, cheaply, that a file is a video PyAV can decode: it opens, has a video stream and
    yields a first frame (the rest is not read: checking a benchmark's files before a run)."""
    label = what or str(path)
    av = _av()
    if not Path(path).is_file():
        raise VideoError(f"{label}: no such video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{label}: the file has no video stream")
            if next(container.decode(container.streams.video[0]), None) is None:
                raise VideoError(f"{label}: the video has no frames")
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoError(f"{label}: could not be decoded as a video ({type(exc).__name__}: {exc})") from exc


def load_video(
    video: VideoInput, num_frames: int = DEFAULT_NUM_FRAMES, *, what: str | None = None, max_pixels: int | None = None
) -> list[Image.Image]:
    """A video file, its bytes, or a list of frames -> ``num_frames`` (or fewer) frames sampled uniformly."""
    from ovis.interfaces.image import ImageError, load_image  # torch: imported on use

    check_num_frames(num_frames)
    label = what or (str(video) if isinstance(video, (str, Path)) else "video")
    if isinstance(video, (str, Path, bytes)):
        return read_video(video, num_frames, what=label, max_pixels=max_pixels)
    frames = list(video)
    if not frames:
        raise VideoError(f"{label}: the list of frames is empty")
    picked = [frames[i] for i in sample_indices(len(frames), num_frames)]
    try:
        return [
            load_image(frame, what=f"{label} frame {i + 1}", max_pixels=max_pixels) for i, frame in enumerate(picked)
        ]
    except ImageError as exc:
        raise VideoError(str(exc)) from exc


def count_video_markers(messages: Sequence[Message]) -> int:
    return sum(m.content.count(VIDEO_MARKER) for m in messages)


def expand_videos(
    messages: Sequence[Message | dict],
    images: Sequence[object],
    videos: Sequence[Sequence[Image.Image]],
    *,
    separator: str = "\n",
) -> tuple[list[Message], list[object], list[bool]]:
    """Replace each ``<video>`` by one ``<image>`` per frame (joined by newlines, as the Ovis2
    release does) and merge the frames into the image list in marker order.

    Returns the messages, every image in order, and which of them are video frames. Without any
    ``<video>`` marker the videos go at the start of the first user message (after its images'
    markers when those are missing too, so images come first).
    """
    messages = ChatFormat.coerce(messages)
    markers = count_video_markers(messages)
    if markers == 0 and videos:
        for i, message in enumerate(messages):
            if message.role == "user":
                prefix = (VIDEO_MARKER + separator) * len(videos)
                if message.content.count(IMAGE_MARKER) == 0 and images:
                    prefix = (IMAGE_MARKER + separator) * len(images) + prefix
                messages[i] = Message(role="user", content=prefix + message.content)
                break
        else:
            raise ChatFormatError("videos were given but the conversation has no user message to attach them to")
        markers = len(videos)
    if markers != len(videos):
        raise ChatFormatError(
            f"the conversation has {markers} {VIDEO_MARKER} marker(s) but {len(videos)} video(s) were given; "
            "they must match one to one"
        )
    pending_images, pending_videos = iter(images), iter(videos)
    merged: list[object] = []
    is_frame: list[bool] = []
    out: list[Message] = []
    for message in messages:
        pieces = message.content.split(VIDEO_MARKER)
        text = pieces[0]
        _take_images(pieces[0], pending_images, merged, is_frame)
        for piece in pieces[1:]:
            frames = list(next(pending_videos))
            text += "\n".join([IMAGE_MARKER] * len(frames)) + piece
            merged.extend(frames)
            is_frame.extend([True] * len(frames))
            _take_images(piece, pending_images, merged, is_frame)
        out.append(Message(role=message.role, content=text))
    merged.extend(pending_images)  # images without markers: the processor reports the mismatch
    is_frame.extend([False] * (len(merged) - len(is_frame)))
    return out, merged, is_frame


def _take_images(text: str, pending, merged: list[object], is_frame: list[bool]) -> None:
    for _ in range(text.count(IMAGE_MARKER)):
        image = next(pending, None)
        if image is None:
            return
        merged.append(image)
        is_frame.append(False)

"""``OvisRunner``: ask a trained or composed model about images from Python.

The v1 entry point keeps its shape (``OvisRunner(RunnerArguments(model_path=...)).run(image, text)``
returns ``{prompt, output, prompt_tokens, total_tokens}``) and gains what it lacked: every generation
argument honoured, batches of prompts with different lengths and image counts generated together
(left padding + KV cache, equal to one-at-a-time under greedy decoding), token streaming,
multi-turn chats, several images per prompt and text-only prompts.

Tokens come from ovis's own decode loop (:mod:`ovis.serve.decode_loop`: the same tokens as Hugging
Face ``generate``, less Python per step); beam search, and a checkpoint whose generation config asks
for more than that loop does, go through ``generate``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ovis.composer import load
from ovis.errors import ConfigError, InputFileError
from ovis.interfaces import IMAGE_MARKER, ChatFormatError, Message
from ovis.interfaces.image import load_image
from ovis.interfaces.video import (
    DEFAULT_NUM_FRAMES,
    VIDEO_MARKER,
    VideoInput,
    check_num_frames,
    expand_videos,
    load_video,
)
from ovis.precision import resolve_precision
from ovis.processing import EncodedSample, OvisProcessor, with_image_markers
from ovis.serve.decode_loop import Sampling, decode, needs_hf_generate
from ovis.serve.generation import Completion, GenerationParams, IncrementalDecoder, Row, RowTracker

ImageInput = str | Path | Image.Image
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """``dtype`` if given; bf16 on a GPU that has it (else fp16); on a CPU, what
    ``ovis.precision`` picks: bf16 only with native bf16 that measures faster, else float32."""
    if dtype and dtype != "auto":
        if dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPE_NAMES)}; got {dtype!r}")
        if device.type == "cpu" and dtype == "bfloat16":
            resolve_precision("bf16", device)  # warns where the CPU only emulates bf16
        return DTYPE_NAMES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return resolve_precision("auto", device).dtype


@dataclass
class RunnerArguments:
    """The v1 fields (``model_path``, ``do_sample``, ``temperature``, ``top_p``, ``num_beams``,
    ``max_new_tokens``) plus device/dtype choice and batching. Defaults match v1: greedy, 512 tokens."""

    model_path: str
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    num_beams: int = 1
    max_new_tokens: int = 512
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    device: str | None = None  # "auto" / None: CUDA if present, else CPU
    dtype: str | None = None  # "auto" / None: bf16 on CUDA; on a CPU see ovis.precision
    max_batch_size: int = 16
    #: "ovis": ovis's decode loop wherever it gives generate's result (beam search and unusual
    #: generation configs still use generate); "hf": Hugging Face generate for every request
    decode_loop: str = "ovis"

    def __post_init__(self) -> None:
        if self.decode_loop not in ("ovis", "hf"):
            raise ConfigError(f"decode_loop must be 'ovis' or 'hf'; got {self.decode_loop!r}")

    def generation_params(self, **overrides: Any) -> GenerationParams:
        fields = {name: getattr(self, name) for name in GenerationParams.model_fields}
        unknown = set(overrides) - set(fields)
        if unknown:
            raise TypeError(
                f"unknown generation argument(s): {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(GenerationParams.model_fields)}"
            )
        fields.update(overrides)
        return GenerationParams.from_settings(**fields)


@dataclass
class PreparedRequest:
    """One prompt ready to generate from: the encoded sample plus its settings and callbacks."""

    sample: EncodedSample
    prompt: str
    params: GenerationParams
    on_text: Callable[[str], None] | None = None
    cancelled: Callable[[], bool] | None = None


class OvisRunner:
    def __init__(
        self,
        args: RunnerArguments | None = None,
        *,
        model=None,
        processor: OvisProcessor | None = None,
    ) -> None:
        """Load ``args.model_path``, or wrap an already loaded ``model`` and ``processor``."""
        if args is None and model is None:
            raise ValueError("give RunnerArguments(model_path=...) or a loaded model and processor")
        self.args = args or RunnerArguments(model_path="<in memory>")
        if model is None:
            model, processor = self._load(self.args)
        elif processor is None:
            raise ValueError("a model passed in needs its processor too")
        self.model = model.eval()
        self.processor = processor
        self.device = self.model.device
        self.tokenizer = processor.tokenizer
        self.eos_ids = self._eos_ids()
        # One generate at a time: the model is shared by threads (servers, streaming).
        self._lock = threading.Lock()

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model generates: hold it to use the model otherwise (e.g. ``ovis.inspect``)
        without racing a generation on another thread."""
        return self._lock

    @staticmethod
    def _load(args: RunnerArguments):
        path = Path(args.model_path).expanduser()
        written_by = "give a directory written by `ovis compose`, `ovis train` or `ovis quickstart`"
        if not path.is_dir():
            raise InputFileError(f"model_path {args.model_path!r} is not a directory; {written_by}")
        if not (path / "config.json").is_file():
            raise InputFileError(
                f"model_path {args.model_path!r} has no config.json, so it holds no model; {written_by}"
            )
        device = pick_device(args.device)
        dtype = pick_dtype(device, args.dtype)
        dtype_name = next(name for name, value in DTYPE_NAMES.items() if value == dtype)
        return load(path, dtype=dtype_name, device=str(device))

    def _eos_ids(self) -> set[int]:
        ids = set()
        config = getattr(self.model.llm, "generation_config", None)
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        chat_stops = self.processor.chat_format.stop_token_ids(self.tokenizer)
        for value in (eos, self.tokenizer.eos_token_id, chat_stops):
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple, set)) else [value])
        return {int(i) for i in ids}

    # -- building prompts -------------------------------------------------------------------------
    def check_max_partition(self, max_partition: Any) -> int | None:
        """A per-request ``max_partition``: None, or a whole number >= 1 for a tiled model (a v1-layout
        model has no tiles to set, so asking is an error rather than silently ignored)."""
        if max_partition is None:
            return None
        if isinstance(max_partition, bool) or not isinstance(max_partition, int) or max_partition < 1:
            raise ConfigError(f"max_partition must be a whole number >= 1, got {max_partition!r}")
        if self.processor.tiling is None:
            raise ConfigError(
                "max_partition applies to models with the tiled image layout; this model uses the v1 layout "
                "(one square per image)"
            )
        return max_partition

    def prepare(
        self,
        messages: Sequence[Message | dict] | str,
        images: Sequence[ImageInput] | ImageInput | None = None,
        params: GenerationParams | None = None,
        *,
        max_partition: int | None = None,
        videos: Sequence[VideoInput] | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        **callbacks: Any,
    ) -> PreparedRequest:
        """A conversation (or a single question) and its images -> a :class:`PreparedRequest`.

        Without ``<image>`` markers the images go first in the first user message, as the v1
        runner did (``"<image> " + text``). ``max_partition`` (tiled models): the most tiles per
        image for this request. ``videos``: one per ``<video>`` marker (else before the text), each
        a file, its bytes or a list of frames; ``num_frames`` frames are sampled uniformly and each
        is one tile (see :mod:`ovis.interfaces.video`).
        """
        max_partition = self.check_max_partition(max_partition)
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if images is None:
            images = []
        elif isinstance(images, (str, Path, Image.Image)):
            images = [images]
        loaded = [load_image(image, what=_label(image, i)) for i, image in enumerate(images)]
        separator = self.processor.image_marker_separator
        partitions: list[int | None] | None = None
        if videos or any(VIDEO_MARKER in _text_of(m) for m in messages):
            check_num_frames(num_frames)
            clips = [load_video(video, num_frames, what=_video_label(video, i)) for i, video in enumerate(videos or [])]
            messages, loaded, is_frame = expand_videos(messages, loaded, clips, separator=separator)
            if self.processor.tiling is not None:
                partitions = [1 if frame else max_partition for frame in is_frame]
        messages = with_image_markers(messages, len(loaded), separator=separator)
        if partitions is None and max_partition is not None:
            partitions = [max_partition] * len(loaded)
        sample = self.processor.encode(messages, loaded, add_generation_prompt=True, max_partition=partitions)
        prompt = self.processor.chat_format.render(
            self.processor.chat_format.prepare(messages, add_generation_prompt=True), add_generation_prompt=True
        )
        params = params or self.args.generation_params()
        return PreparedRequest(sample=sample, prompt=prompt, params=params, **callbacks)

    # -- generating -------------------------------------------------------------------------------
    def generate(self, requests: Sequence[PreparedRequest]) -> list[Completion]:
        """Generate for many requests, batching those whose sampling settings agree; results in order."""
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.params.batch_key(), []).append(i)
        size = max(1, self.args.max_batch_size)
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                for i, completion in zip(chunk, self._generate_batch([requests[i] for i in chunk]), strict=True):
                    results[i] = completion
        return results  # type: ignore[return-value]

    def _generate_batch(self, requests: Sequence[PreparedRequest]) -> list[Completion]:
        params = requests[0].params
        batch = self.processor.collate([r.sample for r in requests], padding_side="left")
        rows = [
            Row(
                IncrementalDecoder(self.tokenizer, self.eos_ids),
                r.params.max_new_tokens,
                r.params.stop,
                self.eos_ids,
                on_text=r.on_text,
                cancelled=r.cancelled,
            )
            for r in requests
        ]
        max_new_tokens = max(r.params.max_new_tokens for r in requests)
        pixel_values = batch["pixel_values"].to(self.device, dtype=self._pixel_dtype())
        pixel_values = pixel_values if pixel_values.numel() else None
        use_hf = self.args.decode_loop == "hf" or needs_hf_generate(self.model.llm, params.num_beams) is not None
        output = None
        with self._lock, torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            started = time.perf_counter()
            if use_hf:
                output = self._hf_generate(batch, pixel_values, params, max_new_tokens, rows)
            else:
                embeds = self.model.embed_inputs(batch["input_ids"].to(self.device), pixel_values)
                decode(
                    self.model.llm,
                    embeds,
                    batch["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    sampling=self._sampling(params),
                    eos_ids=self.eos_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    on_step=RowTracker(rows).step,
                )
        completions = []
        for i, (request, row) in enumerate(zip(requests, rows, strict=True)):
            if params.num_beams > 1 and output is not None:
                # Beam search reorders rows every step: its rows are settled from the final tokens.
                for token in output[i]:
                    row.push(int(token))
                    if row.done:
                        break
            row.finish()
            completions.append(
                Completion(
                    prompt=request.prompt,
                    output=row.emitted,
                    prompt_tokens=len(request.sample.input_ids),
                    completion_tokens=row.generated,
                    finish_reason=row.finish_reason,  # type: ignore[arg-type]
                    token_ids=row.token_ids,
                    first_token_s=(row.first_token_at - started) if row.first_token_at else None,
                )
            )
        return completions

    def _hf_generate(self, batch, pixel_values, params: GenerationParams, max_new_tokens: int, rows) -> list:
        kwargs = params.hf_kwargs()
        kwargs["max_new_tokens"] = max_new_tokens
        kwargs["pad_token_id"] = self.tokenizer.pad_token_id
        kwargs["eos_token_id"] = sorted(self.eos_ids) or None
        if params.num_beams == 1:
            kwargs["stopping_criteria"] = [RowTracker(rows)]
        return self.model.generate(batch["input_ids"], pixel_values, batch["attention_mask"], **kwargs).tolist()

    def _sampling(self, params: GenerationParams) -> Sampling:
        penalty = params.repetition_penalty
        if penalty is None:  # generate would take the checkpoint's own, so take it too
            penalty = getattr(getattr(self.model.llm, "generation_config", None), "repetition_penalty", None)
        return Sampling(
            do_sample=params.do_sample,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            repetition_penalty=penalty,
        )

    def _pixel_dtype(self) -> torch.dtype:
        return next(self.model.visual_tokenizer.parameters()).dtype

    # -- the friendly calls -----------------------------------------------------------------------
    def run(
        self,
        image: ImageInput | Sequence[ImageInput] | None,
        text: str,
        *,
        max_partition: int | None = None,
        video: VideoInput | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        **gen: Any,
    ) -> dict[str, Any]:
        """Answer ``text`` about ``image`` (one, several, or None for a text-only prompt) and/or
        ``video`` (a file, its bytes or a list of frames)."""
        request = self.prepare(
            text,
            image,
            self.args.generation_params(**gen),
            max_partition=max_partition,
            videos=[video] if video is not None else None,
            num_frames=num_frames,
        )
        return self.generate([request])[0].as_dict()

    def run_batch(
        self,
        items: Sequence[tuple[ImageInput | Sequence[ImageInput] | None, str]],
        *,
        max_partition: int | None = None,
        **gen: Any,
    ) -> list[dict[str, Any]]:
        """``run`` over many ``(image, text)`` pairs, generated in batches."""
        params = self.args.generation_params(**gen)
        requests = [self.prepare(text, image, params, max_partition=max_partition) for image, text in items]
        return [c.as_dict() for c in self.generate(requests)]

    def chat(
        self,
        messages: Sequence[Message | dict],
        images: Sequence[ImageInput] = (),
        *,
        max_partition: int | None = None,
        videos: Sequence[VideoInput] | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        **gen: Any,
    ) -> dict[str, Any]:
        """One reply to a whole conversation (history included); ``<image>`` / ``<video>`` markers
        place images and videos."""
        request = self.prepare(
            messages,
            images,
            self.args.generation_params(**gen),
            max_partition=max_partition,
            videos=videos,
            num_frames=num_frames,
        )
        return self.generate([request])[0].as_dict()

    def stream(
        self,
        image: ImageInput | Sequence[ImageInput] | None,
        text: str | Sequence[Message | dict],
        *,
        max_partition: int | None = None,
        video: VideoInput | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        **gen: Any,
    ) -> Iterator[str]:
        """Yield the answer piece by piece as it is generated (beam search yields it whole at the end)."""
        deltas: queue.Queue = queue.Queue()
        stop = threading.Event()
        request = self.prepare(
            text,
            image,
            self.args.generation_params(**gen),
            max_partition=max_partition,
            videos=[video] if video is not None else None,
            num_frames=num_frames,
            on_text=deltas.put,
            cancelled=stop.is_set,
        )
        done = object()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                completion = self.generate([request])[0]
                if request.params.num_beams > 1:
                    deltas.put(completion.output)
            except BaseException as exc:  # handed to the consuming thread
                failure.append(exc)
            finally:
                deltas.put(done)

        thread = threading.Thread(target=work, name="ovis-stream", daemon=True)
        thread.start()
        try:
            while (item := deltas.get()) is not done:
                yield item
        finally:
            stop.set()  # the consumer went away early: let the generation end
            thread.join()
        if failure:
            raise failure[0]

    def session(self, system: str | None = None, *, max_partition: int | None = None) -> ChatSession:
        """A multi-turn chat; ``max_partition`` (tiled models) applies to each turn unless a turn gives its own."""
        return ChatSession(self, system=system, max_partition=max_partition)


class ChatSession:
    """A multi-turn conversation that remembers its history and images."""

    def __init__(self, runner: OvisRunner, system: str | None = None, *, max_partition: int | None = None) -> None:
        self.runner = runner
        self.max_partition = runner.check_max_partition(max_partition)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.images: list[Image.Image] = []

    def _user_turn(self, text: str, images: Sequence[ImageInput]) -> None:
        loaded = [load_image(image, what=_label(image, len(self.images) + i)) for i, image in enumerate(images)]
        separator = self.runner.processor.image_marker_separator
        self.messages.append({"role": "user", "content": user_turn_content(text, len(loaded), separator=separator)})
        self.images.extend(loaded)

    def ask(self, text: str, images: Sequence[ImageInput] = (), **gen: Any) -> dict[str, Any]:
        self._user_turn(text, images)
        try:
            gen.setdefault("max_partition", self.max_partition)
            result = self.runner.chat(self.messages, self.images, **gen)
        except Exception:
            self._undo()
            raise
        self.messages.append({"role": "assistant", "content": result["output"]})
        return result

    def stream(self, text: str, images: Sequence[ImageInput] = (), **gen: Any) -> Iterator[str]:
        self._user_turn(text, images)
        pieces: list[str] = []
        try:
            gen.setdefault("max_partition", self.max_partition)
            for piece in self.runner.stream(self.images, self.messages, **gen):
                pieces.append(piece)
                yield piece
        except BaseException:
            self._undo()
            raise
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def _undo(self) -> None:
        last = self.messages.pop()
        self.images = self.images[: len(self.images) - last["content"].count(IMAGE_MARKER)]

    def reset(self) -> None:
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.images = []


def user_turn_content(text: str, num_images: int, *, separator: str = "\n") -> str:
    """A new user message's content with one ``<image>`` per image that comes with it: the text's
    own markers when their count matches, else one marker per image before the text (raises
    ``ChatFormatError`` when the text has markers but not as many as images)."""
    markers = text.count(IMAGE_MARKER)
    if markers and markers != num_images:
        raise ChatFormatError(
            f"the message has {markers} {IMAGE_MARKER} marker(s) but {num_images} image(s) came with it; "
            "leave the markers out to put the images before the text"
        )
    return with_image_markers([Message(role="user", content=text)], num_images, separator=separator)[0].content


def _text_of(message: Message | dict) -> str:
    return message.content if isinstance(message, Message) else str(message.get("content") or "")


def _video_label(video: VideoInput, index: int) -> str:
    return f"video {index + 1} ({video})" if isinstance(video, (str, Path)) else f"video {index + 1}"


def _label(image: ImageInput, index: int) -> str:
    """How an image is named in errors: its path when it has one."""
    return f"image {index + 1}" if isinstance(image, Image.Image) else f"image {index + 1} ({image})"

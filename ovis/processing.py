"""``OvisProcessor``: conversations and images in, model-ready tensors out.

It owns the three things that must agree between training and inference: the chat format
(prompt text and which tokens are learned), the image preprocessing, and the expansion of each
``<image>`` into a block of positions: ``num_image_tokens`` of them in the v1 layout (one padded
square per image), or, in the tiled layout (``tiling`` set; see :mod:`ovis.tiling`), indicators and
``tokens_per_tile`` positions per view of the grid chosen for that image. Truncation never cuts
inside a block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from pydantic import ValidationError
from transformers import AutoTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.errors import ConfigError, InputFileError, OvisError, UsageError, validation_message
from ovis.interfaces import (
    IMAGE_MARKER,
    ChatFormat,
    ChatFormatError,
    ImagePreprocessSpec,
    ImageProcessor,
    Message,
)
from ovis.interfaces.chat import IMAGE_PLACEHOLDER_ID, tokenize_segments
from ovis.interfaces.image import load_image
from ovis.model.configuration_ovis import check_tiling
from ovis.model.merging import BEGIN_INDICATOR, END_INDICATOR, IGNORE_INDEX, IMAGE_TOKEN_ID
from ovis.model.ovis2_format import is_hf_ovis2_checkpoint, read_hf_configs, translate_hf_config
from ovis.model.ovis2_release_format import is_release_checkpoint, translate_release_config
from ovis.model.v1_format import (
    ConversionError,
    NotAnOvisCheckpointError,
    is_original_checkpoint,
    is_original_config,
    read_config,
    read_preprocessor,
    translate_config,
)
from ovis.plugin_host import UnknownNameError, get_host
from ovis.tiling import Grid, TiledImage, Tiler, TilingOptions, block_length, choose_grid, image_block

PREPROCESSOR_FILE = "preprocessor_config.json"
ImageInput = Image.Image | str | Path


class SequenceTooLongError(OvisError, ValueError):
    """A sample longer than the context that cannot be shortened without losing what matters."""


@dataclass
class EncodedSample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # [num_images, 3, S, S]; tiled layout: [views of every image, 3, S, S]
    grids: list[Grid] | None = None  # tiled layout: each image's (rows, cols)

    @property
    def num_images(self) -> int:
        return len(self.grids) if self.grids is not None else int(self.pixel_values.shape[0])


def count_markers(messages: Sequence[Message]) -> int:
    return sum(m.content.count(IMAGE_MARKER) for m in messages)


def with_image_markers(messages: Sequence[Message | dict], num_images: int, *, separator: str = "\n") -> list[Message]:
    """If the conversation has no ``<image>`` but images come with it, put the markers at the start
    of the first user message, each followed by ``separator``: a newline as the training data
    (LLaVA's layout) has it, or a space, the Ovis v1 runner's ``"<image> " + text``, for a model read
    from a v1 checkpoint (:attr:`OvisProcessor.image_marker_separator`)."""
    messages = ChatFormat.coerce(messages)
    if num_images == 0 or count_markers(messages) > 0:
        return messages
    for i, message in enumerate(messages):
        if message.role == "user":
            prefix = (IMAGE_MARKER + separator) * num_images
            messages[i] = Message(role="user", content=prefix + message.content)
            return messages
    raise ChatFormatError("images were given but the conversation has no user message to attach them to")


class OvisProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: ImageProcessor,
        chat_format: ChatFormat,
        num_image_tokens: int,
        max_length: int = 2048,
        image_marker_separator: str = "\n",
        tiling: TilingOptions | None = None,
        tokens_per_tile: int | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; the LLM plugin must settle one")
        if tiling is not None and (tokens_per_tile is None or tokens_per_tile < 1):
            raise ConfigError(f"the tiled layout needs tokens_per_tile >= 1, got {tokens_per_tile!r}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_format = chat_format
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        #: what follows each ``<image>`` a runner puts before a question that has none (see
        #: :func:`with_image_markers`); saved with the processor
        self.image_marker_separator = image_marker_separator
        #: the tiled layout's options (None: the v1 layout) and image positions per view
        self.tiling = tiling
        self.tokens_per_tile = tokens_per_tile
        self.tiler = Tiler(image_processor.spec, tiling) if tiling is not None else None

    # -- one sample -------------------------------------------------------------------------------
    def encode(
        self,
        messages: Sequence[Message | dict],
        images: Sequence[ImageInput] = (),
        *,
        add_generation_prompt: bool = False,
        overflow: Literal["error", "truncate"] = "error",
        max_partition: int | Sequence[int | None] | None = None,
    ) -> EncodedSample:
        """Render, tokenize and expand one conversation.

        The k-th ``<image>`` gets the k-th image. ``overflow="truncate"`` cuts a too-long
        training sample at the end, before any image block the cut would split (dropping that
        image and those after it); it still fails if nothing learnable is left.
        ``max_partition`` (tiled layout only): the most tiles for every image, or one value per
        image (None: the processor's own), in place of ``tiling.max_partition``.
        """
        messages = ChatFormat.coerce(messages)
        markers = count_markers(messages)
        if markers != len(images):
            raise ChatFormatError(
                f"the conversation has {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s) "
                "were given; they must match one to one"
            )
        partitions = self._partitions(max_partition, len(images))
        segments = self.chat_format.segments(messages, add_generation_prompt=add_generation_prompt)
        ids, labels = tokenize_segments(self.tokenizer, segments)
        tiled = (
            [self._tile(image, n) for image, n in zip(images, partitions, strict=True)]
            if self.tiler is not None
            else None
        )
        blocks = (
            [image_block(t.grid, self.tokens_per_tile) for t in tiled]
            if tiled is not None
            else [[IMAGE_TOKEN_ID] * self.num_image_tokens] * len(images)
        )
        ids, labels = self._expand(ids, labels, blocks)
        kept = len(images)
        if len(ids) > self.max_length:
            if overflow == "error" or add_generation_prompt:
                raise SequenceTooLongError(
                    f"the sample is {len(ids)} tokens ({len(images)} image(s): "
                    f"{self._describe_blocks(tiled)}) but the limit is {self.max_length}"
                )
            ids, labels, kept = self._truncate(ids, labels)
            if all(label == IGNORE_INDEX for label in labels):
                raise SequenceTooLongError(
                    f"the sample is {len(ids)} tokens over the limit of {self.max_length} and no "
                    "assistant reply is left after truncation"
                )
        if tiled is None:
            return EncodedSample(input_ids=ids, labels=labels, pixel_values=self.image_processor(list(images[:kept])))
        size = self.image_processor.image_size
        pixel_values = torch.cat([t.pixel_values for t in tiled[:kept]]) if kept else torch.zeros(0, 3, size, size)
        return EncodedSample(ids, labels, pixel_values, grids=[t.grid for t in tiled[:kept]])

    def _partitions(self, max_partition: int | Sequence[int | None] | None, count: int) -> list[int | None]:
        """``encode``'s ``max_partition`` as one value (or None) per image, checked."""
        if max_partition is None:
            return [None] * count
        values = [max_partition] * count if isinstance(max_partition, int) else list(max_partition)
        if len(values) != count:
            raise ConfigError(f"max_partition has {len(values)} value(s) for {count} image(s)")
        if self.tiling is None and any(v is not None for v in values):
            raise ConfigError(
                "max_partition applies to the tiled image layout only; this model uses the v1 layout "
                "(one square per image)"
            )
        for value in values:
            if value is not None:
                check_tiling(value, self.tiling.covering_threshold, self.tiling.tile_resize)
        return values

    def _tile(self, image: ImageInput, max_partition: int | None) -> TiledImage:
        if max_partition is None or max_partition == self.tiling.max_partition:
            return self.tiler(image)
        image = load_image(image)
        grid = choose_grid(*image.size, self.tiler.side, max_partition, self.tiling.covering_threshold)
        return self.tiler(image, grid)

    def _describe_blocks(self, tiled) -> str:
        if tiled is None:
            return f"{self.num_image_tokens} positions each"
        return ", ".join(
            f"{r}x{c} tiles = {block_length((r, c), self.tokens_per_tile)} positions"
            for r, c in (t.grid for t in tiled)
        )

    def image_positions(self, grid: Grid | None = None) -> int:
        """How many positions one image takes: ``num_image_tokens`` in the v1 layout, the block of
        ``grid`` in the tiled layout."""
        if self.tiling is None:
            return self.num_image_tokens
        if grid is None:
            raise ValueError("the tiled layout's image blocks depend on the grid; pass one")
        return block_length(grid, self.tokens_per_tile)

    @staticmethod
    def _expand(ids: list[int], labels: list[int], blocks: Sequence[list[int]]) -> tuple[list[int], list[int]]:
        out_ids: list[int] = []
        out_labels: list[int] = []
        images = iter(blocks)
        for token, label in zip(ids, labels, strict=True):
            if token == IMAGE_PLACEHOLDER_ID:
                block = next(images)
                out_ids += block
                out_labels += [IGNORE_INDEX] * len(block)
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def _truncate(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], int]:
        if self.tiling is not None:
            return self._truncate_tiled(ids, labels)
        cut = self.max_length
        if ids[cut - 1] == IMAGE_TOKEN_ID and ids[cut] == IMAGE_TOKEN_ID:
            # Inside a run of image positions (several images may sit back to back): step back
            # to the start of the block being cut.
            start = cut
            while start > 0 and ids[start - 1] == IMAGE_TOKEN_ID:
                start -= 1
            cut -= (cut - start) % self.num_image_tokens
        ids, labels = ids[:cut], labels[:cut]
        kept = sum(1 for token in ids if token == IMAGE_TOKEN_ID) // self.num_image_tokens
        return ids, labels, kept

    def _truncate_tiled(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int], int]:
        """Cut at ``max_length``, or before the image block the cut would split (a block runs from
        its begin indicator to its end indicator)."""
        cut = self.max_length
        for index in range(cut - 1, -1, -1):
            if ids[index] == END_INDICATOR:
                break  # every block before the cut is whole
            if ids[index] == BEGIN_INDICATOR:
                cut = index  # the cut falls inside this block: drop it
                break
        ids, labels = ids[:cut], labels[:cut]
        return ids, labels, ids.count(BEGIN_INDICATOR)

    # -- batches ----------------------------------------------------------------------------------
    def collate(
        self, samples: Sequence[EncodedSample], *, padding_side: Literal["left", "right"] = "right"
    ) -> dict[str, torch.Tensor]:
        """Pad to the longest sample. Right padding for training, left padding for generation."""
        longest = max(len(s.input_ids) for s in samples)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(samples), longest), pad, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            input_ids[row, span] = torch.tensor(sample.input_ids)
            labels[row, span] = torch.tensor(sample.labels)
            attention_mask[row, span] = 1
        size = self.image_processor.image_size
        pixel_values = (
            torch.cat([s.pixel_values for s in samples])
            if any(s.num_images for s in samples)
            else torch.zeros(0, 3, size, size)
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": pixel_values,
        }

    def __call__(
        self,
        conversations: Sequence[Sequence[Message | dict]],
        images: Sequence[Sequence[ImageInput]] | None = None,
        *,
        add_generation_prompt: bool = True,
        padding_side: Literal["left", "right"] = "left",
    ) -> dict[str, torch.Tensor]:
        """Encode and collate a batch of conversations (by default, prompts for generation): a list of
        conversations, each a list of messages, and per conversation a list of its images."""
        if isinstance(conversations, (str, dict)) or (conversations and isinstance(conversations[0], (dict, Message))):
            raise UsageError(
                "conversations is a batch: a list of conversations, each a list of messages; for one "
                "conversation write processor([messages], [images])"
            )
        images = images if images is not None else [()] * len(conversations)
        if len(images) != len(conversations):
            raise UsageError(
                f"{len(conversations)} conversations but {len(images)} image lists (one list per conversation)"
            )
        samples = [
            self.encode(conv, imgs, add_generation_prompt=add_generation_prompt)
            for conv, imgs in zip(conversations, images, strict=True)
        ]
        return self.collate(samples, padding_side=padding_side)

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- persistence ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        config = {
            "processor_class": "OvisProcessor",
            "chat_format": self.chat_format.name,
            "num_image_tokens": self.num_image_tokens,
            "max_length": self.max_length,
            "image": self.image_processor.spec.model_dump(mode="json"),
            "image_marker_separator": self.image_marker_separator,
        }
        if self.tiling is not None:
            config["tiling"] = self.tiling.to_dict()
            config["tokens_per_tile"] = self.tokens_per_tile
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OvisProcessor:
        directory = Path(directory)
        if is_original_checkpoint(directory):  # an original Ovis v1 checkpoint: CLIPImageProcessor config
            return load_original_processor(directory)
        if is_hf_ovis2_checkpoint(directory):  # transformers' Ovis2 layout: Ovis2Processor's files
            return load_hf_ovis2_processor(directory)
        if is_release_checkpoint(directory):  # the AIDC-AI Ovis2 release: CLIPImageProcessor config, tiling by call
            return load_release_processor(directory)
        path = directory / PREPROCESSOR_FILE
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InputFileError(f"{path}: missing; is {directory} an ovis model directory?") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
        tokenizer = _read_tokenizer(directory)
        try:
            return cls(
                tokenizer=tokenizer,
                image_processor=ImageProcessor(ImagePreprocessSpec.model_validate(config["image"])),
                chat_format=_chat_format(config["chat_format"], directory),
                num_image_tokens=int(config["num_image_tokens"]),
                max_length=int(config["max_length"]),
                image_marker_separator=str(config.get("image_marker_separator", "\n")),
                tiling=TilingOptions.from_dict(config["tiling"]) if config.get("tiling") else None,
                tokens_per_tile=config.get("tokens_per_tile"),
            )
        except UnknownNameError:
            raise  # (a chat format no installed plugin provides: says so itself)
        except KeyError as exc:
            raise ConfigError(f"{path}: no {exc.args[0]!r} field; is {directory} an ovis model directory?") from exc
        except (TypeError, ValueError, ValidationError) as exc:
            if isinstance(exc, OvisError):
                raise ConfigError(f"{path}: {exc}") from exc
            reason = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ConfigError(f"{path}: {reason}") from exc


def _chat_format(name: str, directory: Path) -> ChatFormat:
    """The registered chat format ``name``; where none is, the error names the distribution the saved
    model's config.json records for its LLM (and so its chat format), read only then."""
    try:
        return get_host().chat_format(name)
    except UnknownNameError:
        try:
            spec = json.loads((directory / "config.json").read_text()).get("llm_spec") or {}
            plugin = spec.get("plugin") if isinstance(spec, dict) else None
        except (OSError, ValueError, AttributeError):
            plugin = None
        return get_host().chat_format(name, plugin=plugin)


def _read_tokenizer(directory: Path):
    """``AutoTokenizer.from_pretrained(directory)``, a missing or damaged tokenizer file named (the
    library's own words point elsewhere: a missing tokenizer.json reads as a missing sentencepiece)."""
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        file = directory / "tokenizer.json"
        if not file.is_file():
            raise InputFileError(
                f"{directory}: no tokenizer.json (the model's tokenizer, which ovis saves beside the weights)"
            ) from exc
        try:
            json.loads(file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as bad:
            raise ConfigError(f"{file}: not valid JSON ({bad}); the file is damaged or cut short") from exc
        raise ConfigError(f"{file}: the tokenizer does not load: {type(exc).__name__}: {exc}") from exc


#: pad tokens to fall back on when a v1 tokenizer has none (Llama 3's v1 training pad, Qwen's)
_PAD_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>")


def _settle_pad_token(tokenizer, notes: list[str]) -> None:
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    choice = next((t for t in _PAD_CANDIDATES if t in vocab), None) or tokenizer.eos_token
    if choice is None:
        raise ConversionError("the tokenizer has neither a pad token nor an eos token to pad with")
    tokenizer.pad_token = choice
    notes.append(f"tokenizer has no pad token: using {choice!r} (id {tokenizer.pad_token_id})")


def load_original_processor(directory: str | Path, notes: list[str] | None = None) -> OvisProcessor:
    """The ``OvisProcessor`` of a v1 directory: its tokenizer, its CLIPImageProcessor settings as
    ``pad`` preprocessing, and the chat format mapped from ``conversation_formatter_class``."""
    directory = Path(directory)
    notes = [] if notes is None else notes
    config = read_config(directory)
    if not is_original_config(config):
        raise NotAnOvisCheckpointError(f"{directory}: not an original Ovis v1 checkpoint")
    translation = translate_config(config, read_preprocessor(directory))
    tokenizer = _checkpoint_tokenizer(directory)
    _settle_pad_token(tokenizer, notes)
    spec = translation.vision_spec
    return OvisProcessor(
        tokenizer=tokenizer,
        image_processor=ImageProcessor(spec.preprocess),
        chat_format=get_host().chat_format(translation.chat_format),
        num_image_tokens=spec.num_patches + (2 if translation.config["use_indicators"] else 0),
        max_length=translation.config["multimodal_max_length"],
        image_marker_separator=" ",  # the v1 runner's "<image> " + text
    )


def _checkpoint_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a converted checkpoint directory, or an error saying why there is none."""
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
    if not any((directory / name).is_file() for name in tokenizer_files):
        raise ConversionError(
            f"{directory}: no tokenizer (none of {', '.join(tokenizer_files)}); "
            "copy the tokenizer files of the checkpoint's LLM into it"
        )
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConversionError(f"{directory}: could not load the tokenizer ({first[:300]})") from exc


def load_hf_ovis2_processor(directory: str | Path, notes: list[str] | None = None) -> OvisProcessor:
    """The ``OvisProcessor`` of a transformers Ovis2 (hf-ovis2) directory: its tokenizer, its
    Ovis2ImageProcessor settings as the tiled layout, the chat format its config.json names (or the
    one assumed for its LLM; see :mod:`ovis.model.ovis2_format`)."""
    directory = Path(directory)
    notes = [] if notes is None else notes
    translation = translate_hf_config(*read_hf_configs(directory))
    tokenizer = _checkpoint_tokenizer(directory)
    _settle_pad_token(tokenizer, notes)
    config = translation.config
    return OvisProcessor(
        tokenizer=tokenizer,
        image_processor=ImageProcessor(translation.vision_spec.preprocess),
        chat_format=get_host().chat_format(translation.chat_format),
        num_image_tokens=translation.tokens_per_tile + 2,
        max_length=config["multimodal_max_length"],
        tiling=TilingOptions(config["max_partition"], config["covering_threshold"], config["tile_resize"]),
        tokens_per_tile=translation.tokens_per_tile,
    )


def load_release_processor(directory: str | Path, notes: list[str] | None = None) -> OvisProcessor:
    """The ``OvisProcessor`` of an AIDC-AI Ovis2 release directory: its tokenizer, its CLIPImageProcessor
    settings as the ``pad`` tiles the release cuts, the chat format of ``conversation_formatter_class``."""
    directory = Path(directory)
    notes = [] if notes is None else notes
    translation = translate_release_config(read_config(directory), read_preprocessor(directory))
    tokenizer = _checkpoint_tokenizer(directory)
    _settle_pad_token(tokenizer, notes)
    config = translation.config
    spec = translation.vision_spec
    side = spec.image_size // spec.patch_size
    tokens = (-(-side // config["hidden_stride"])) ** 2
    return OvisProcessor(
        tokenizer=tokenizer,
        image_processor=ImageProcessor(spec.preprocess),
        chat_format=get_host().chat_format(translation.chat_format),
        num_image_tokens=tokens + 2,
        max_length=config["multimodal_max_length"],
        tiling=TilingOptions(config["max_partition"], config["covering_threshold"], config["tile_resize"]),
        tokens_per_tile=tokens,
    )

"""The composer: backbone names -> specs -> built backbones -> an Ovis model (-> a directory).

``compose(vit="clip", llm="llama3-8b")`` in Python and ``ovis compose --vit clip --llm llama3-8b``
on the command line are the same call.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ovis.errors import ConfigError, OvisError, UsageError
from ovis.fsutil import atomic_directory, check_output_dir
from ovis.interfaces import LLMBackbone, VisionBackbone
from ovis.model import OvisConfig, OvisForCausalLM
from ovis.model.directory_check import check_weights_source, read_model_config
from ovis.plugin_host import PluginHost, get_host
from ovis.processing import OvisProcessor
from ovis.tiling import TilingOptions

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightsUnavailableError(OvisError, RuntimeError):
    """Real weights were asked for but could not be loaded (offline, wrong path...)."""


def _pretrained(flag: bool | None, spec, override: str | None, option: str) -> bool:
    """Whether to load real weights: yes where the user named some (``override``); else as asked;
    by default where the preset names weights and is not a tiny random-init preset."""
    if override:
        if flag is False:
            raise UsageError(f"{option} {override!r} names weights to load, but random weights were asked for "
                             "(--random-init / pretrained=False): give one or the other")
        return True
    return bool(spec.weights) and not spec.tiny if flag is None else flag


def _load(what: str, name: str, weights: str | None, build):
    try:
        return build()
    except (OSError, ValueError, RuntimeError) as exc:
        source = f" from {weights!r}" if weights else " (its spec names no weights)"
        raise WeightsUnavailableError(
            f"could not load the {what} weights of {name!r}{source}: {exc}\n"
            "Without network access, point the preset at a local directory "
            f"(--{'vit' if what == 'vision' else 'llm'}-weights DIR) or compose with random weights "
            "(--random-init)."
        ) from exc


def compose(
    vit: str,
    llm: str,
    *,
    out: str | Path | None = None,
    visual_vocab_size: int = 131072,
    tokenize_function: str = "softmax",
    use_indicators: bool = True,
    adapter: str = "structural",
    multimodal_max_length: int | None = None,
    dtype: str = "float32",
    image_layout: str | None = None,
    max_partition: int | None = None,
    covering_threshold: float | None = None,
    tile_resize: str | None = None,
    hidden_stride: int = 1,
    chat_format: str | None = None,
    pretrained: bool | None = None,
    vit_weights: str | None = None,
    llm_weights: str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    host: PluginHost | None = None,
) -> tuple[OvisForCausalLM, OvisProcessor | None]:
    """Build an Ovis model from a registered vision encoder and LLM.

    Args:
        vit, llm: registered names or aliases (see ``ovis list vit`` / ``ovis list llm``).
        out: if given, save the model and its processor there (written to a temporary
            directory first, then renamed, so an interrupted compose leaves nothing behind).
        pretrained: load the backbones' real weights (default: when the preset names weights
            and is not a tiny random-init preset).
        vit_weights, llm_weights: override where the weights come from (e.g. a local directory).
        dry_run: build on the meta device (no memory, no downloads, no tokenizer) to inspect
            parts and shapes; returns ``(model, None)``.
        image_layout: ``v1`` (one padded square per image) or ``tiled`` (Ovis 1.6 / Ovis2: tiles
            plus a global view, five indicators; see docs/high-resolution.md). Default: ``tiled``
            when any tiling option is given, else ``v1``.
        max_partition, covering_threshold, tile_resize: the tiled layout's options (defaults 9, 0.9,
            ``pad``: the Ovis2 release's).
        hidden_stride: merge each ``s x s`` block of patches into one visual token before the head.
        chat_format: a registered chat format (``ovis list chat``) instead of the LLM preset's,
            e.g. ``chatml`` for a Qwen2.5 LLM as the Ovis2 releases prompt it (their
            ``QwenConversationFormatter``); its end-of-turn token must be one token of the LLM's tokenizer.

    Returns ``(model, processor)``.
    """
    host = host or get_host()
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    layout = _layout(image_layout, max_partition=max_partition, covering_threshold=covering_threshold,
                     tile_resize=tile_resize)
    vision_entry, llm_entry = host.vision(vit), host.llm(llm)
    vision_spec, llm_spec = vision_entry.spec, llm_entry.spec
    load_vit = _pretrained(pretrained, vision_spec, vit_weights, "--vit-weights") and not dry_run
    load_llm = _pretrained(pretrained, llm_spec, llm_weights, "--llm-weights") and not dry_run
    for option, source in (("--vit-weights", vit_weights), ("--llm-weights", llm_weights)):
        if source:
            check_weights_source(source, option)
    if vit_weights:
        vision_spec = vision_spec.model_copy(update={"weights": vit_weights})
    if llm_weights:
        llm_spec = llm_spec.model_copy(update={"weights": llm_weights, "tokenizer": llm_weights})
    llm_provider: LLMBackbone = llm_entry.factory(llm_spec)
    chosen_format = host.chat_format(chat_format or llm_spec.chat_format)
    # A preset's own formatter class describes its own chat format, not one chosen instead of it.
    formatter_class = (chosen_format.v1_formatter_class if chat_format
                       else llm_spec.conversation_formatter_class or chosen_format.v1_formatter_class)
    # A tiled image takes up to ~2600 positions at 9 tiles (docs/high-resolution.md): a longer default.
    default_length = 8192 if layout["image_layout"] == "tiled" else 2048
    # (0 or less is refused by OvisConfig, not replaced by the default)
    max_length = multimodal_max_length
    if max_length is None:
        max_length = min(default_length, llm_spec.context_length)

    with torch.device("meta") if dry_run else contextlib.nullcontext():
        backbone: VisionBackbone = _load(
            "vision", vision_spec.name, vision_spec.weights,
            lambda: vision_entry.factory.from_spec(vision_spec, pretrained=load_vit),
        )
        llm_model = _load("LLM", llm_spec.name, llm_spec.weights, lambda: llm_provider.build_model(pretrained=load_llm))
        config = OvisConfig(
            llm_config=llm_model.config.to_dict(),
            vision_spec=vision_spec.model_dump(mode="json"),
            llm_spec=llm_spec.model_dump(mode="json"),
            visual_vocab_size=visual_vocab_size,
            tokenize_function=tokenize_function,
            use_indicators=use_indicators,
            adapter=adapter,
            multimodal_max_length=max_length,
            chat_format=chosen_format.name,
            conversation_formatter_class=formatter_class,
            visual_embedding_scale=1.0 if dry_run else llm_provider.embedding_scale(llm_model),
            hidden_stride=hidden_stride,
            **layout,
        )
        model = OvisForCausalLM(config, llm=llm_model, backbone=backbone)
    if dry_run:
        return model, None
    model = model.to(DTYPES[dtype])
    processor = _processor(model, llm_provider, backbone, chosen_format, max_length)
    if out is not None:
        save(model, processor, out, overwrite=overwrite)
    return model, processor


def _layout(image_layout: str | None, **tiling: object) -> dict[str, object]:
    """The ``OvisConfig`` layout fields: tiling options given without a layout mean ``tiled``; given
    with ``v1`` they are a mistake."""
    given = {name: value for name, value in tiling.items() if value is not None}
    layout = image_layout or ("tiled" if given else "v1")
    if layout == "v1" and given:
        options = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise UsageError(f"{options}: tiling options apply to image_layout 'tiled', not 'v1'")
    return {"image_layout": layout, **given}


def tiling_options(config: OvisConfig) -> TilingOptions | None:
    """The processor's tiling options for a model of this config (None: the v1 layout)."""
    if getattr(config, "image_layout", "v1") != "tiled":
        return None
    return TilingOptions(config.max_partition, config.covering_threshold, config.tile_resize)


def _processor(model: OvisForCausalLM, llm_provider: LLMBackbone, backbone: VisionBackbone, chat_format,
               max_length: int) -> OvisProcessor:
    """The processor of a freshly composed model; the LLM's generation config learns its pad and eos."""
    tokenizer = llm_provider.build_tokenizer()
    turn_end = chat_format.end_of_turn
    if turn_end is not None and not chat_format.stop_token_ids(tokenizer):
        raise ConfigError(f"chat format {chat_format.name!r} ends turns with {turn_end!r}, which is not one token "
                          "of this LLM's tokenizer; choose a chat format of the LLM's family (ovis list chat)")
    tiling = tiling_options(model.config)
    processor = OvisProcessor(
        tokenizer=tokenizer,
        image_processor=backbone.image_processor(),
        chat_format=chat_format,
        num_image_tokens=model.num_image_tokens,
        max_length=max_length,
        tiling=tiling,
        tokens_per_tile=model.tokens_per_tile if tiling is not None else None,
    )
    generation = model.llm.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    return processor


def save(model: OvisForCausalLM, processor: OvisProcessor, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write model + processor to ``out`` atomically (temporary sibling directory, then rename)."""
    out = Path(out).expanduser().resolve()
    check_output_dir(out, overwrite=overwrite)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
    return out


def load(directory: str | Path, *, dtype: str | None = None, device: str | None = None):
    """``(model, processor)`` from a directory written by :func:`compose` or by training."""
    kwargs = {"dtype": DTYPES[dtype]} if dtype else {}
    read_model_config(Path(directory))  # a missing directory or a bad config.json: named, before any setup
    model = OvisForCausalLM.from_pretrained(str(directory), **kwargs)
    if device:
        model = model.to(device)
    return model, OvisProcessor.from_pretrained(directory)

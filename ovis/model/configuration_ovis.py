"""``OvisConfig``: everything needed to rebuild an Ovis model offline from its directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from ovis.errors import ConfigError
from ovis.model.v1_format import translate_config
from ovis.model.visual_tokenizer import TOKENIZE_FUNCTIONS

ADAPTERS = ("structural", "mlp")
#: ``v1``: one padded square per image, begin/end indicators; ``tiled``: Ovis 1.6 / Ovis2 tiles + global
#: view with five indicators (``ovis.tiling``)
IMAGE_LAYOUTS = ("v1", "tiled")
#: indicator rows at the end of the visual embedding table, per layout
LAYOUT_INDICATORS = {"v1": 2, "tiled": 5}
#: how the tiled layout fits each view to the encoder's square (see ``ovis.tiling``)
TILE_RESIZES = ("pad", "canvas")

logger = logging.getLogger("ovis.model")
VISUAL_PATHS = ("fused", "naive")


class OvisConfig(PretrainedConfig):
    """Config of an :class:`OvisForCausalLM`.

    Args:
        llm_config: the LLM's Hugging Face config (dict with ``model_type``, or a config object).
        vision_spec: the vision backbone's ``VisionSpec`` as a dict; its ``builder`` key names the
            plugin class that rebuilds the encoder, its ``architecture`` the encoder's shape.
        llm_spec: the LLM preset as a dict (name, chat format...): kept for provenance.
        visual_vocab_size: size V of the visual vocabulary (131072 in the paper). With indicators
            the head produces V - 2 logits and the last two ids mark image begin/end.
        tokenize_function: ``softmax`` (v1), ``gumbel_argmax`` or ``st_argmax``.
        tau: gumbel temperature (annealed by the trainer).
        vte_init_std: std of the VTE's normal initialisation (Ovis v1 used 1.0).
        use_indicators: wrap each image in begin/end indicator embeddings.
        adapter: ``structural`` (visual tokenizer + visual embedding table, the paper) or ``mlp``
            (a LLaVA-style projector, for the ablation).
        multimodal_max_length: longest sequence, image blocks included.
        chat_format: name of the registered chat format the LLM was trained with.
        visual_path: how the structural adapter with the ``softmax`` tokenize function computes
            head -> LayerNorm -> softmax -> VTE: ``fused`` (chunked, recomputed in the backward
            pass: a fraction of the memory, same result; see ``ovis.model.visual_path``) or
            ``naive`` (every intermediate materialised; the reference).
        visual_chunk_rows: patch rows per chunk of the fused path (``None``: as many as keep a
            ``[rows, V]`` float32 tensor within 512 MiB: 1024 rows at V = 131072).
        visual_topk: inference only, approximate: embed each patch from its ``k`` most probable
            visual words (renormalised). ``None`` (default) is the exact dense path. Used only in
            eval mode with gradients disabled (as in ``generate``); training ignores it.
        visual_embedding_scale: every visual row (indicators included) is multiplied by this
            before the LLM, as the LLM multiplies its token embeddings (Gemma: sqrt(hidden_size));
            the composer takes it from the LLM plugin (``LLMBackbone.embedding_scale``).
        image_layout: ``v1`` (one padded square per image) or ``tiled`` (Ovis 1.6 / Ovis2: a grid of
            tiles plus a global view, five indicators in the VTE's last rows; see ``ovis.tiling``).
        hidden_stride: each ``s x s`` block of patch features (the grid padded to a multiple of ``s``)
            is concatenated before the head, so a view costs ``ceil(side / s)^2`` visual tokens
            (``side`` patches per side) and the head takes ``s^2`` x the encoder width. 1: no merging.
        max_partition: tiled layout: at most this many tiles per image (9 in Ovis2).
        covering_threshold: tiled layout: the coverage a grid must beat to be chosen for fewer tiles.
        tile_resize: tiled layout: ``pad`` (the releases: each crop resized, aspect kept, and padded)
            or ``canvas`` (transformers' Ovis2ImageProcessor: the image resized onto the grid's canvas).
    """

    model_type = "ovis"
    sub_configs: ClassVar[dict[str, type]] = {"llm_config": AutoConfig}

    @classmethod
    def read(cls, directory: str | Path) -> OvisConfig:
        """The config of a local model directory; a field no model can be built from is a
        ``ConfigError`` naming the file."""
        where = Path(directory) / "config.json"
        try:
            return cls.from_pretrained(directory)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except (TypeError, ValueError, KeyError, StrictDataclassError) as exc:
            raise ConfigError(f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}") from exc

    def __init__(
        self,
        llm_config: dict[str, Any] | PretrainedConfig | None = None,
        vision_spec: dict[str, Any] | None = None,
        llm_spec: dict[str, Any] | None = None,
        visual_vocab_size: int = 131072,
        tokenize_function: str = "softmax",
        tau: float = 1.0,
        vte_init_std: float = 1.0,
        use_indicators: bool = True,
        adapter: str = "structural",
        multimodal_max_length: int = 2048,
        chat_format: str | None = None,
        conversation_formatter_class: str | None = None,
        visual_path: str = "fused",
        visual_chunk_rows: int | None = None,
        visual_topk: int | None = None,
        visual_embedding_scale: float = 1.0,
        image_layout: str = "v1",
        hidden_stride: int = 1,
        max_partition: int = 9,
        covering_threshold: float = 0.9,
        tile_resize: str = "pad",
        **kwargs: Any,
    ) -> None:
        visual_tokenizer_config = kwargs.pop("visual_tokenizer_config", None)
        if visual_tokenizer_config is not None and not vision_spec:
            # An original Ovis v1 config.json: its fields become ours (ovis.model.v1_format).
            v1 = _from_v1_config(llm_config, visual_tokenizer_config, multimodal_max_length,
                                 conversation_formatter_class, kwargs)
            llm_config, vision_spec, chat_format = v1["llm_config"], v1["vision_spec"], v1["chat_format"]
            visual_vocab_size, tokenize_function, tau = v1["visual_vocab_size"], v1["tokenize_function"], v1["tau"]
            use_indicators, adapter = v1["use_indicators"], v1["adapter"]
        elif visual_tokenizer_config is not None:
            kwargs["visual_tokenizer_config"] = visual_tokenizer_config
        if isinstance(llm_config, dict):
            llm_config = dict(llm_config)
            model_type = llm_config.pop("model_type", None)
            if not model_type:
                raise ConfigError("llm_config has no model_type (e.g. 'qwen2', 'llama')")
            try:
                llm_config = AutoConfig.for_model(model_type, **llm_config)
            except (TypeError, ValueError, KeyError, StrictDataclassError) as exc:
                raise ConfigError(f"llm_config: {' '.join(str(exc).split())}") from exc
        if llm_config is None and vision_spec is not None:  # (a bare OvisConfig() is transformers' default)
            raise ConfigError("llm_config is missing: the LLM's configuration (its model_type and fields)")
        if isinstance(multimodal_max_length, bool) or not isinstance(multimodal_max_length, int) or (
            multimodal_max_length < 1
        ):
            raise ConfigError(f"multimodal_max_length must be a whole number >= 1, got {multimodal_max_length!r}")
        _check(tokenize_function=tokenize_function, adapter=adapter, visual_vocab_size=visual_vocab_size,
               use_indicators=use_indicators, visual_path=visual_path, visual_chunk_rows=visual_chunk_rows,
               visual_topk=visual_topk, visual_embedding_scale=visual_embedding_scale)
        _check_layout(image_layout=image_layout, hidden_stride=hidden_stride, use_indicators=use_indicators,
                      visual_vocab_size=visual_vocab_size, max_partition=max_partition,
                      covering_threshold=covering_threshold, tile_resize=tile_resize)
        self.llm_config = llm_config
        self.vision_spec = vision_spec
        self.llm_spec = llm_spec
        self.visual_vocab_size = visual_vocab_size
        self.tokenize_function = tokenize_function
        self.tau = tau
        self.vte_init_std = vte_init_std
        self.use_indicators = use_indicators
        self.adapter = adapter
        self.multimodal_max_length = multimodal_max_length
        self.chat_format = chat_format
        self.conversation_formatter_class = conversation_formatter_class
        self.visual_path = visual_path
        self.visual_chunk_rows = visual_chunk_rows
        self.visual_topk = visual_topk
        self.visual_embedding_scale = float(visual_embedding_scale)
        self.image_layout = image_layout
        self.hidden_stride = hidden_stride
        self.max_partition = max_partition
        self.covering_threshold = covering_threshold
        self.tile_resize = tile_resize
        kwargs.setdefault("architectures", ["OvisForCausalLM"])
        super().__init__(**kwargs)
        if llm_config is not None:
            self.hidden_size = llm_config.hidden_size

    @property
    def num_indicators(self) -> int:
        """Indicator rows at the end of the visual embedding table (0 without indicators)."""
        if not self.use_indicators:
            return 0
        return LAYOUT_INDICATORS[getattr(self, "image_layout", "v1")]

    @property
    def tokens_per_tile(self) -> int:
        """Visual tokens one view (a v1 image, a tile) yields after merging (no indicators)."""
        if not self.vision_spec:
            raise ConfigError("OvisConfig has no vision_spec")
        arch = self.vision_spec
        return merged_tokens(arch["image_size"] // arch["patch_size"], getattr(self, "hidden_stride", 1))

    # Visual features: v1 image blocks are this many rows each.
    @property
    def num_image_tokens(self) -> int:
        return self.tokens_per_tile + (2 if self.use_indicators else 0)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.llm_config if self.llm_config is not None else self


def merged_tokens(side: int, hidden_stride: int) -> int:
    """Tokens of a ``side x side`` patch grid once each ``s x s`` block (grid padded) is merged."""
    return (-(-side // hidden_stride)) ** 2


#: The most tiles an image may be cut into: the releases use 9 (up to 12 in evaluations); 64 tiles of
#: a 448 px encoder are already ~16K visual tokens per image.
MAX_PARTITION_LIMIT = 64


def check_tiling(max_partition: Any, covering_threshold: Any, tile_resize: Any) -> None:
    """Refuse tiling values no layout can be built from, naming the field."""
    if isinstance(max_partition, bool) or not isinstance(max_partition, int) or max_partition < 1:
        raise ConfigError(f"max_partition must be a whole number >= 1, got {max_partition!r}")
    if max_partition > MAX_PARTITION_LIMIT:
        raise ConfigError(
            f"max_partition {max_partition} is over {MAX_PARTITION_LIMIT} tiles per image (the releases use 9)"
        )
    if isinstance(covering_threshold, bool) or not isinstance(covering_threshold, (int, float)) or not (
        0 <= covering_threshold <= 1
    ):
        raise ConfigError(f"covering_threshold must be a number from 0 to 1, got {covering_threshold!r}")
    if tile_resize not in TILE_RESIZES:
        raise ConfigError(f"tile_resize must be one of {', '.join(TILE_RESIZES)}, got {tile_resize!r}")


def _check_layout(*, image_layout: str, hidden_stride: Any, use_indicators: bool, visual_vocab_size: int,
                  max_partition: Any, covering_threshold: Any, tile_resize: Any) -> None:
    """Refuse layout values no model can be built from, naming the field."""
    if image_layout not in IMAGE_LAYOUTS:
        raise ConfigError(f"image_layout must be one of {', '.join(IMAGE_LAYOUTS)}, got {image_layout!r}")
    if isinstance(hidden_stride, bool) or not isinstance(hidden_stride, int) or hidden_stride < 1:
        raise ConfigError(f"hidden_stride must be a whole number >= 1, got {hidden_stride!r}")
    check_tiling(max_partition, covering_threshold, tile_resize)
    if image_layout == "tiled":
        if not use_indicators:
            raise ConfigError("image_layout 'tiled' needs its five indicators: use_indicators must be true")
        if visual_vocab_size < 6:
            raise ConfigError(f"visual_vocab_size {visual_vocab_size} is too small for the tiled layout (> 5)")


def _from_v1_config(llm_config: Any, visual_tokenizer_config: Any, multimodal_max_length: int,
                    conversation_formatter_class: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``OvisConfig`` arguments a v1 config's fields translate to; ``kwargs`` lose v1's
    ``auto_map`` (remote code ovis does not need) and its ``Ovis`` architecture name."""
    translated = translate_config({
        "llm_config": llm_config,
        "visual_tokenizer_config": visual_tokenizer_config,
        "multimodal_max_length": multimodal_max_length,
        "conversation_formatter_class": conversation_formatter_class,
        "hidden_size": kwargs.get("hidden_size"),
    })
    logger.info("OvisConfig: translated an Ovis v1 config:\n  %s", "\n  ".join(translated.notes))
    kwargs.pop("auto_map", None)
    if kwargs.get("architectures") == ["Ovis"]:
        kwargs["architectures"] = ["OvisForCausalLM"]
    return translated.config


def _check(*, tokenize_function: str, adapter: str, visual_vocab_size: int, use_indicators: bool, visual_path: str,
           visual_chunk_rows: int | None, visual_topk: int | None, visual_embedding_scale: float) -> None:
    """Refuse values no model can be built from, naming the field."""
    if tokenize_function not in TOKENIZE_FUNCTIONS:
        raise ConfigError(
            f"tokenize_function must be one of {', '.join(TOKENIZE_FUNCTIONS)}, got {tokenize_function!r}"
        )
    if adapter not in ADAPTERS:
        raise ConfigError(f"adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
    if isinstance(visual_vocab_size, bool) or not isinstance(visual_vocab_size, int):
        raise ConfigError(f"visual_vocab_size must be an integer, got {visual_vocab_size!r}")
    if visual_vocab_size < (3 if use_indicators else 1):
        raise ConfigError(f"visual_vocab_size {visual_vocab_size} is too small")
    if visual_path not in VISUAL_PATHS:
        raise ConfigError(f"visual_path must be one of {', '.join(VISUAL_PATHS)}, got {visual_path!r}")
    for name, value in (("visual_chunk_rows", visual_chunk_rows), ("visual_topk", visual_topk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    if not isinstance(visual_embedding_scale, (int, float)) or not visual_embedding_scale > 0:
        raise ConfigError(f"visual_embedding_scale must be a positive number, got {visual_embedding_scale!r}")

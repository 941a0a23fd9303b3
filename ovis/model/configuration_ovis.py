"""``OvisConfig``: everything needed to rebuild an Ovis model offline from its directory."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from transformers import AutoConfig, PretrainedConfig

from ovis.errors import ConfigError
from ovis.model.v1_format import translate_config
from ovis.model.visual_tokenizer import TOKENIZE_FUNCTIONS

ADAPTERS = ("structural", "mlp")

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
    """

    model_type = "ovis"
    sub_configs: ClassVar[dict[str, type]] = {"llm_config": AutoConfig}

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
            llm_config = AutoConfig.for_model(model_type, **llm_config) if model_type else None
        _check(tokenize_function=tokenize_function, adapter=adapter, visual_vocab_size=visual_vocab_size,
               use_indicators=use_indicators, visual_path=visual_path, visual_chunk_rows=visual_chunk_rows,
               visual_topk=visual_topk, visual_embedding_scale=visual_embedding_scale)
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
        kwargs.setdefault("architectures", ["OvisForCausalLM"])
        super().__init__(**kwargs)
        if llm_config is not None:
            self.hidden_size = llm_config.hidden_size

    # Visual features: image blocks are this many rows each.
    @property
    def num_image_tokens(self) -> int:
        if not self.vision_spec:
            raise ConfigError("OvisConfig has no vision_spec")
        arch = self.vision_spec
        patches = (arch["image_size"] // arch["patch_size"]) ** 2
        return patches + (2 if self.use_indicators else 0)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.llm_config if self.llm_config is not None else self


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
    if visual_vocab_size < (3 if use_indicators else 1):
        raise ConfigError(f"visual_vocab_size {visual_vocab_size} is too small")
    if visual_path not in VISUAL_PATHS:
        raise ConfigError(f"visual_path must be one of {', '.join(VISUAL_PATHS)}, got {visual_path!r}")
    for name, value in (("visual_chunk_rows", visual_chunk_rows), ("visual_topk", visual_topk)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    if not isinstance(visual_embedding_scale, (int, float)) or not visual_embedding_scale > 0:
        raise ConfigError(f"visual_embedding_scale must be a positive number, got {visual_embedding_scale!r}")

"""The abstract LLM provider every LLM plugin implements, and a generic Hugging Face base."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces.specs import LLMSpec


class LLMBackbone(ABC):
    """Gives the causal LM, its tokenizer (pad token settled) and facts about both."""

    def __init__(self, spec: LLMSpec) -> None:
        self.spec = spec

    @property
    def hidden_size(self) -> int:
        return self.spec.hidden_size

    @property
    def chat_format_name(self) -> str:
        return self.spec.chat_format

    @abstractmethod
    def build_config(self) -> PretrainedConfig:
        """The model config, from ``spec.architecture``; no network access."""

    @abstractmethod
    def build_model(self, *, pretrained: bool = True, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """The causal LM. ``pretrained=False``: random init from :meth:`build_config` (offline)."""

    @abstractmethod
    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer with ``pad_token`` set and the family's chat template attached."""

    def embedding_scale(self, model: PreTrainedModel) -> float:
        """The factor the LLM multiplies its token embeddings by between the table lookup and its
        first layer (Gemma: sqrt(hidden_size); most LLMs: 1). Ovis multiplies its visual embeddings
        by the same factor, so that visual and text rows reach the first layer on the same footing
        (as with transformers 4, where Gemma scaled every ``inputs_embeds`` row, the released Ovis-Gemma
        models were trained that way).

        The default reads the scale a transformers embedding module carries (``embed_scale``, as
        Gemma's scaled word embedding has); a plugin whose LLM scales elsewhere overrides this.
        """
        embeddings = model.get_input_embeddings()
        scale = getattr(embeddings, "scalar_embed_scale", None)
        if scale is None:
            scale = getattr(embeddings, "embed_scale", 1.0)
        return float(scale)

    def special_tokens(self) -> dict[str, str | None]:
        tok = self.build_tokenizer()
        return {"bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token}


class HFCausalLM(LLMBackbone):
    """An LLM that is a plain ``transformers`` causal LM; plugins override the tokenizer part.

    ``model_types`` (if set by a subclass) lists the ``model_type`` values it builds; the built
    config must also agree with the spec's own size fields, so a bad preset fails early.
    """

    model_types: tuple[str, ...] = ()

    def build_config(self) -> PretrainedConfig:
        spec = self.spec
        arch = dict(spec.architecture)
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"LLM preset {spec.name!r}: architecture.model_type is required")
        if self.model_types and model_type not in self.model_types:
            raise ValueError(
                f"LLM preset {spec.name!r}: builder {spec.builder!r} builds model_type "
                f"{' or '.join(self.model_types)}, not {model_type!r}"
            )
        config = AutoConfig.for_model(model_type, **arch)
        for field, attr in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                            ("vocab_size", "vocab_size")):
            if getattr(spec, field) != getattr(config, attr):
                raise ValueError(
                    f"LLM preset {spec.name!r}: {field}={getattr(spec, field)} but "
                    f"architecture.{attr}={getattr(config, attr)}"
                )
        return config

    def build_model(self, *, pretrained: bool = True, dtype: torch.dtype | None = None) -> PreTrainedModel:
        if pretrained:
            if not self.spec.weights:
                raise ValueError(f"LLM {self.spec.name!r} has no weights to load; use pretrained=False")
            source = self.spec.weights
            local = Path(source).expanduser()
            return AutoModelForCausalLM.from_pretrained(
                str(local) if local.is_dir() else source, dtype=dtype or "auto"
            )
        config = self.build_config()
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return model

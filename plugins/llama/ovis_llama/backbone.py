"""``Llama3LLM``: the ``llama3`` builder, a plain ``transformers`` Llama causal LM.

The model comes from ``ovis.interfaces.HFCausalLM`` (config from the preset's ``architecture``,
weights from the hub or a local folder); this class adds the Llama 3 tokenizer and checks that a
preset's architecture agrees with the sizes it declares.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_llama.tokenizer import BOS, EOT, PAD, load_tokenizer

BUILDER = "llama3"
MODEL_TYPES = ("llama",)


def check_config(spec, config: PretrainedConfig, model_types: tuple[str, ...]) -> PretrainedConfig:
    """Fail early when ``spec.architecture`` contradicts the spec's own size fields."""
    if config.model_type not in model_types:
        raise ValueError(
            f"LLM preset {spec.name!r}: builder {spec.builder!r} builds model_type "
            f"{' or '.join(model_types)}, not {config.model_type!r}"
        )
    for field, attr in (("hidden_size", "hidden_size"), ("num_layers", "num_hidden_layers"),
                        ("vocab_size", "vocab_size")):
        if getattr(spec, field) != getattr(config, attr):
            raise ValueError(
                f"LLM preset {spec.name!r}: {field}={getattr(spec, field)} but "
                f"architecture.{attr}={getattr(config, attr)}"
            )
    return config


class Llama3LLM(HFCausalLM):
    """Llama 3 (``model_type: llama``) with the real 128,256-token vocabulary."""

    def build_config(self) -> PretrainedConfig:
        return check_config(self.spec, super().build_config(), MODEL_TYPES)

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.spec.tokenizer)

    def special_tokens(self) -> dict[str, str | None]:
        if self.spec.tokenizer.startswith("offline:"):
            return {"bos": BOS, "eos": EOT, "pad": PAD}
        return super().special_tokens()

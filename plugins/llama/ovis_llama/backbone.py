"""``Llama3LLM``: the ``llama3`` builder, a plain ``transformers`` Llama causal LM.

The model comes from ``ovis.interfaces.HFCausalLM`` (config from the preset's ``architecture``,
weights from the hub or a local folder); this class adds the Llama 3 tokenizer and checks that a
preset's architecture agrees with the sizes it declares.
"""

from __future__ import annotations

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_llama.tokenizer import BOS, EOT, PAD, load_tokenizer

MODEL_TYPES = ("llama",)


class Llama3LLM(HFCausalLM):
    """Llama 3 (``model_type: llama``) with the real 128,256-token vocabulary."""

    model_types = MODEL_TYPES

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.spec.tokenizer)

    def special_tokens(self) -> dict[str, str | None]:
        if self.spec.tokenizer.startswith("offline:"):
            return {"bos": BOS, "eos": EOT, "pad": PAD}
        return super().special_tokens()

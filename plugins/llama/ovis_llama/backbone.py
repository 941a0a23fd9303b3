"""``Llama3LLM``: the ``llama3`` builder, a plain ``transformers`` Llama causal LM.

The model comes from ``ovis.interfaces.HFCausalLM`` (config from the preset's ``architecture``,
weights from the hub or a local folder); this class adds the Llama 3 tokenizer and checks that a
preset's architecture agrees with the sizes it declares.
"""

from __future__ import annotations

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_llama.tokenizer import BOS, CHAT_TEMPLATE, EOT, LLAMA32_TEMPLATE, PAD, load_tokenizer

MODEL_TYPES = ("llama",)


class Llama3LLM(HFCausalLM):
    """Llama 3 / 3.1 / 3.2 (``model_type: llama``) with the real 128,256-token vocabulary."""

    model_types = MODEL_TYPES

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        template = LLAMA32_TEMPLATE if self.spec.chat_format == "llama3.2" else CHAT_TEMPLATE
        return load_tokenizer(self.spec.tokenizer, chat_template=template)

    def special_tokens(self) -> dict[str, str | None]:
        if self.spec.tokenizer.startswith("offline:"):
            return {"bos": BOS, "eos": EOT, "pad": PAD}
        return super().special_tokens()

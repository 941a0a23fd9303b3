"""``GemmaLLM``: the ``gemma`` builder, a plain ``transformers`` Gemma 2 causal LM.

The model comes from ``ovis.interfaces.HFCausalLM``; this class adds the Gemma tokenizer. Gemma
multiplies its token embeddings by sqrt(hidden_size) inside its embedding module
(``embed_scale``), which ``LLMBackbone.embedding_scale`` reads, so a composed Ovis model scales
its visual rows by the same factor.
"""

from __future__ import annotations

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_gemma.tokenizer import load_tokenizer
from ovis_gemma.tokens import BOS, END_OF_TURN, PAD

MODEL_TYPES = ("gemma2",)


class GemmaLLM(HFCausalLM):
    """Gemma 2 (``model_type: gemma2``)."""

    model_types = MODEL_TYPES

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.spec.tokenizer)

    def special_tokens(self) -> dict[str, str | None]:
        if self.spec.tokenizer.startswith("offline:"):
            return {"bos": BOS, "eos": END_OF_TURN, "pad": PAD}
        return super().special_tokens()

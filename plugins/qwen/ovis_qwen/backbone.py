"""``QwenLLM``: the ``qwen`` builder, a plain ``transformers`` Qwen2 or Qwen3 causal LM.

HF's ``qwen2`` model type covers Qwen1.5 and Qwen2.5 (and Qwen2); ``qwen3`` is Qwen3 (q/k
RMSNorm per head, no qkv bias, an explicit head_dim). The model comes from
``ovis.interfaces.HFCausalLM``; this class adds the Qwen tokenizer and checks that a preset's
architecture agrees with the sizes it declares.
"""

from __future__ import annotations

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_qwen.tokenizer import IM_END, PAD, QWEN25_SYSTEM, QWEN_SYSTEM, load_tokenizer

MODEL_TYPES = ("qwen2", "qwen3")


class QwenLLM(HFCausalLM):
    """Qwen1.5 / Qwen2 / Qwen2.5 (``model_type: qwen2``) and Qwen3 (``qwen3``) with the real Qwen
    vocabulary."""

    model_types = MODEL_TYPES

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        fmt = self.spec.chat_format
        system = {"qwen2.5": QWEN25_SYSTEM, "qwen3": None}.get(fmt, QWEN_SYSTEM)
        return load_tokenizer(self.spec.tokenizer, default_system=system, empty_think=fmt == "qwen3")

    def special_tokens(self) -> dict[str, str | None]:
        if self.spec.tokenizer.startswith("offline:"):
            return {"bos": None, "eos": IM_END, "pad": PAD}
        return super().special_tokens()

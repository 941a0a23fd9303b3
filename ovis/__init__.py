"""ovis: build, train and serve Ovis-style multimodal LLMs.

    import ovis
    model, processor = ovis.compose(vit="clip-tiny", llm="qwen2.5-tiny", out="tiny-ovis")
    model, processor = ovis.load("tiny-ovis")

The names below are imported on first use (PEP 562), so that ``ovis --help``, ``ovis list`` and
``ovis plugins`` start without importing torch. ``import ovis.model`` (which any of these names
does) registers ``OvisConfig`` / ``OvisForCausalLM`` with transformers' Auto classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "compose": "ovis.composer",
    "load": "ovis.composer",
    "save": "ovis.composer",
    "OvisConfig": "ovis.model",
    "OvisForCausalLM": "ovis.model",
    "OvisProcessor": "ovis.processing",
    "PluginHost": "ovis.plugin_host",
    "UnknownNameError": "ovis.plugin_host",
    "get_host": "ovis.plugin_host",
    "OvisError": "ovis.errors",
}

__all__ = [
    "OvisConfig",
    "OvisError",
    "OvisForCausalLM",
    "OvisProcessor",
    "PluginHost",
    "UnknownNameError",
    "__version__",
    "compose",
    "get_host",
    "load",
    "save",
]

if TYPE_CHECKING:
    from ovis.composer import compose, load, save
    from ovis.errors import OvisError
    from ovis.model import OvisConfig, OvisForCausalLM
    from ovis.plugin_host import PluginHost, UnknownNameError, get_host
    from ovis.processing import OvisProcessor


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ovis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__

"""Inference and serving: ``OvisRunner`` (Python), server-side batching, the web UI and the
OpenAI-compatible HTTP API (``serve(ServeOptions(...))``, what ``ovis serve`` runs).

The names below are imported on first use (PEP 562), for start-up speed: ``ovis serve`` checks its
options (``ovis.serve.options``) before torch loads. Gradio, FastAPI and uvicorn are imported only
when a server is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    "ChatSession": "ovis.serve.runner",
    "Completion": "ovis.serve.generation",
    "GenerationParams": "ovis.serve.generation",
    "OvisRunner": "ovis.serve.runner",
    "RunnerArguments": "ovis.serve.runner",
    "ServeOptions": "ovis.serve.options",
    "serve": "ovis.serve.server",
}
__all__ = ["ChatSession", "Completion", "GenerationParams", "OvisRunner", "RunnerArguments", "ServeOptions", "serve"]

if TYPE_CHECKING:
    from ovis.serve.generation import Completion, GenerationParams
    from ovis.serve.options import ServeOptions
    from ovis.serve.runner import ChatSession, OvisRunner, RunnerArguments
    from ovis.serve.server import serve


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ovis.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

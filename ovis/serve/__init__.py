"""Inference and serving: ``OvisRunner`` (Python), server-side batching, the web UI and the
OpenAI-compatible HTTP API (``serve(ServeOptions(...))``, what ``ovis serve`` runs).

Importing this package loads neither Gradio, FastAPI nor uvicorn: the servers import them when
built, for start-up speed.
"""

from ovis.serve.generation import Completion, GenerationParams
from ovis.serve.options import ServeOptions
from ovis.serve.runner import ChatSession, OvisRunner, RunnerArguments
from ovis.serve.server import serve

__all__ = ["ChatSession", "Completion", "GenerationParams", "OvisRunner", "RunnerArguments", "ServeOptions", "serve"]

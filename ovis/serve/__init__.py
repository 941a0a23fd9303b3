"""Inference and serving (layer 6): ``OvisRunner``, server-side batching, the web UI, the HTTP API.

Importing this package loads neither gradio nor FastAPI; the servers import them when built.
"""

from ovis.serve.generation import Completion, GenerationParams
from ovis.serve.runner import ChatSession, OvisRunner, RunnerArguments

__all__ = ["ChatSession", "Completion", "GenerationParams", "OvisRunner", "RunnerArguments"]

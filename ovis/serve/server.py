"""The ovis server: a Gradio chat UI at ``/`` and an OpenAI-compatible API at ``/v1``, one model.

Both front ends share one :class:`~ovis.serve.service.Service`, so requests from the browser and
from API clients are batched together. Start it from Python, through the CLI, or as the v1 seed
did (that command is ``ovis serve`` under its old name)::

    serve(ServeOptions(model_path="runs/quickstart/stage3/final", port=7860))
    ovis serve --model runs/quickstart/stage3/final --port 7860
    python ovis/serve/server.py --model_path runs/quickstart/stage3/final --port 7860

It binds 127.0.0.1 unless told otherwise (``host``).

FastAPI, Gradio and uvicorn (the ``serve`` extra) and the model code are imported when a server is
built, not with this module: for start-up speed, and so that the v1 command hands over to the CLI
before loading anything.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from ovis.ports import free_port

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ovis.serve.options import ServeOptions
    from ovis.serve.service import Service

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def serve(options: ServeOptions) -> int:
    """Load the model and serve until interrupted."""
    import uvicorn  # lazy: for start-up speed (see the module docstring)

    from ovis.serve.service import Service  # lazy: for start-up speed (see the module docstring)

    service = Service.load(
        options.model_path, limits=options.limits, model_name=options.model_name,
        max_batch_size=options.max_batch_size, window_s=options.batch_window_ms / 1000,
        device=options.device, dtype=options.dtype,
    )
    try:
        app = build_app(service, ui=options.ui, api=options.api, flagging_dir=options.flagging_dir)
        where = f"http://{options.host}:{options.port}"
        parts = ([f"web UI {where}/"] if options.ui else []) + ([f"API {where}/v1"] if options.api else [])
        print(f"serving {service.model_name!r} on {service.runner.device}: {', '.join(parts)}", flush=True)
        uvicorn.run(app, host=options.host, port=options.port, log_level="info")
    finally:
        service.close()
    return 0


def build_app(service: Service, *, ui: bool = True, api: bool = True, flagging_dir: str | None = None) -> FastAPI:
    """A FastAPI app with the API routes and, mounted last so ``/v1`` wins, the web UI at ``/``."""
    from fastapi import FastAPI  # lazy: for start-up speed (see the module docstring)

    app = FastAPI(title="ovis", description=f"Ovis model {service.model_name!r}")
    if api:
        from ovis.serve.openai_api import add_api_routes  # lazy: imports FastAPI's routing

        add_api_routes(app, service)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.model_name, "batching": service.batcher.stats.as_dict()}

    if ui:
        import gradio as gr  # lazy: for start-up speed (see the module docstring)

        from ovis.serve.web import build_ui  # lazy: imports Gradio

        # max_file_size: Gradio refuses bigger uploads before writing them to disk.
        app = gr.mount_gradio_app(app, build_ui(service, flagging_dir=flagging_dir), path="/",
                                  max_file_size=service.limits.max_image_bytes)
    return app


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn  # lazy: for start-up speed (see the module docstring)

        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="ovis-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


if __name__ == "__main__":
    # The v1 seed's command is `ovis serve` under its old name (the CLI's flags accept --model_path).
    # This process becomes `python -m ovis serve ...`, so the library never imports the CLI.
    os.execv(sys.executable, [sys.executable, "-m", "ovis", "serve", *sys.argv[1:]])

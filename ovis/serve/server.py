"""The ovis server: a Gradio chat UI at ``/`` and an OpenAI-compatible API at ``/v1``, one model.

Both front ends share one :class:`~ovis.serve.service.Service`, so requests from the browser and
from API clients are batched together. Run it as the v1 seed did or through the CLI::

    python ovis/serve/server.py --model_path runs/quickstart/stage3/final --port 7860
    ovis serve --model runs/quickstart/stage3/final --port 7860

It binds 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def build_app(service, *, ui: bool = True, api: bool = True, flagging_dir: str | None = None):
    """A FastAPI app with the API routes and, mounted last so ``/v1`` wins, the web UI at ``/``."""
    from fastapi import FastAPI

    app = FastAPI(title="ovis", description=f"Ovis model {service.model_name!r}")
    if api:
        from ovis.serve.openai_api import add_api_routes

        add_api_routes(app, service)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.model_name, "batching": service.batcher.stats.as_dict()}

    if ui:
        import gradio as gr

        from ovis.serve.web import build_ui

        # max_file_size: Gradio refuses bigger uploads before writing them to disk.
        app = gr.mount_gradio_app(app, build_ui(service, flagging_dir=flagging_dir), path="/",
                                  max_file_size=service.limits.max_image_bytes)
    return app


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

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

    def __exit__(self, *exc) -> None:
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def add_server_arguments(parser: argparse.ArgumentParser, *, model_flags: Sequence[str]) -> None:
    parser.add_argument(*model_flags, dest="model_path", required=True,
                        help="model directory (from `ovis compose`, `ovis train` or `ovis quickstart`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model-name", help="the model id the API reports (default: the directory name)")
    parser.add_argument("--no-ui", action="store_true", help="serve the HTTP API only")
    parser.add_argument("--no-api", action="store_true", help="serve the web UI only")
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: CUDA when present)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--max-batch-size", type=int, default=16, help="requests generated together")
    parser.add_argument("--batch-window-ms", type=float, default=10.0,
                        help="how long the first request waits for others to join its batch")
    parser.add_argument("--max-images", type=int, help="images per request (default 8)")
    parser.add_argument("--max-image-pixels", type=int, help="pixels per image (default 4096x4096)")
    parser.add_argument("--max-image-bytes", type=int, help="encoded bytes per image (default 10 MiB)")
    parser.add_argument("--max-new-tokens", type=int, help="ceiling for max_tokens (default 1024)")
    parser.add_argument("--flagging_dir", "--flagging-dir", dest="flagging_dir",
                        help="where the UI stores flagged conversations (default: flagging off)")


def limits_from_args(args: argparse.Namespace):
    from ovis.serve.limits import ServeLimits

    given = {
        "max_images": args.max_images, "max_image_pixels": args.max_image_pixels,
        "max_image_bytes": args.max_image_bytes, "max_new_tokens": args.max_new_tokens,
    }
    return ServeLimits(**{k: v for k, v in given.items() if v is not None})


def serve(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted."""
    import uvicorn

    from ovis.serve.service import Service

    if args.no_ui and args.no_api:
        raise ValueError("--no-ui and --no-api together leave nothing to serve")
    service = Service.load(
        args.model_path, limits=limits_from_args(args), model_name=args.model_name,
        max_batch_size=args.max_batch_size, window_s=args.batch_window_ms / 1000,
        device=args.device, dtype=args.dtype,
    )
    app = build_app(service, ui=not args.no_ui, api=not args.no_api, flagging_dir=args.flagging_dir)
    where = f"http://{args.host}:{args.port}"
    parts = ([f"web UI {where}/"] if not args.no_ui else []) + ([f"API {where}/v1"] if not args.no_api else [])
    print(f"serving {service.model_name!r} on {service.runner.device}: {', '.join(parts)}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        service.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an ovis model: web UI and OpenAI-compatible API.")
    add_server_arguments(parser, model_flags=["--model_path", "--model-path", "--model"])
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

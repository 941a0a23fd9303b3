"""The ovis server: a Gradio chat UI at ``/`` and an OpenAI-compatible API at ``/v1``, one model.

Both front ends share one :class:`~ovis.serve.service.Service`, so requests from the browser and
from API clients are batched together. Start it from Python, through the CLI, or as the v1 seed
did (that command is ``ovis serve`` under its old name)::

    serve(ServeOptions(model_path="runs/quickstart/stage3/final", port=7860))
    ovis serve --model runs/quickstart/stage3/final --port 7860
    python ovis/serve/server.py --model_path runs/quickstart/stage3/final --port 7860

It binds 127.0.0.1 unless told otherwise (``host``). To put it on a network, give it a key
(``api_key``: the API wants ``Authorization: Bearer KEY``, the web UI a login with the key as
password; :mod:`ovis.serve.auth`); it warns loudly when it binds beyond this machine without one.
Every request passes the HTTP limits of :mod:`ovis.serve.http_limits` (body size while it streams
in, body read and request timeouts, a cap on running and waiting requests: 503 + ``Retry-After``)
and writes one JSON line to the access log (:mod:`ovis.serve.access_log`, no message text).

FastAPI, Gradio and uvicorn (the ``serve`` extra) and the model code are imported when a server is
built, not with this module: for start-up speed, and so that the v1 command hands over to the CLI
before loading anything.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from ovis.ports import free_port
from ovis.serve.access_log import AccessLog, AccessLogMiddleware
from ovis.serve.auth import ApiKeyMiddleware, authorized, gradio_login
from ovis.serve.http_limits import HttpGuard, HttpLimits

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ovis.serve.options import ServeOptions
    from ovis.serve.service import Service

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
logger = logging.getLogger("ovis.serve")

HEALTH_PATH = "/health"
#: seconds an idle keep-alive connection stays open (uvicorn's default too)
KEEP_ALIVE_S = 5


def exposure_warning(options: ServeOptions) -> str | None:
    """The warning for a server bound beyond this machine without a key, or None."""
    if not options.exposed_without_key:
        return None
    return (
        f"WARNING: ovis serve is listening on {options.host}, beyond this machine, WITHOUT an API key: "
        "anyone who can reach the port can use the model and the web UI. Pass --api-key-file FILE "
        "(or set OVIS_API_KEY), or bind 127.0.0.1."
    )


def serve(options: ServeOptions) -> int:
    """Load the model and serve until interrupted."""
    import uvicorn  # lazy: for start-up speed (see the module docstring)

    from ovis.serve.service import Service  # lazy: for start-up speed (see the module docstring)

    if (warning := exposure_warning(options)) is not None:
        banner = "!" * 100
        print(f"{banner}\n{warning}\n{banner}", file=sys.stderr, flush=True)
        logger.warning(warning)
    access_log = AccessLog(options.access_log, client_address=options.access_log_client) if options.access_log else None
    service = Service.load(
        options.model_path, limits=options.limits, model_name=options.model_name,
        max_batch_size=options.max_batch_size, window_s=options.batch_window_ms / 1000,
        device=options.device, dtype=options.dtype,
    )
    key = options.api_key.get_secret_value() if options.api_key is not None else None
    try:
        app = build_app(service, ui=options.ui, api=options.api, flagging_dir=options.flagging_dir, api_key=key,
                        http=options.http, access_log=access_log)
        where = f"http://{options.host}:{options.port}"
        parts = ([f"web UI {where}/"] if options.ui else []) + ([f"API {where}/v1"] if options.api else [])
        guarded = "API key required" if key else "no API key"
        print(f"serving {service.model_name!r} on {service.runner.device}: {', '.join(parts)} ({guarded})", flush=True)
        uvicorn.run(app, **uvicorn_settings(options.http), host=options.host, port=options.port, log_level="info")
    finally:
        service.close()
        if access_log is not None:
            access_log.close()
    return 0


def uvicorn_settings(http: HttpLimits) -> dict:
    """uvicorn's own settings that back up the HTTP limits."""
    return {
        # The structured access log replaces uvicorn's, which prints query strings.
        "access_log": False,
        "timeout_keep_alive": KEEP_ALIVE_S,
        # A last line of defence: connections (idle ones included) beyond this are refused with 503
        # by uvicorn itself. Generous: the HttpGuard's admission is the real cap on work.
        "limit_concurrency": 4 * (http.max_concurrent_requests + http.max_queued_requests) + 64,
    }


def build_app(
    service: Service, *, ui: bool = True, api: bool = True, flagging_dir: str | None = None,
    api_key: str | None = None, http: HttpLimits | None = None, access_log: AccessLog | None = None,
) -> FastAPI:
    """A FastAPI app with the API routes and, mounted last so ``/v1`` wins, the web UI at ``/``,
    behind the access log (outermost), the API key and the HTTP limits."""
    from fastapi import FastAPI  # lazy: for start-up speed (see the module docstring)
    from fastapi.responses import JSONResponse

    http = http or HttpLimits()
    app = FastAPI(title="ovis", description=f"Ovis model {service.model_name!r}")
    if api:
        from ovis.serve.openai_api import add_api_routes  # lazy: imports FastAPI's routing

        add_api_routes(app, service)

    async def health(request) -> JSONResponse:  # a plain Starlette route: it takes the request as is
        if not authorized(request.scope, api_key):
            return JSONResponse({"status": "ok"})  # open for probes; the rest is for key holders
        return JSONResponse({"status": "ok", "model": service.model_name, "batching": service.batcher.stats.as_dict()})

    app.add_route(HEALTH_PATH, health, methods=["GET"], include_in_schema=False)

    if ui:
        import gradio as gr  # lazy: for start-up speed (see the module docstring)

        from ovis.serve.web import build_ui  # lazy: imports Gradio

        demo = build_ui(service, flagging_dir=flagging_dir, concurrency_limit=http.max_concurrent_requests)
        demo.queue(max_size=http.max_queued_requests)  # Gradio answers a full queue with 503
        # max_file_size: Gradio refuses bigger uploads before writing them to disk.
        app = gr.mount_gradio_app(app, demo, path="/", max_file_size=service.limits.max_image_bytes,
                                  auth=gradio_login(api_key) if api_key else None,
                                  auth_message="This ovis server wants its API key as the password (any user name).")
    # Added innermost first: a request meets the access log, then the key, then the limits.
    app.add_middleware(HttpGuard, limits=http, max_body_bytes=service.limits.body_limit, exempt=(HEALTH_PATH,))
    if api_key:
        app.add_middleware(ApiKeyMiddleware, key=api_key)
    if access_log is not None:
        app.add_middleware(AccessLogMiddleware, log=access_log)
    return app


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn  # lazy: for start-up speed (see the module docstring)

        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on",
                                access_log=False, timeout_keep_alive=KEEP_ALIVE_S)
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

"""The OpenAI-compatible HTTP API: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Clients written for OpenAI work unchanged::

    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="none")
    reply = client.chat.completions.create(model="<served id>", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "text", "text": "What is in the picture?"},
    ]}])

What differs from OpenAI, deliberately:

* Decoding is greedy unless ``temperature`` > 0 (absent or 0: greedy, so replies are reproducible);
  ``top_p`` and ``top_k`` only apply when sampling. ``top_k`` and ``repetition_penalty`` are
  extensions, as in vLLM (``top_k`` -1 or 0 means no top-k filtering). Numbers must be JSON numbers.
* Images come as ``data:image/...;base64,`` URLs only: the server does not fetch remote URLs.
  Each ``image_url`` part becomes an ``<image>`` at that spot of the message (parts are joined
  with newlines), and the images are numbered in order. Images are accepted in user messages.
* One choice per request (``n`` = 1); no log probabilities, tools, penalties other than
  ``repetition_penalty``, or structured output. Those parameters are refused with a 400 that names
  them when set to anything but their neutral value; other unknown fields are ignored, as OpenAI does.
* ``role: "developer"`` is read as ``system``.
* A non-streaming reply carries an ``x-ovis-batch-size`` header: how many requests shared its batch.

Every refusal is an OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}``:
400 for a malformed or unsupported request (including invalid JSON and schema violations, which
FastAPI would answer with 422), 404 for an unknown model, 413 for a body or image over the limits,
500 when generation itself fails (the server keeps serving); 401 without the server's key (see
:mod:`ovis.serve.auth`), and 408/503/504 from the HTTP limits (:mod:`ovis.serve.http_limits`).
Requests are encoded (images decoded, prompt tokenized) in a worker thread, then queued on the
shared batcher; a client that disconnects, streaming or not, or a request that times out, has its
request cancelled so the batch stops generating for it.

This module holds the endpoints; the request schema is in :mod:`ovis.serve.openai_schema`, the
translation of messages in :mod:`ovis.serve.openai_messages`, the answers in
:mod:`ovis.serve.openai_replies`, error bodies in :mod:`ovis.serve.openai_errors` (through the route
class of :mod:`ovis.serve.openai_route`).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ovis.serve.access_log import note_usage
from ovis.serve.batcher import Handle
from ovis.serve.openai_errors import ApiError
from ovis.serve.openai_messages import encode
from ovis.serve.openai_replies import Reply, completion_response, generation_failed, stream_response
from ovis.serve.openai_route import OpenAIRoute
from ovis.serve.openai_schema import ChatCompletionRequest, generation_params, refuse_unsupported
from ovis.serve.service import Service

ENDPOINTS = "GET /v1/models, GET /v1/models/{model} and POST /v1/chat/completions"


def add_api_routes(app: FastAPI, service: Service) -> None:
    """Add ``/v1/models`` and ``/v1/chat/completions`` for ``service`` to ``app``."""
    router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["OpenAI-compatible API"])
    _add_model_routes(router, service)
    _add_chat_route(router, service)
    _add_unknown_endpoint_route(router)
    app.include_router(router)


def _unknown_model(service: Service, name: str) -> ApiError:
    return ApiError(
        f"The model {name!r} does not exist; this server serves {service.model_name!r}",
        status=404, param="model", code="model_not_found",
    )


def _add_model_routes(router: APIRouter, service: Service) -> None:
    created = int(time.time())

    def model_card() -> dict:
        return {"id": service.model_name, "object": "model", "created": created, "owned_by": "ovis"}

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != service.model_name:
            raise _unknown_model(service, model_id)
        return model_card()


def _add_chat_route(router: APIRouter, service: Service) -> None:
    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.model != service.model_name:
            raise _unknown_model(service, body.model)
        refuse_unsupported(body)
        params = generation_params(service, body)
        encoded = await run_in_threadpool(encode, service, body, params)
        try:
            handle = service.submit(encoded, loop=asyncio.get_running_loop())
        except RuntimeError as exc:
            raise ApiError(f"the server is shutting down ({exc})", status=503, type="server_error") from exc
        note_usage(request.scope, lambda: _usage(handle))
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handle))
        reply = Reply.new(service.model_name)
        if body.stream:
            return await stream_response(handle, watcher, reply, body.include_usage)
        try:
            completion = await handle.aresult()
        except asyncio.CancelledError:
            handle.cancel()  # the request timed out: nobody will read this answer
            raise
        except Exception as exc:
            return generation_failed(handle, exc)
        finally:
            watcher.cancel()
        return completion_response(reply, completion, handle.batch_size or 1)


def _usage(handle: Handle) -> tuple[int, int] | None:
    """The token counts of a finished request, for the access log."""
    done = handle.completion
    return (done.prompt_tokens, done.completion_tokens) if done is not None else None


async def _cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """Cancel ``handle`` when the client goes away (the body has been read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return
        await asyncio.sleep(0.05)


def _add_unknown_endpoint_route(router: APIRouter) -> None:
    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_endpoint(path: str, request: Request) -> Response:
        raise ApiError(
            f"{request.method} /v1/{path} is not an endpoint of this server; it serves {ENDPOINTS}",
            status=404, code="unknown_url",
        )

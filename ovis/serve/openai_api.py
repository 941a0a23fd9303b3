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
  extensions, as in vLLM (``top_k`` <= 0 means no top-k filtering).
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
500 when generation itself fails (the server keeps serving). Requests are encoded (images decoded,
prompt tokenized) in a worker thread, then queued on the shared batcher; a client that disconnects,
streaming or not, has its request cancelled so the batch stops generating for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ovis.interfaces import IMAGE_MARKER
from ovis.serve.batcher import Handle
from ovis.serve.generation import Completion, GenerationParams
from ovis.serve.limits import RequestError, ServeLimits, check_image_count, check_max_new_tokens, decode_data_url
from ovis.serve.runner import Request as EncodedRequest
from ovis.serve.service import Service

logger = logging.getLogger("ovis.serve.api")

#: room for the JSON around the images, and for the text of a long conversation
TEXT_BODY_BYTES = 8 * 2**20
_BODY_LIMIT_KEY = "ovis.max_body_bytes"


class ApiError(RequestError):
    """A refusal with an OpenAI error ``type`` and ``code``."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message, status=status, param=param)
        self.code = code
        self.type = type


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None,
    type: str = "invalid_request_error",
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status
    )


def _error_body(exc: RequestError) -> JSONResponse:
    return error_response(
        exc.status, str(exc), param=exc.param, code=getattr(exc, "code", None),
        type=getattr(exc, "type", "invalid_request_error"),
    )


# -- the request schema ---------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion request; fields it has that this server ignores are not listed."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[dict[str, Any]] = Field(
        min_length=1,
        description="system / user / assistant messages; content a string or a list of text and image_url parts",
    )
    max_tokens: int | None = Field(None, description="deprecated by OpenAI in favour of max_completion_tokens")
    max_completion_tokens: int | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="absent or 0: greedy; > 0: sampling")
    top_p: float | None = Field(None, gt=0, le=1, description="only when sampling")
    top_k: int | None = Field(None, description="extension (vLLM); <= 0: off; only when sampling")
    repetition_penalty: float | None = Field(None, gt=0, description="extension (vLLM); 1: off")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, description="only when sampling")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="only 1")
    # Refused unless neutral:
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    """A 400 naming the first parameter this server cannot honour."""

    def refuse(param: str, why: str) -> None:
        raise ApiError(f"{param} is not supported by this server: {why}", param=param, code="unsupported_parameter")

    if body.n is not None and body.n != 1:
        refuse("n", f"it returns one choice per request (n=1), got n={body.n}")
    if body.logprobs:
        refuse("logprobs", "log probabilities are not returned")
    if body.top_logprobs:
        refuse("top_logprobs", "log probabilities are not returned")
    if body.tools:
        refuse("tools", "no tool or function calling")
    if body.functions:
        refuse("functions", "no tool or function calling")
    if body.tool_choice not in (None, "none", "auto"):
        refuse("tool_choice", "no tool or function calling")
    if body.function_call not in (None, "none", "auto"):
        refuse("function_call", "no tool or function calling")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value not in (None, 0):
            refuse(name, f"only 0 (got {value}); repetition_penalty is available instead")
    if body.logit_bias:
        refuse("logit_bias", "no logit biases")
    if body.response_format and body.response_format.get("type", "text") != "text":
        refuse("response_format", f"only {{'type': 'text'}}, got {body.response_format.get('type')!r}")
    if body.modalities and set(body.modalities) - {"text"}:
        refuse("modalities", "replies are text only")
    if body.audio is not None:
        refuse("audio", "replies are text only")


def generation_params(service: Service, body: ChatCompletionRequest) -> GenerationParams:
    """The request's sampling settings as :class:`GenerationParams` (raises RequestError)."""
    if body.max_completion_tokens is not None:
        max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, param = body.max_tokens, "max_tokens"
    if max_tokens is not None:
        check_max_new_tokens(max_tokens, service.limits, param=param)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise RequestError("stop strings must not be empty", param="stop")
    settings: dict[str, Any] = {"max_new_tokens": max_tokens, "stop": stop}
    if body.repetition_penalty is not None and body.repetition_penalty != 1:
        settings["repetition_penalty"] = body.repetition_penalty
    if body.temperature:  # None or 0: greedy, where top_p / top_k / seed change nothing
        settings.update(
            do_sample=True, temperature=body.temperature, top_p=body.top_p,
            top_k=body.top_k if body.top_k is not None and body.top_k > 0 else None, seed=body.seed,
        )
    return service.params(**settings)


# -- messages and images --------------------------------------------------------------------------------
def _image_url(part: dict, where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise RequestError(f"{where}.image_url.url must be a string (a data: URL)", param=f"{where}.image_url.url")
    return url


def conversation(raw: list[dict[str, Any]], limits: ServeLimits) -> tuple[list[dict[str, str]], list[Image.Image]]:
    """OpenAI messages -> ovis messages with ``<image>`` markers, and the decoded images in order."""
    image_parts = sum(
        1 for m in raw if isinstance(m.get("content"), list)
        for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url"
    )
    try:
        check_image_count(image_parts, limits)  # before decoding any of them
    except RequestError as exc:
        exc.param = "messages"
        raise
    messages: list[dict[str, str]] = []
    images: list[Image.Image] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise RequestError(
                f"{where}.role must be system, user or assistant, got {role!r} (tool and function messages "
                "are not supported)", param=f"{where}.role",
            )
        if message.get("tool_calls") or message.get("function_call"):
            raise RequestError(f"{where}: tool calls are not supported", param=f"{where}.tool_calls")
        content = message.get("content")
        if isinstance(content, str):
            text = content
            if IMAGE_MARKER in text:
                raise RequestError(
                    f"{where}.content contains {IMAGE_MARKER!r}, which marks image positions here; send images "
                    "as image_url parts", param=f"{where}.content",
                )
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                at = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    piece = part.get("text")
                    if not isinstance(piece, str):
                        raise RequestError(f"{at}.text must be a string", param=f"{at}.text")
                    if IMAGE_MARKER in piece:
                        raise RequestError(
                            f"{at}.text contains {IMAGE_MARKER!r}, which marks image positions here; send images "
                            "as image_url parts", param=f"{at}.text",
                        )
                    pieces.append(piece)
                elif kind == "image_url":
                    if role != "user":
                        raise RequestError(f"{at}: images are accepted in user messages only", param=f"{at}.type")
                    try:
                        images.append(decode_data_url(_image_url(part, at), limits, what=f"{at}.image_url"))
                    except RequestError as exc:
                        exc.param = exc.param or f"{at}.image_url"
                        raise
                    pieces.append(IMAGE_MARKER)
                else:
                    raise RequestError(
                        f"{at}.type must be 'text' or 'image_url', got {kind!r}", param=f"{at}.type"
                    )
            text = "\n".join(pieces)
        elif content is None and role == "assistant":
            text = ""
        else:
            raise RequestError(
                f"{where}.content must be a string or a list of content parts, got {type(content).__name__}",
                param=f"{where}.content",
            )
        messages.append({"role": role, "content": text})
    return messages, images


def encode(service: Service, body: ChatCompletionRequest, params: GenerationParams) -> EncodedRequest:
    """Decode the images and tokenize the prompt, within the limits (runs in a worker thread)."""
    messages, images = conversation(body.messages, service.limits)
    return service.request(messages, images, params)


# -- routes that answer every failure in OpenAI's shape -------------------------------------------------
class _LimitedRequest(Request):
    """A request whose body is refused (413) once it grows past the route's limit."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            limit = self.scope[_BODY_LIMIT_KEY]
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise RequestError(f"the request body is {int(declared):,} bytes; the limit is {limit:,}", status=413)
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(f"the request body is over the limit of {limit:,} bytes", status=413)
                chunks.append(chunk)
            self._body = b"".join(chunks)
        return self._body


def _param(loc: tuple) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages[0]"``: the top-level field and its indices."""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    if not parts or not isinstance(parts[0], str):
        return None
    out = parts[0]
    for part in parts[1:]:
        if not isinstance(part, int):
            break
        out += f"[{part}]"
    return out


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "JSON decode error")
        position = first.get("loc", ("body", 0))[-1]
        return error_response(400, f"the request body is not valid JSON: {detail} (at character {position})")
    problems: list[str] = []
    for error in errors:
        where = _param(tuple(error.get("loc", ())))
        problem = (
            "the request body must be a JSON object (Content-Type: application/json)" if where is None
            else f"{where}: {error.get('msg')}"
        )
        if problem not in problems:
            problems.append(problem)
    return error_response(400, "invalid request: " + "; ".join(problems), param=_param(tuple(first.get("loc", ()))))


def _route_class(max_body_bytes: int) -> type[APIRoute]:
    class OpenAIRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                request.scope[_BODY_LIMIT_KEY] = max_body_bytes
                try:
                    return await handler(_LimitedRequest(request.scope, request.receive))
                except RequestError as exc:
                    return _error_body(exc)
                except RequestValidationError as exc:
                    return _validation_error(exc)
                except HTTPException as exc:
                    if isinstance(exc.__cause__, RequestError):  # FastAPI wraps errors from reading the body
                        return _error_body(exc.__cause__)
                    return error_response(exc.status_code, str(exc.detail))
                except Exception as exc:  # a bug or a failing model: answer 500, keep serving
                    logger.exception("the API request failed")
                    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

            return route

    return OpenAIRoute


# -- the endpoints --------------------------------------------------------------------------------------
def _finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }


async def _cancel_on_disconnect(request: Request, handle: Handle) -> None:
    """Cancel ``handle`` when the client goes away (the body has been read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return
        await asyncio.sleep(0.05)


def _generation_failed(handle: Handle, exc: Exception) -> JSONResponse:
    if handle.cancelled:  # the client left while the request waited: nobody reads this answer
        logger.info("request cancelled before it was generated: %s", exc)
    else:
        logger.error("generation failed", exc_info=exc)
    return error_response(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


def _sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def add_api_routes(app: FastAPI, service: Service) -> None:
    """Add ``/v1/models`` and ``/v1/chat/completions`` for ``service`` to ``app``."""
    limits = service.limits
    max_body = limits.max_images * (limits.max_image_bytes * 4 // 3 + 4096) + TEXT_BODY_BYTES
    router = APIRouter(prefix="/v1", route_class=_route_class(max_body), tags=["OpenAI-compatible API"])
    created = int(time.time())

    def model_card() -> dict:
        return {"id": service.model_name, "object": "model", "created": created, "owned_by": "ovis"}

    def unknown_model(name: str) -> ApiError:
        return ApiError(
            f"The model {name!r} does not exist; this server serves {service.model_name!r}",
            status=404, param="model", code="model_not_found",
        )

    @router.get("/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != service.model_name:
            raise unknown_model(model_id)
        return model_card()

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.model != service.model_name:
            raise unknown_model(body.model)
        refuse_unsupported(body)
        params = generation_params(service, body)
        encoded = await run_in_threadpool(encode, service, body, params)
        try:
            handle = service.submit(encoded, loop=asyncio.get_running_loop())
        except RuntimeError as exc:
            raise ApiError(f"the server is shutting down ({exc})", status=503, type="server_error") from exc
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, handle))
        reply_id = f"chatcmpl-{uuid.uuid4().hex}"
        stamp = int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(handle, watcher, reply_id, stamp, service.model_name, include_usage)
        try:
            completion = await handle.aresult()
        except Exception as exc:
            return _generation_failed(handle, exc)
        finally:
            watcher.cancel()
        return JSONResponse(
            {
                "id": reply_id,
                "object": "chat.completion",
                "created": stamp,
                "model": service.model_name,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.output},
                    "logprobs": None,
                    "finish_reason": _finish_reason(completion),
                }],
                "usage": _usage(completion),
            },
            headers={"x-ovis-batch-size": str(handle.batch_size or 1)},
        )

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def unknown_endpoint(path: str, request: Request) -> Response:
        raise ApiError(
            f"{request.method} /v1/{path} is not an endpoint of this server; it serves GET /v1/models, "
            "GET /v1/models/{model} and POST /v1/chat/completions", status=404, code="unknown_url",
        )

    app.include_router(router)


async def _stream(
    handle: Handle, watcher: asyncio.Future, reply_id: str, stamp: int, model: str, include_usage: bool
) -> Response:
    """Wait for the first piece (so a request that fails at once gets a 500), then stream SSE chunks."""
    pieces = handle.__aiter__()
    try:
        first: str | None = await anext(pieces)
    except StopAsyncIteration:
        first = None
    except Exception as exc:
        watcher.cancel()
        return _generation_failed(handle, exc)

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        out = {
            "id": reply_id, "object": "chat.completion.chunk", "created": stamp, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            out["usage"] = None
        return out

    async def events() -> AsyncIterator[str]:
        try:
            yield _sse(chunk({"role": "assistant", "content": ""}))
            if first is not None:
                yield _sse(chunk({"content": first}))
                async for piece in pieces:
                    yield _sse(chunk({"content": piece}))
            completion = handle.completion
            assert completion is not None
            yield _sse(chunk({}, _finish_reason(completion)))
            if include_usage:
                yield _sse({
                    "id": reply_id, "object": "chat.completion.chunk", "created": stamp, "model": model,
                    "choices": [], "usage": _usage(completion),
                })
        except Exception as exc:  # failed mid-stream: the status is sent already, so say it in the stream
            logger.exception("generation failed mid-stream")
            yield _sse({"error": {"message": f"generation failed: {type(exc).__name__}: {exc}",
                                  "type": "server_error", "param": None, "code": None}})
        finally:
            handle.cancel()  # a no-op once finished; stops the batch row if the client went away
            watcher.cancel()
        yield _sse("[DONE]")

    return StreamingResponse(
        events(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

"""The answers of ``POST /v1/chat/completions``: one ``chat.completion`` JSON body, or a stream of
``chat.completion.chunk`` server-sent events ending in ``[DONE]``; a generation that fails is a
500 before the stream starts, an error event after."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ovis.serve.batcher import Handle
from ovis.serve.generation import Completion
from ovis.serve.openai_errors import error_payload, error_response

logger = logging.getLogger("ovis.serve.api")


@dataclass(frozen=True)
class Reply:
    """What every piece of one reply carries: its id, when it was created and the model's id."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Reply:
        return cls(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model)

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def completion_response(reply: Reply, completion: Completion, batch_size: int) -> JSONResponse:
    """The whole reply; ``x-ovis-batch-size`` says how many requests shared its batch."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": completion.output},
        "logprobs": None,
        "finish_reason": _finish_reason(completion),
    }
    return JSONResponse(
        {**reply.head("chat.completion"), "choices": [choice], "usage": _usage(completion)},
        headers={"x-ovis-batch-size": str(batch_size)},
    )


def generation_failed(handle: Handle, exc: Exception) -> JSONResponse:
    if handle.cancelled:  # the client left while the request waited: nobody reads this answer
        logger.info("request cancelled before it was generated: %s", exc)
    else:
        logger.error("generation failed", exc_info=exc)
    return error_response(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")


async def stream_response(handle: Handle, watcher: asyncio.Future, reply: Reply, include_usage: bool) -> Response:
    """Wait for the first piece (so a request that fails at once gets a 500), then stream SSE chunks.

    ``watcher`` (the task that cancels ``handle`` when the client leaves) is cancelled once the
    stream ends."""
    pieces = handle.__aiter__()
    try:
        first: str | None = await anext(pieces)
    except StopAsyncIteration:
        first = None
    except Exception as exc:
        watcher.cancel()
        return generation_failed(handle, exc)
    return StreamingResponse(
        _events(handle, watcher, reply, include_usage, first, pieces), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    handle: Handle, watcher: asyncio.Future, reply: Reply, include_usage: bool, first: str | None,
    pieces: AsyncIterator[str],
) -> AsyncIterator[str]:
    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        out = {
            **reply.head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            out["usage"] = None
        return out

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
            yield _sse({**reply.head("chat.completion.chunk"), "choices": [], "usage": _usage(completion)})
    except Exception as exc:  # failed mid-stream: the status is sent already, so say it in the stream
        logger.exception("generation failed mid-stream")
        yield _sse(error_payload(f"generation failed: {type(exc).__name__}: {exc}", type="server_error"))
    finally:
        handle.cancel()  # a no-op once finished; stops the batch row if the client went away
        watcher.cancel()
    yield _sse("[DONE]")


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.total_tokens,
    }


def _sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"

"""HTTP-level limits of ``ovis serve``: body size, body read and request timeouts, and how many
requests run or wait at once. One ASGI middleware, :class:`HttpGuard`, enforces them in front of
every route (the API, the web UI, ``/health``) before a handler sees the request:

* **Body size**: a declared ``Content-Length`` over the limit is answered 413 before one byte of the
  body is read; a body without one (chunked) is counted as its pieces arrive and refused (413) as
  soon as it passes the limit. The rest is never read (the connection is closed), so memory per
  request is bounded by the limit, not by what a client sends.
* **Body read timeout**: each piece of a body must arrive within ``body_timeout_s`` of the last; a
  stalled upload is answered 408 and its connection closed.
* **Request timeout**: a request still running after ``request_timeout_s`` is stopped: 504 if
  nothing was sent yet, else its (streamed) body is ended there.
* **Admission**: requests that carry work (every method but GET, HEAD and OPTIONS) run at most
  ``max_concurrent_requests`` at once; up to ``max_queued_requests`` more wait for a slot, in order;
  past that the answer is 503 with ``Retry-After``. Any 503 the app itself sends (Gradio's full
  queue) gets ``Retry-After`` too.

Refusals are OpenAI-style JSON bodies (``{"error": {"message", "type", "param", "code"}}``). This
module imports neither torch nor a web framework: ``ovis serve`` checks :class:`HttpLimits` before
anything loads.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: methods that carry no work worth queueing (assets, model cards, Gradio's event streams)
LIGHT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class HttpLimits(BaseModel):
    """How long a request may take and how many may run or wait; the defaults suit one GPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_timeout_s: float = Field(600.0, gt=0, description="the longest a whole request may run")
    body_timeout_s: float = Field(30.0, gt=0, description="the longest wait for the next piece of a request body")
    max_concurrent_requests: int = Field(64, ge=1, description="requests with a body handled at once")
    max_queued_requests: int = Field(256, ge=0, description="requests waiting for a slot; past it: 503")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After a 503 carries")


class _Refusal(Exception):
    """Raised inside the guard to answer ``status`` (and close the connection when the body is unread)."""

    def __init__(self, status: int, message: str, code: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.close = status, code, close


def error_body(message: str, *, code: str | None, type: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()


async def send_error(
    send: Send,
    status: int,
    message: str,
    *,
    code: str | None,
    type: str = "invalid_request_error",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer a whole JSON error response."""
    body = error_body(message, code=code, type=type)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Admission:
    """At most ``limit`` holders at once and at most ``queue`` waiters, served in order."""

    def __init__(self, limit: int, queue: int) -> None:
        self.limit, self.queue = limit, queue
        self.active = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.queue:
            raise _Refusal(
                503,
                f"the server is busy: {self.active} requests are running and {len(self._waiters)} "
                "waiting, the most it takes; retry later",
                "server_busy",
            )
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: ``active`` is already counted for us
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


class HttpGuard:
    """The ASGI middleware that enforces :class:`HttpLimits` and a body-size limit (see the module)."""

    def __init__(self, app: ASGIApp, *, limits: HttpLimits, max_body_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.exempt = exempt  # paths that skip admission (health checks must answer under load)
        self.admission = _Admission(limits.max_concurrent_requests, limits.max_queued_requests)
        self.max_active = 0  # the most requests ever admitted at once (tests, the soak benchmark)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _Exchange(self, scope, receive, send)
        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise _Refusal(
                    413,
                    f"the request body is {declared:,} bytes; the limit is {self.max_body_bytes:,} (--max-body-bytes)",
                    "body_too_large",
                    close=True,
                )
            admitted = scope["method"] not in LIGHT_METHODS and scope["path"] not in self.exempt
            await asyncio.wait_for(self._run(scope, state, admitted), self.limits.request_timeout_s)
        except _Refusal as refusal:
            await state.refuse(refusal)
        except asyncio.TimeoutError:
            await state.refuse(
                _Refusal(
                    504,
                    f"the request took longer than {self.limits.request_timeout_s:g} s, the server's limit",
                    "request_timeout",
                    close=True,
                )
            )
        except Exception:
            if state.refusal is None:
                raise
            # Refused mid-body (413, 408): the app then failed to read the rest; the answer went out.

    async def _run(self, scope: Scope, state: _Exchange, admitted: bool) -> None:
        if admitted:
            await self.admission.acquire()
            self.max_active = max(self.max_active, self.admission.active)
        try:
            await self.app(scope, state.receive, state.send)
        finally:
            if admitted:
                self.admission.release()


class _Exchange:
    """One request's receive/send, wrapped: counts and times its body, remembers what was sent."""

    def __init__(self, guard: HttpGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard, self.scope = guard, scope
        self._receive, self._send = receive, send
        self.body_bytes = 0
        self.body_done = scope["method"] in LIGHT_METHODS and _content_length(scope) in (None, 0)
        self.started = False  # a response start went out
        self.finished = False  # the whole response went out
        self.refusal: _Refusal | None = None

    async def receive(self) -> Message:
        if self.refusal is not None:
            return {"type": "http.disconnect"}  # refused: the app's reading ends here
        if self.body_done:
            return await self._receive()  # the app waits for a disconnect: no deadline
        try:
            message = await asyncio.wait_for(self._receive(), self.guard.limits.body_timeout_s)
        except asyncio.TimeoutError:
            await self.refuse(
                _Refusal(
                    408,
                    f"the request body stalled: no data for {self.guard.limits.body_timeout_s:g} s",
                    "body_timeout",
                    close=True,
                )
            )
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.body_bytes += len(message.get("body", b""))
            if self.body_bytes > self.guard.max_body_bytes:
                await self.refuse(
                    _Refusal(
                        413,
                        f"the request body is over the limit of {self.guard.max_body_bytes:,} bytes (--max-body-bytes)",
                        "body_too_large",
                        close=True,
                    )
                )
                return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_done = True
        else:
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None or self.finished:
            return  # the guard answered already; the app's own answer goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in message.get("headers", [])):
                message = {**message, "headers": [*message.get("headers", []), _retry_after(self.guard.limits)]}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)

    async def refuse(self, refusal: _Refusal) -> None:
        if self.refusal is not None:
            return
        self.refusal = refusal
        self.scope.setdefault("ovis.refused", refusal.code)  # for the access log
        if self.finished:
            return
        if self.started:
            # The status went out (a stream): end the body where it is.
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        headers = [(b"connection", b"close")] if refusal.close or not self.body_done else []
        if refusal.status == 503:
            headers.append(_retry_after(self.guard.limits))
        await send_error(
            self._send,
            refusal.status,
            str(refusal),
            code=refusal.code,
            type="server_error" if refusal.status >= 500 else "invalid_request_error",
            headers=headers,
        )


def _retry_after(limits: HttpLimits) -> tuple[bytes, bytes]:
    return b"retry-after", str(math.ceil(limits.retry_after_s)).encode()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None

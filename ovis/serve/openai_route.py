"""The route class of the API: each request body is read under a size limit (413 past it) and
every failure of a handler is answered by :func:`~ovis.serve.openai_errors.failure_response`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ovis.serve.errors import RequestError
from ovis.serve.limits import ServeLimits
from ovis.serve.openai_errors import failure_response

#: room for the JSON around the images, and for the text of a long conversation
TEXT_BODY_BYTES = 8 * 2**20
_BODY_LIMIT_KEY = "ovis.max_body_bytes"


def max_body_bytes(limits: ServeLimits) -> int:
    """The largest body a request within ``limits`` can need: its images base64-encoded, plus text."""
    return limits.max_images * (limits.max_image_bytes * 4 // 3 + 4096) + TEXT_BODY_BYTES


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


def openai_route_class(limit: int) -> type[APIRoute]:
    """An ``APIRoute`` whose requests carry at most ``limit`` bytes and whose failures are OpenAI errors."""

    class OpenAIRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                request.scope[_BODY_LIMIT_KEY] = limit
                try:
                    return await handler(_LimitedRequest(request.scope, request.receive))
                except Exception as exc:
                    return failure_response(exc)

            return route

    return OpenAIRoute

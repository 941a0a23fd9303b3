"""The route class of the API: every failure of a handler is answered by
:func:`~ovis.serve.openai_errors.failure_response` (an OpenAI-style error body).

The body-size limit is not here: :class:`~ovis.serve.http_limits.HttpGuard` enforces it for every
route while the body streams in, before a handler reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from ovis.serve.openai_errors import failure_response


class OpenAIRoute(APIRoute):
    """An ``APIRoute`` whose failures are OpenAI errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return failure_response(exc)

        return route

"""OpenAI-style error bodies, ``{"error": {"message", "type", "param", "code"}}``, for every failure
of an API route: a refused request (its status), a body FastAPI could not parse or validate (400,
where FastAPI would answer 422), and anything else (500, logged; the server keeps serving)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ovis.serve.errors import RequestError

logger = logging.getLogger("ovis.serve.api")


class ApiError(RequestError):
    """A refusal with an OpenAI error ``type`` and ``code``."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message, status=status, param=param)
        self.code = code
        self.type = type


def error_payload(
    message: str, *, param: str | None = None, code: str | None = None, type: str = "invalid_request_error",
) -> dict[str, Any]:
    """The body of an error, also sent as an event when a stream fails after its status went out."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None,
    type: str = "invalid_request_error",
) -> JSONResponse:
    return JSONResponse(error_payload(message, param=param, code=code, type=type), status_code=status)


def refusal_response(exc: RequestError) -> JSONResponse:
    return error_response(
        exc.status, str(exc), param=exc.param, code=getattr(exc, "code", None),
        type=getattr(exc, "type", "invalid_request_error"),
    )


def failure_response(exc: Exception) -> JSONResponse:
    """What a route answers when its handler raised ``exc``."""
    if isinstance(exc, RequestError):
        return refusal_response(exc)
    if isinstance(exc, RequestValidationError):
        return _invalid_body_response(exc)
    if isinstance(exc, HTTPException):
        if isinstance(exc.__cause__, RequestError):  # FastAPI wraps errors from reading the body
            return refusal_response(exc.__cause__)
        return error_response(exc.status_code, str(exc.detail))
    # A bug or a failing model: answer 500 and keep serving.
    logger.error("the API request failed", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def _invalid_body_response(exc: RequestValidationError) -> JSONResponse:
    """Invalid JSON, or JSON that does not fit the schema: one 400 naming every field at fault."""
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

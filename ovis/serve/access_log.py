"""Structured access logs for ``ovis serve``: one JSON line per HTTP request.

Each line holds the time, method, path (without its query string), status, latency in
milliseconds and, where the API knows them, the prompt and completion token counts; optionally the
client address; and ``refused`` when the server's own limits answered (``body_too_large``,
``body_timeout``, ``request_timeout``, ``server_busy``, ``invalid_api_key``). It never holds message
text, images, headers or keys. For example::

    {"time": "2026-12-01T09:30:00.123Z", "method": "POST", "path": "/v1/chat/completions",
     "status": 200, "latency_ms": 412.7, "prompt_tokens": 51, "completion_tokens": 6}

The destination is ``--access-log``: ``-`` for standard error (the default), a file path (appended
to), or ``off``. A route tells the log its token counts with :func:`note_usage`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ovis.serve.http_limits import ASGIApp, Message, Receive, Scope, Send

_RECORD_KEY = "ovis.access"
#: ``access_log`` values that turn the log off
OFF = ("off", "none", "")

Usage = Callable[[], "tuple[int, int] | None"]


def note_usage(scope: Scope, usage: Usage) -> None:
    """Let the access log ask ``usage()`` for ``(prompt_tokens, completion_tokens)`` when the
    request ends (a stream knows its counts only then)."""
    record = scope.get(_RECORD_KEY)
    if record is not None:
        record["usage"] = usage


class AccessLog:
    """Where the lines go: standard error, a file, or a stream given by the caller."""

    def __init__(self, destination: str | Path | IO[str], *, client_address: bool = False) -> None:
        self.client_address = client_address
        self._lock = threading.Lock()
        if isinstance(destination, (str, Path)):
            if str(destination) == "-":
                self._stream: IO[str] = sys.stderr
                self._owned = False
            else:
                self._stream = open(destination, "a", encoding="utf-8", buffering=1)  # kept open until close()
                self._owned = True
        else:
            self._stream, self._owned = destination, False

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(", ", ": "))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()


class AccessLogMiddleware:
    """Time each HTTP request and write its line to ``log`` when it ends."""

    def __init__(self, app: ASGIApp, *, log: AccessLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record: dict[str, Any] = {"status": None}
        scope[_RECORD_KEY] = record

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            if record["status"] is None:
                record["status"] = 500  # what the server's error handler answers
            raise
        finally:
            self.log.write(self._entry(scope, record, started))

    def _entry(self, scope: Scope, record: dict[str, Any], started: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": scope["method"],
            "path": scope["path"],
            "status": record["status"],
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        usage = record.get("usage")
        counts = usage() if usage is not None else None
        if counts is not None:
            entry["prompt_tokens"], entry["completion_tokens"] = counts
        if scope.get("ovis.refused"):
            entry["refused"] = scope["ovis.refused"]
        if self.log.client_address and scope.get("client"):
            entry["client"] = scope["client"][0]
        return entry

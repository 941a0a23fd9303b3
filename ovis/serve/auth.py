"""The API key of ``ovis serve`` (``--api-key``, ``OVIS_API_KEY``): who may use the server.

* The API (``/v1/...``) wants ``Authorization: Bearer KEY``, as OpenAI's does (the ``openai`` client
  sends its ``api_key`` that way). Without it, or with another key, the answer is 401 with an
  OpenAI-style error body, before the request body is read.
* The web UI asks for a login (Gradio's): any user name, the key as the password; a session
  cookie keeps the browser logged in. :func:`gradio_login` is that check.
* ``/health`` stays open (load balancers probe it) but says only ``{"status": "ok"}`` to a caller
  without the key.

Keys are compared in constant time (:func:`hmac.compare_digest`), so response times do not tell an
attacker how much of a guess was right. This module imports neither torch nor a web framework.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from ovis.serve.http_limits import ASGIApp, Receive, Scope, Send, send_error

#: the environment variable ``ovis serve`` reads the key from when ``--api-key`` is not given
KEY_ENV = "OVIS_API_KEY"
PROTECTED_PREFIX = "/v1"


def key_matches(given: str | None, key: str) -> bool:
    """Whether ``given`` is ``key``, in time that does not depend on where they differ."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode("utf-8"))


def bearer_token(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if the request has one."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


def authorized(scope: Scope, key: str | None) -> bool:
    """Whether the request may use the server (always, when no key is set)."""
    return key is None or key_matches(bearer_token(scope), key)


def gradio_login(key: str) -> Callable[[str, str], bool]:
    """Gradio's ``auth`` callable: any user name, the key as the password."""

    def login(username: str, password: str) -> bool:
        return key_matches(password, key)

    return login


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class ApiKeyMiddleware:
    """Refuse ``/v1/...`` requests without ``Authorization: Bearer <key>`` (401, OpenAI-style)."""

    def __init__(self, app: ASGIApp, *, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_protected(scope["path"]) and not authorized(scope, self.key):
            given = bearer_token(scope) is not None
            scope["ovis.refused"] = "invalid_api_key"
            await send_error(
                send,
                401,
                "Incorrect API key provided"
                if given
                else "You didn't provide an API key: send it as 'Authorization: Bearer KEY' (the server's --api-key)",
                code="invalid_api_key" if given else "missing_api_key",
                headers=[(b"www-authenticate", b'Bearer realm="ovis"'), (b"connection", b"close")],
            )
            return
        await self.app(scope, receive, send)


def _is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")

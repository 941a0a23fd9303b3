"""The errors of serving that a user causes: a refused request, bad server options, bad settings.

Each is an :class:`~ovis.errors.OvisError` (the command line prints it as one line) and keeps the
``ValueError`` base callers may already catch. The HTTP front ends turn a :class:`RequestError` into
a 4xx answer; the others stop ``ovis serve`` / ``ovis run`` before anything is loaded or generated.
"""

from __future__ import annotations

from ovis.errors import ConfigError, OvisError


class RequestError(OvisError, ValueError):
    """A request the server refuses; ``status`` is the HTTP status code to answer with and
    ``param`` the request field at fault (OpenAI's ``error.param``), when one is."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class ServeOptionsError(ConfigError):
    """Server options that cannot work (a bad port, a limit out of range, nothing left to serve)."""


class GenerationSettingsError(ConfigError):
    """Generation settings that do not go together or are out of range (``temperature`` without
    sampling, a negative ``top_p``, an empty stop string...)."""

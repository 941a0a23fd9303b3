"""``ServeOptions``: everything :func:`ovis.serve.server.serve` is told, typed and checked.

The command line maps its flags onto these fields; Python callers build one directly::

    serve(ServeOptions(model_path="runs/quickstart/stage3/final", port=8000, ui=False))

Options that cannot work (a port out of range, a negative limit, neither UI nor API, an API key
with spaces) raise :class:`~ovis.serve.errors.ServeOptionsError` naming the field and the value,
before any model loads. The API key is a ``SecretStr``: printing the options does not show it, and an
error about it does not echo it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from ovis.serve.auth import is_loopback
from ovis.serve.errors import ServeOptionsError
from ovis.serve.http_limits import HttpLimits
from ovis.serve.limits import ServeLimits

#: the shortest API key accepted (a short key is guessed quickly, constant-time comparison or not)
MIN_KEY_LENGTH = 8


class ServeOptions(BaseModel):
    """The model to serve, where to listen, which front ends, how to batch and what requests may carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: Path = Field(description="a directory written by `ovis compose`, `ovis train` or `ovis quickstart`")
    host: str = Field("127.0.0.1", description="interface to bind; 127.0.0.1 is this machine only")
    port: int = Field(7860, ge=1, le=65535)
    model_name: str | None = Field(None, min_length=1, description="the id the API reports; None: the directory name")
    ui: bool = Field(True, description="serve the Gradio chat at /")
    api: bool = Field(True, description="serve the OpenAI-compatible API at /v1")
    device: str | None = Field(None, description="cuda, cuda:1, cpu...; None: CUDA when present")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16 (checked when the model loads)")
    max_batch_size: int = Field(16, ge=1, description="requests generated together")
    batch_window_ms: float = Field(10.0, ge=0, description="how long the first request waits for others")
    limits: ServeLimits = Field(default_factory=ServeLimits)
    flagging_dir: str | None = Field(None, description="where the UI stores flagged conversations; None: off")
    api_key: SecretStr | None = Field(None, description="the key /v1 and the web UI ask for; None: open to anyone")
    http: HttpLimits = Field(default_factory=HttpLimits)
    access_log: str | None = Field("-", description="JSON access log: '-' standard error, a file path, None: off")
    access_log_client: bool = Field(False, description="put the client address in the access log")

    @field_validator("api_key", mode="before")
    @classmethod
    def _a_usable_key(cls, key: object) -> object:
        # Checked here, not by Field constraints: pydantic's own message would repeat the key.
        text = key.get_secret_value() if isinstance(key, SecretStr) else key
        if isinstance(text, str):
            if len(text) < MIN_KEY_LENGTH:
                raise ValueError(f"the API key must be at least {MIN_KEY_LENGTH} characters, got {len(text)}")
            if not all("!" <= c <= "~" for c in text):
                raise ValueError("the API key must be printable ASCII without spaces (it travels in an HTTP header)")
        return key

    @field_validator("access_log", mode="before")
    @classmethod
    def _off_is_none(cls, destination: object) -> object:
        if isinstance(destination, str) and destination.strip().lower() in ("off", "none", ""):
            return None
        return destination

    @property
    def exposed_without_key(self) -> bool:
        """Bound beyond this machine with no key: anyone who can reach the port may use it."""
        return self.api_key is None and not is_loopback(self.host)

    def __init__(self, **options: Any) -> None:
        try:
            super().__init__(**options)
        except ValidationError as exc:
            raise ServeOptionsError(f"invalid server options: {_problems(exc)}") from exc

    @model_validator(mode="after")
    def _something_to_serve(self) -> ServeOptions:
        if not self.ui and not self.api:
            raise ValueError("ui and api are both off (--no-ui and --no-api together): nothing is left to serve")
        return self


def _problems(exc: ValidationError) -> str:
    """``port: Input should be less than or equal to 65535 (got 70000)``, one per bad field."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if where == "api_key":
            problems.append(f"{where}: {message}")  # never echo a key
        elif where:
            problems.append(f"{where}: {message} (got {error['input']!r})")
        else:
            problems.append(message)
    return "; ".join(problems)

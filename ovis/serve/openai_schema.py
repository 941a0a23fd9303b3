"""The request body of ``POST /v1/chat/completions``: OpenAI's fields this server reads, the ones it
refuses unless neutral, and the sampling settings a request asks for."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ovis.serve.errors import RequestError
from ovis.serve.generation import GenerationParams
from ovis.serve.limits import check_max_new_tokens
from ovis.serve.openai_errors import ApiError
from ovis.serve.service import Service


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
    # Numbers are strict, as OpenAI's API is: "10" is not 10, and "nan" not a temperature.
    max_tokens: int | None = Field(
        None, strict=True, description="deprecated by OpenAI in favour of max_completion_tokens"
    )
    max_completion_tokens: int | None = Field(None, strict=True)
    temperature: float | None = Field(None, strict=True, ge=0, le=2, description="absent or 0: greedy; > 0: sampling")
    top_p: float | None = Field(None, strict=True, gt=0, le=1, description="only when sampling")
    top_k: int | None = Field(None, strict=True, ge=-1, description="extension (vLLM); -1 or 0: off; when sampling")
    repetition_penalty: float | None = Field(None, strict=True, gt=0, description="extension (vLLM); 1: off")
    stop: str | list[str] | None = None
    # torch seeds are 64-bit: a larger one would fail deep in generation (a 500)
    seed: int | None = Field(None, strict=True, ge=-(2**63), lt=2**64, description="only when sampling")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="only 1")
    # Extensions (send them with the openai client's extra_body):
    max_partition: int | None = Field(None, strict=True, description="extension: tiled models only; tiles per image")
    num_frames: int | None = Field(None, strict=True, description="extension: frames taken from each video_url")
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

    @field_validator("max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                     "seed", "n", "top_logprobs", "presence_penalty", "frequency_penalty", "max_partition",
                     "num_frames", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # JSON true is not 1: pydantic would otherwise read `max_tokens: true` as one token.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


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

"""Request bodies of the OpenAI-compatible routes: strict types and bounds, OpenAI fields taken only where glactl can honour them.

A null field means its default. Unknown fields are refused (400), as OpenAI refuses them, so a typo never passes
silently; OpenAI fields that glactl cannot honour (penalties, logit_bias, best_of, suffix) are accepted at their
neutral values only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOKENS = 100_000
MAX_N = 16
MAX_STOPS = 4
MAX_CHOICES = 256  # prompts x n in one request
MAX_LOGPROBS = 5
SEED_BOUND = 2**63

# What a field takes, for the one-line error when a value fits none of its types.
FIELD_TYPES = {
    "prompt": "a string, a list of strings, a list of byte values 0..255 or a list of such lists",
    "stop": f"a string or a list of up to {MAX_STOPS} strings",
    "messages": 'a list of {"role": "system"|"user"|"assistant", "content": text}',
}


class _Strict(BaseModel):
    """Strict types (no "1" for 1, no true for 1), unknown fields refused, null read as the default."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """Fields completions and chat completions share: sampling, stops, streaming."""

    model: str | None = None
    max_tokens: int = Field(16, ge=0, le=MAX_TOKENS)
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1)  # extension
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False)  # extension
    n: int = Field(1, ge=1, le=MAX_N)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0, lt=SEED_BOUND)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored, as an end-user id
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] = Field(default_factory=dict)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stops(cls, stops: list[str]) -> list[str]:
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        return [s for s in stops if s]

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("not supported: use repetition_penalty (> 1 penalises bytes seen in the last 64)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float]) -> dict[str, float]:
        if value:
            raise ValueError("not supported")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(Sampling):
    """POST /v1/completions."""

    prompt: str | list[str] | list[int] | list[list[int]] = ""
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    session: str | None = None  # extension: continue from that session and store the state after into it
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list) -> str | list:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("an empty list holds no prompt")
        id_lists = [value] if isinstance(value[0], int) else [v for v in value if isinstance(v, list)]
        if any(not 0 <= i <= 255 for ids in id_lists for i in ids):
            raise ValueError("token ids are byte values 0..255")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("not supported (no fill-in-the-middle)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        return self

    def prompts(self) -> list[bytes]:
        """Each prompt as the bytes the model reads (after START or the session's text)."""
        value = self.prompt
        if isinstance(value, str):
            return [value.encode("utf-8")]
        if isinstance(value[0], int):
            return [bytes(value)]
        return [p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in value]


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    """POST /v1/chat/completions (no logprobs, tools or response formats)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("not available on chat completions: use /v1/completions with logprobs")
        return value

    @model_validator(mode="after")
    def _newer_name(self) -> ChatRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class SessionCreate(_Strict):
    """POST /v1/sessions with a JSON body: the text to read after the START (optional)."""

    text: str = ""

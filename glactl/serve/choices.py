"""One choice of a completion assembled from the engine's events: its text and its logprobs in /v1/completions' shape.

Tokens are bytes. A byte's token name is its character below 128, else "bytes:\\xNN" (OpenAI's name for a byte of
a character split across tokens). Logprobs cover exactly the bytes that made the released text, so a stop string's
bytes are left out like its text; a byte's text offset is the characters before it (its character's start).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from glactl.serve.jobs import Done, Token
from glactl.tokenizer import StreamDecoder


def token_name(byte: int) -> str:
    """A byte as OpenAI names a token: its character below 128, else "bytes:\\xNN"."""
    return chr(byte) if byte < 128 else f"bytes:\\x{byte:02x}"


def completion_logprobs(
    data: bytes, logprobs: list[float | None], tops: list[dict[int, float] | None] | None, offsets: list[int]
) -> dict[str, Any]:
    """The /v1/completions logprobs document {tokens, token_logprobs, top_logprobs, text_offset}; top_logprobs null without tops."""
    return {
        "tokens": [token_name(b) for b in data],
        "token_logprobs": list(logprobs),
        "top_logprobs": None if tops is None else [{token_name(b): lp for b, lp in (t or {}).items()} for t in tops],
        "text_offset": offsets,
    }


def char_offsets(data: bytes) -> list[int]:
    """Each byte's text offset: the characters decoded before it (a character's bytes share its start)."""
    decoder, offsets, chars = StreamDecoder(), [], 0
    for byte in data:
        offsets.append(chars)
        chars += len(decoder.feed(byte))
    return offsets


class ChoiceBuilder:
    """The text and logprobs of one choice as its Tokens arrive; `release` hands out the logprobs of each text piece."""

    def __init__(self, index: int, prompt: bytes, echo: bool, logprobs: int | None) -> None:
        self.index, self.prompt, self.echo, self.logprobs = index, prompt, echo, logprobs
        self.prompt_text = prompt.decode("utf-8", errors="replace") if echo else ""
        self.tokens: list[Token] = []
        self.decoder = StreamDecoder()
        self.chars_after: list[int] = []  # characters decoded after each sampled byte
        self.released = 0  # characters of completion text handed out
        self.covered = 0  # sampled bytes whose logprobs were handed out

    def add(self, token: Token) -> None:
        """Record one sampled byte."""
        self.tokens.append(token)
        before = self.chars_after[-1] if self.chars_after else 0
        self.chars_after.append(before + len(self.decoder.feed(token.byte)))

    def release(self, text: str) -> dict[str, Any] | None:
        """The logprobs of the bytes that made `text`, the next piece of completion text (None when not asked)."""
        self.released += len(text)
        end = min(bisect_left(self.chars_after, self.released) + 1, len(self.tokens)) if self.released else 0
        start, self.covered = self.covered, max(self.covered, end)
        return self._completion_logprobs(start, self.covered) if self.logprobs is not None else None

    def _completion_logprobs(self, start: int, end: int) -> dict[str, Any]:
        tokens = self.tokens[start:end]
        base = len(self.prompt_text)
        offsets = [base + (self.chars_after[i - 1] if i else 0) for i in range(start, end)]
        tops = [t.top for t in tokens] if self.logprobs else None
        return completion_logprobs(bytes(t.byte for t in tokens), [t.logprob for t in tokens], tops, offsets)

    def prompt_logprobs(self, done: Done) -> dict[str, Any]:
        """The echoed prompt's logprobs: every byte, the first conditioned on START (or the session's text)."""
        offsets = char_offsets(self.prompt)
        tops = (done.prompt_top or [None] * len(self.prompt)) if self.logprobs else None
        return completion_logprobs(self.prompt, done.prompt_logprobs or [None] * len(self.prompt), tops, offsets)

    def choice(self, done: Done) -> dict[str, Any]:
        """The whole choice of a non-streamed response."""
        logprobs = None
        if self.logprobs is not None:
            logprobs = self.release(done.text)
            if self.echo:
                prompt = self.prompt_logprobs(done)
                logprobs = {key: None if value is None else value + logprobs[key] for key, value in prompt.items()}
        return {
            "text": self.prompt_text + done.text,
            "index": self.index,
            "logprobs": logprobs,
            "finish_reason": done.finish_reason,
        }

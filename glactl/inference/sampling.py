"""Sampling: the parameters and logits processors (penalty, temperature, top-k, top-p) that draw each next byte.

Generation (inference/generation.py) and the commands that check sampling flags share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glactl.errors import InputError

REPETITION_WINDOW = 64  # bytes of context the repetition penalty looks at (llama.cpp's repeat_last_n)


# ---- parameters --------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    """How the next byte is drawn: temperature (0 = greedy), top-k, top-p, repetition penalty."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    repetition_window: int = REPETITION_WINDOW

    def validate(self) -> SamplingParams:
        """InputError (one line) for values no sampler accepts."""
        if not _finite(self.temperature) or self.temperature < 0:
            raise InputError(f"--temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1):
            raise InputError(f"--top-k must be a whole number >= 1, got {self.top_k}")
        if self.top_p is not None and (not _finite(self.top_p) or not 0.0 < self.top_p <= 1.0):
            raise InputError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InputError(f"--repetition-penalty must be > 0 (1 means none), got {self.repetition_penalty}")
        if self.repetition_window < 1:
            raise InputError(f"repetition window must be >= 1, got {self.repetition_window}")
        return self


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def check_positive(name: str, value: int | None, upper: int | None = None) -> None:
    """InputError unless `value` is a positive whole number (at most `upper`)."""
    if value is None or isinstance(value, bool) or int(value) != value or value < 1:
        raise InputError(f"{name} must be a positive whole number, got {value}")
    if upper is not None and value > upper:
        raise InputError(f"{name} must be at most {upper}, got {value}")


# ---- logits processors (HF transformers order: penalty, temperature, top-k, top-p) -----------
def apply_repetition_penalty(logits: torch.Tensor, recent: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on bytes seen in `recent` [B, W] (-1 = empty): positive logits / p, negative * p."""
    if penalty == 1.0:
        return logits
    vocab = logits.shape[-1]
    seen = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, torch.where(recent < 0, vocab, recent), True)  # empty slots land in the extra column
    seen = seen[:, :vocab]
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th value kept)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, int(k), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus: keep the smallest set of most probable bytes whose probability reaches p (at least one)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each byte
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def process_logits(logits: torch.Tensor, params: SamplingParams, recent: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, V] after penalty, temperature, top-k and top-p (float32; -inf where removed)."""
    logits = logits.float()
    if recent is not None:
        logits = apply_repetition_penalty(logits, recent, params.repetition_penalty)
    if params.temperature == 0:
        return logits
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    return apply_top_p(logits, params.top_p)


def next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    recent: torch.Tensor | None = None,
) -> torch.Tensor:
    """One byte per row [B]: argmax when temperature is 0, otherwise a draw from the processed distribution."""
    processed = process_logits(logits, params, recent)
    if params.temperature == 0:
        return processed.argmax(dim=-1)
    probs = torch.softmax(processed, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

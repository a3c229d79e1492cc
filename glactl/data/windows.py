"""Windows of token streams: random training windows chosen by a pure function of (seed, step), so a resumed run
draws the same ones and data-parallel ranks split a step's; fixed evaluation windows."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from glactl.errors import InputError


@dataclass
class Stream:
    """A token array plus the label used in messages."""

    label: str
    tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def step_generator(seed: int, step: int, salt: str = "batch") -> torch.Generator:
    """A generator seeded from (seed, step): batches are a pure function of both."""
    digest = hashlib.sha256(f"{salt}:{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class WindowSampler:
    """Random training windows of `seq_len + 1` bytes from weighted streams."""

    streams: list[Stream]
    weights: list[float]
    seq_len: int
    seed: int
    _probs: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        window = self.seq_len + 1
        for stream in self.streams:
            if len(stream) < window:
                raise InputError(
                    f"--data {stream.label}: {len(stream)} training bytes, shorter than one window "
                    f"of {window} (--seq-len {self.seq_len} + 1)"
                )
        total = sum(self.weights)
        self._probs = torch.tensor([w / total for w in self.weights], dtype=torch.float64)

    def windows(self, step: int, count: int) -> list[tuple[int, int]]:
        """The (stream, offset) pairs of a step: deterministic in (seed, step)."""
        g = step_generator(self.seed, step)
        if len(self.streams) == 1:
            which = torch.zeros(count, dtype=torch.long)
        else:
            which = torch.multinomial(self._probs, count, replacement=True, generator=g)
        u = torch.rand(count, generator=g, dtype=torch.float64)
        out = []
        for s, x in zip(which.tolist(), u.tolist()):
            span = len(self.streams[s]) - self.seq_len  # number of valid start offsets
            out.append((s, min(int(x * span), span - 1)))
        return out

    def batch(self, step: int, count: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [count, seq_len] for this rank: rank r takes windows r, r+world, ... of the step."""
        chosen = self.windows(step, count * world)[rank::world]
        return self.gather(chosen)

    def gather(self, chosen: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets [len(chosen), seq_len] for the given (stream, offset) windows."""
        return _gather(self.streams, chosen, self.seq_len)


def _gather(streams: list[Stream], chosen: list[tuple[int, int]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.stack([np.asarray(streams[s].tokens[o : o + seq_len + 1]) for s, o in chosen])
    data = torch.from_numpy(rows.astype(np.int64))
    return data[:, :-1], data[:, 1:]


def fixed_windows(streams: list[Stream], weights: list[float], count: int, seq_len: int) -> list[tuple[int, int]]:
    """Evaluation windows: evenly spaced, the same every time; shared among streams by weight (>= 1 each)."""
    window = seq_len + 1
    usable = [i for i, s in enumerate(streams) if len(s) >= window]
    if not usable:
        longest = max(len(s) for s in streams) if streams else 0
        raise InputError(
            f"validation data has {longest} bytes, shorter than one window of {window} (--seq-len {seq_len} + 1)"
        )
    total = sum(weights[i] for i in usable)
    shares = {i: max(1, round(count * weights[i] / total)) for i in usable}
    out = []
    for i, n in shares.items():
        span = len(streams[i]) - window
        n = min(n, span + 1)
        starts = np.linspace(0, span, n).round().astype(np.int64) if n > 1 else np.array([0])
        out.extend((i, int(o)) for o in starts)
    return out


def eval_batches(
    streams: list[Stream], chosen: list[tuple[int, int]], seq_len: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of fixed evaluation windows."""
    for start in range(0, len(chosen), batch_size):
        yield _gather(streams, chosen[start : start + batch_size], seq_len)

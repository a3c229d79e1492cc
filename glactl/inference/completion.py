"""Completion: the most probable continuations of a prefix up to a word, line or sentence boundary, by beam search over bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glactl.errors import InputError
from glactl.inference.compiled_step import stepper
from glactl.inference.reading import Reading, read
from glactl.inference.sampling import check_positive
from glactl.models.state import select_state
from glactl.runtime.threads import decoding_threads, torch_threads

UNTIL_MODES = ("word", "line", "sentence")
_WHITESPACE = b" \t\n\r\x0b\x0c"
_WORD_PUNCTUATION = b'.,;:!?"()[]{}'
_SENTENCE_END = b".!?"
_CLOSERS = b"\"')]}"


def _utf8_table() -> torch.Tensor:
    """next_state[state, byte] of a UTF-8 validator (-1 = invalid); state 0 = at a character boundary."""
    table = torch.full((8, 256), -1, dtype=torch.long)
    table[0, 0x00:0x80] = 0
    table[0, 0xC2:0xE0] = 1
    table[0, 0xE0] = 4
    table[0, 0xE1:0xED] = 2
    table[0, 0xED] = 5
    table[0, 0xEE:0xF0] = 2
    table[0, 0xF0] = 6
    table[0, 0xF1:0xF4] = 3
    table[0, 0xF4] = 7
    table[1, 0x80:0xC0] = 0
    table[2, 0x80:0xC0] = 1
    table[3, 0x80:0xC0] = 2
    table[4, 0xA0:0xC0] = 1
    table[5, 0x80:0xA0] = 1
    table[6, 0x90:0xC0] = 2
    table[7, 0x80:0x90] = 2
    return table


def _byte_mask(chars: bytes) -> torch.Tensor:
    mask = torch.zeros(256, dtype=torch.bool)
    mask[list(chars)] = True
    return mask


@dataclass(frozen=True)
class Completion:
    """One continuation: its text (boundary byte not included) and its total log-probability (nats)."""

    text: str
    logprob: float

    @property
    def probability(self) -> float:
        return math.exp(self.logprob)


class _Beams:
    """The live beams of a search, as parallel tensors plus their byte strings."""

    def __init__(
        self,
        texts: list[bytes],
        logp: torch.Tensor,
        utf8: torch.Tensor,
        chars: torch.Tensor,
        content: torch.Tensor,
        terminal: torch.Tensor,
    ) -> None:
        self.texts, self.logp, self.utf8, self.chars, self.content, self.terminal = (
            texts,
            logp,
            utf8,
            chars,
            content,
            terminal,
        )


def complete(
    model: torch.nn.Module,
    prefix: bytes,
    n: int = 5,
    beam: int | None = None,
    until: str = "word",
    max_chars: int = 40,
    threads: int | None = None,
    start: Reading | None = None,
) -> list[Completion]:
    """The n most probable distinct continuations of `prefix`, by beam search over bytes (docs/design.md §6).

    A continuation ends at the `until` boundary (that byte's probability counted, the byte not
    shown) or at `max_chars` characters. Ranking is by total probability, no length
    normalisation; paths to the same text add up. Leading whitespace never ends a continuation,
    and bytes that would make invalid UTF-8 are never taken. With `start`, the prefix is read after
    that reading instead of after START.
    """
    check_positive("--n", n, 1000)
    beam = 4 * n if beam is None else beam
    check_positive("--beam", beam, 4096)
    check_positive("--max-chars", max_chars, 100_000)
    if until not in UNTIL_MODES:
        raise InputError(f"--until must be one of {', '.join(UNTIL_MODES)}, got {until!r}")
    with torch.inference_mode(), torch_threads(decoding_threads(threads)):
        return _beam_search(model, read(model, bytes(prefix), start), n, beam, until, max_chars)


def _beam_search(
    model: torch.nn.Module, prefix_read: Reading, n: int, width: int, until: str, max_chars: int
) -> list[Completion]:
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    table = _utf8_table().to(device)
    space = _byte_mask(_WHITESPACE).to(device)
    newline = _byte_mask(b"\n\r").to(device)
    punct = _byte_mask(_WORD_PUNCTUATION).to(device)
    sentence_end = _byte_mask(_SENTENCE_END).to(device)
    closer = _byte_mask(_CLOSERS).to(device)

    logits, state = prefix_read.logits[None], prefix_read.state
    step_fn = stepper(model, width, 4 * max_chars + 1)  # beams as one batch, padded to the width when compiled
    zero = torch.zeros(1, dtype=torch.long, device=device)
    beams = _Beams(
        [b""],
        torch.zeros(1, dtype=torch.float64, device=device),
        zero.clone(),
        zero.clone(),
        torch.zeros(1, dtype=torch.bool, device=device),
        torch.zeros(1, dtype=torch.bool, device=device),
    )
    finished: dict[str, float] = {}

    def add(text: str, logp: float) -> None:
        old = finished.get(text)
        finished[text] = logp if old is None else max(old, logp) + math.log1p(math.exp(-abs(old - logp)))

    for _ in range(4 * max_chars + 1):
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        nxt = table[beams.utf8]  # [B, 256]
        scores = (beams.logp[:, None] + logprobs).masked_fill(nxt < 0, -math.inf)
        content = beams.content[:, None]
        if until == "word":
            boundary = content & (space | punct)[None, :]
        elif until == "line":
            boundary = content & newline[None, :]
        else:
            boundary = content & (newline[None, :] | (beams.terminal[:, None] & space[None, :]))
        # Finished at a boundary: one text per beam (the boundary byte is not shown), mass summed over boundary bytes.
        ended = scores.masked_fill(~boundary, -math.inf).logsumexp(dim=-1)
        for row in torch.nonzero(torch.isfinite(ended)).flatten().tolist():
            text = beams.texts[row].decode("utf-8")
            if until == "sentence" and not bool(beams.terminal[row]):
                text += "\n"  # a line that ends without . ! ?: the newline is the sentence's end, so it is shown
            add(text, float(ended[row]))
        scores = scores.masked_fill(boundary, -math.inf)
        char_done = nxt == 0
        new_chars = beams.chars[:, None] + char_done.long()
        at_max = char_done & (new_chars >= max_chars) & torch.isfinite(scores)
        if at_max.any():
            capped = scores.masked_fill(~at_max, -math.inf).flatten()
            values, flat = torch.topk(capped, min(n, int(at_max.sum())))
            for value, position in zip(values.tolist(), flat.tolist()):
                row, byte = divmod(position, 256)
                add((beams.texts[row] + bytes([byte])).decode("utf-8"), value)
            scores = scores.masked_fill(at_max, -math.inf)
        flat_scores = scores.flatten()
        alive = int(torch.isfinite(flat_scores).sum())
        if alive == 0:
            break
        values, flat = torch.topk(flat_scores, min(width, alive))
        rows, chosen = flat // 256, flat % 256
        if len(finished) >= n:
            nth_best = sorted(finished.values(), reverse=True)[n - 1]
            if float(values[0]) < nth_best:
                break  # no live beam can still beat the n-th completion
        texts = [beams.texts[r] + bytes([b]) for r, b in zip(rows.tolist(), chosen.tolist())]
        beams = _Beams(
            texts,
            values,
            nxt[rows, chosen],
            new_chars[rows, chosen],
            beams.content[rows] | ~space[chosen],
            sentence_end[chosen] | (beams.terminal[rows] & closer[chosen]),
        )
        state = select_state(state, rows)
        logits, state = step_fn(chosen, state)

    ranked = sorted(finished.items(), key=lambda item: item[1], reverse=True)[:n]
    return [Completion(text, logp) for text, logp in ranked]

"""Sampling: logits processors, streaming generation in constant memory, beam-search completion over bytes.

The prompt is read in one forward call (the chunk form for GLA), then each new byte is one
`model.step` over the batch of samples, so nothing grows with the length of the output.
A prompt is always read after a "\\n" (a byte-level start-of-text), as perplexity scores do.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from glactl.errors import InputError
from glactl.inference.precision import stepper
from glactl.inference.reading import START, Reading, extend_tail, next_logits, read
from glactl.models.state import expand_state, select_state
from glactl.tokenizer import StreamDecoder

REPETITION_WINDOW = 64  # bytes of context the repetition penalty looks at (llama.cpp's repeat_last_n)
MAX_SAMPLES = 1024


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


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with `threads` intra-op threads (None = leave as is), restoring the count after.

    Byte-by-byte steps of these models are too small to share between threads: a second
    thread only adds synchronisation (5x slower on a busy 2-core machine), so decoding uses
    one thread unless the caller asks for more.
    """
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- stop strings --------------------------------------------------------------------------
class StopMatcher:
    """Cuts a stream of text before the first stop string in it (stop string not shown), however the text arrives.

    Text that may begin a stop string is held back. A stop string that has appeared ends the sample
    only once no stop string that would begin earlier can still complete (stops "c" and "aca": after
    "ac" the matcher waits for one more character), so the cut is the same whether the text comes
    character by character or in one piece.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.done = False

    def feed(self, text: str) -> str:
        """Add decoded text; return what is safe to show now."""
        if self.done or not text:
            return ""
        if not self.stops:
            return text
        self.pending += text
        hit = self._first_stop()
        still_open = self._first_open_start()
        if hit is not None and still_open >= hit:
            return self._finish(hit)
        out, self.pending = self.pending[:still_open], self.pending[still_open:]
        return out

    def flush(self) -> str:
        """What is still held back at the end of generation (cut before a stop string found in it)."""
        if self.done:
            return ""
        hit = self._first_stop()
        if hit is not None:
            return self._finish(hit)
        out, self.pending = self.pending, ""
        return out

    def _first_stop(self) -> int | None:
        """Where the earliest complete stop string in the held text begins, or None."""
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _first_open_start(self) -> int:
        """Where the earliest unfinished stop string may begin: the held text's longest suffix that is a proper
        prefix of a stop string starts there (len(pending) when there is none)."""
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:k]):
                    hold = k
                    break
        return len(self.pending) - hold

    def _finish(self, cut: int) -> str:
        out, self.pending, self.done = self.pending[:cut], "", True
        return out


# ---- generation ----------------------------------------------------------------------------
def model_context(prompt: bytes) -> bytes:
    """The bytes a model reads for a prompt: exactly one START first, whatever the prompt's first byte (docs/design.md §2)."""
    return START + prompt


@dataclass
class GenerationStats:
    """What a finished generation reports."""

    tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    state_bytes: int = 0
    seed: int | None = None
    samples: list[str] = field(default_factory=list)
    sample_bytes: list[bytes] = field(default_factory=list)  # every sampled byte, stop string included

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Generation:
    """Iterate for (sample index, text) pieces as bytes are produced; `stats` is complete afterwards.

    All samples run as one batch; a sample that meets a stop string leaves the batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        prompt: bytes,
        max_new_tokens: int = 500,
        params: SamplingParams = SamplingParams(),
        num_samples: int = 1,
        seed: int | None = None,
        stop: Sequence[str] = (),
        keep_text: bool = True,
        threads: int | None = 1,
        start: Reading | None = None,
        keep_state: bool = False,
    ) -> None:
        check_positive("--max-new-tokens", max_new_tokens)
        check_positive("--num-samples", num_samples, MAX_SAMPLES)
        if keep_state and num_samples != 1:
            raise InputError("saving the state after generation needs --num-samples 1")
        self.model = model
        self.prompt = bytes(prompt)
        self.max_new_tokens = int(max_new_tokens)
        self.params = params.validate()
        self.num_samples = int(num_samples)
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(8), "little") % (2**63)
        self.stop = list(stop)
        self.keep_text = keep_text
        self.threads = threads
        self.stats = GenerationStats(seed=self.seed)
        self.start = start  # continue after this reading instead of after START (never changed)
        self.keep_state = keep_state
        # What sample 0 has read so far: (model state, next-byte logits, byte sampled but not yet read,
        # bytes generated, the last TAIL_BYTES bytes read), after the prompt's reading `_prompt_read`.
        self._live: tuple | None = None
        self._prompt_read: Reading | None = None

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with torch.inference_mode(), torch_threads(self.threads):
            yield from self._run()

    def _run(self) -> Iterator[tuple[int, str]]:
        model, params, batch = self.model, self.params, self.num_samples
        device = model.device if hasattr(model, "device") else torch.device("cpu")
        generator = torch.Generator(device=device).manual_seed(self.seed)
        pieces: list[list[str]] = [[] for _ in range(batch)]
        raw = [bytearray() for _ in range(batch)]
        decoders = [StreamDecoder() for _ in range(batch)]
        stoppers = [StopMatcher(self.stop) for _ in range(batch)]
        window = params.repetition_window
        recent = torch.full((batch, window), -1, dtype=torch.long, device=device)

        start = time.perf_counter()
        prompt_read = read(model, self.prompt, self.start)  # START + prompt, or the prompt after the given reading
        tail = torch.tensor(list(prompt_read.tail[-window:]), dtype=torch.long, device=device)
        recent[:, : tail.numel()] = tail
        slot = tail.numel() % window
        logits, state = prompt_read.logits[None].expand(batch, -1), prompt_read.state
        state = expand_state(state, batch) if batch > 1 else state
        if self.keep_state:
            self._prompt_read = prompt_read
            self._live = (state, logits, None, 0, prompt_read.tail)
        self.stats.prompt_tokens = len(self.prompt) + (len(START) if self.start is None else 0)
        self.stats.state_bytes = model.state_nbytes(state)
        active = list(range(batch))  # sample index of each batch row
        step_fn = stepper(model, batch, self.max_new_tokens)  # model.step, compiled where --compile says so
        for step in range(self.max_new_tokens):
            use_recent = recent if params.repetition_penalty != 1.0 else None
            tokens = next_tokens(logits, params, generator, use_recent)
            if self._live is not None:  # sampled, not yet read: one tuple store, so a Ctrl-C never sees half of it
                self._live = (
                    state,
                    logits,
                    tokens,
                    self._live[3] + 1,
                    extend_tail(self._live[4], bytes(tokens.tolist())),
                )
            recent[:, slot] = tokens
            slot = (slot + 1) % window
            self.stats.tokens += len(active)
            keep: list[int] = []
            for row, (sample, token) in enumerate(zip(active, tokens.tolist())):
                if self.keep_text:
                    raw[sample].append(token)
                text = stoppers[sample].feed(decoders[sample].feed(token))
                if text:
                    if self.keep_text:
                        pieces[sample].append(text)
                    yield sample, text
                if not stoppers[sample].done:
                    keep.append(row)
            if len(keep) < len(active):
                if not keep:
                    break
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                state, tokens, recent = select_state(state, rows), tokens[rows], recent[rows]
                active = [active[r] for r in keep]
            if step + 1 < self.max_new_tokens:
                logits, state = step_fn(tokens, state)
                if self._live is not None:
                    self._live = (state, logits, None, *self._live[3:])
        self.stats.state_bytes = max(self.stats.state_bytes, model.state_nbytes(state))
        for sample in range(batch):
            text = stoppers[sample].feed(decoders[sample].flush()) + stoppers[sample].flush()
            if text:
                if self.keep_text:
                    pieces[sample].append(text)
                yield sample, text
        self.stats.seconds = time.perf_counter() - start
        self.stats.samples = ["".join(p) for p in pieces]
        self.stats.sample_bytes = [bytes(r) for r in raw]

    def reading(self) -> Reading | None:
        """What sample 0 has read so far (the prompt and every byte generated, stop string included), or None.

        Works after the generation ends and after it was interrupted (Ctrl-C, a closed pipe):
        the last sampled byte is read here if the loop had not read it yet. Needs keep_state=True.
        """
        if self._live is None:
            return None
        state, logits, pending, generated, tail = self._live
        if pending is not None:
            with torch.inference_mode(), torch_threads(self.threads):
                logits, state = self.model.step(pending, state)
        assert self._prompt_read is not None
        return Reading(state, next_logits(logits[0]), self._prompt_read.bytes_read + generated, tail)


def generate(model: torch.nn.Module, prompt: bytes, **kwargs) -> GenerationStats:
    """Run a generation to the end; the texts are in `.samples`."""
    run = Generation(model, prompt, **kwargs)
    for _ in run:
        pass
    return run.stats


# ---- beam-search completion ----------------------------------------------------------------
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
    threads: int | None = 1,
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
    with torch.inference_mode(), torch_threads(threads):
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

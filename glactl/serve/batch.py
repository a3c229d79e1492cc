"""The engine's rows: one job's prompt read chunk by chunk and its bytes sampled with its own generator, and the
decode batch the rows share (one batch-first state in the model's decode form, where rows at different positions
step together, or row by row where a state holds a shared position: an unlimited attention cache)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from glactl.api.prompts import MAX_PROMPT_BYTES
from glactl.errors import InputError
from glactl.inference.reading import START, Reading, extend_tail, next_logits, read_piece
from glactl.inference.sampling import SamplingParams, next_tokens
from glactl.inference.stops import StopMatcher
from glactl.models.state import cat_states, select_state
from glactl.serve.jobs import Job, Stream
from glactl.tokenizer import StreamDecoder

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
MAX_LOGPROBS = 5


def shares_batch(state: Any) -> bool:
    """Whether rows with states like this one can step as one batch: every leaf a tensor with a batch dim (or None)."""
    if isinstance(state, dict):
        return all(shares_batch(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(shares_batch(v) for v in state)
    return state is None or (isinstance(state, torch.Tensor) and state.dim() > 0)


def byte_logprobs(logits: torch.Tensor, targets: bytes, top: int) -> tuple[list[float], list[dict[int, float]]]:
    """log p of each target byte under logits [T, V] (temperature 1, nothing removed; perplexity's arithmetic), and
    the `top` most probable bytes of each position (an empty list when top is 0)."""
    logprobs = torch.log_softmax(next_logits(logits), dim=-1)
    index = torch.tensor(list(targets), dtype=torch.long, device=logits.device)[:, None]
    chosen = logprobs.gather(-1, index)[:, 0].double().tolist()
    if not top:
        return chosen, []
    values, bytes_ = torch.topk(logprobs, top, dim=-1)
    return chosen, [dict(zip(b, v)) for b, v in zip(bytes_.tolist(), values.double().tolist())]


def check_job(job: Job, vocab: int) -> int:
    """InputError (one line) for a value no job accepts; returns the seed to use (drawn when None)."""
    if not isinstance(job.prompt, (bytes, bytearray)):
        raise InputError(f"prompt must be bytes, got {type(job.prompt).__name__}")
    if len(job.prompt) > MAX_PROMPT_BYTES:
        raise InputError(f"prompt is {len(job.prompt):,} bytes; at most {MAX_PROMPT_BYTES:,}")
    if not _whole(job.max_tokens) or job.max_tokens < 0:
        raise InputError(f"max_tokens must be a whole number >= 0, got {job.max_tokens!r}")
    if not isinstance(job.params, SamplingParams):
        raise InputError("params must be SamplingParams")
    job.params.validate()
    if job.seed is not None and not (_whole(job.seed) and 0 <= job.seed < 2**63):
        raise InputError(f"seed must be a whole number in [0, 2^63), got {job.seed!r}")
    if not isinstance(job.stop, (list, tuple)) or not all(isinstance(s, str) for s in job.stop):
        raise InputError("stop must be a list of strings")
    if job.logprobs is not None and not (_whole(job.logprobs) and 0 <= job.logprobs <= MAX_LOGPROBS):
        raise InputError(f"logprobs must be a whole number from 0 to {MAX_LOGPROBS}, got {job.logprobs!r}")
    if job.start is not None and (not isinstance(job.start, Reading) or tuple(job.start.logits.shape) != (vocab,)):
        raise InputError("start must be a Reading of this model")
    return job.seed if job.seed is not None else int.from_bytes(os.urandom(8), "little") % 2**63


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Row:
    """One job in the engine (checked: InputError for bad values): the prompt bytes still to read, what it has read,
    and its sampler and text.

    Sampling is the library's (`next_tokens`, `StopMatcher`, `StreamDecoder`) on this row's logits alone,
    with its own generator, parameters and repetition window, so its bytes do not depend on other rows.
    """

    def __init__(self, job: Job, stream: Stream, model: Any) -> None:
        seed = check_job(job, model.config.vocab_size)
        self.job, self.stream = job, stream
        self.submitted = time.perf_counter()
        self.first_token_seconds: float | None = None  # from submit to the first sampled byte
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.decoder, self.stopper = StreamDecoder(), StopMatcher(job.stop)
        self.feed, self.position = b"", 0  # the bytes to read for the prompt (START first when start is None)
        self.reading: Reading | None = None  # what has been read so far (the prompt's reading once it is all read)
        self.prompt_logprobs: list[float] | None = [] if job.prompt_logprobs else None
        self.prompt_top: list[dict[int, float]] | None = [] if job.prompt_logprobs and job.logprobs else None
        self.generated = bytearray()
        self.text: list[str] = []
        self.logits: torch.Tensor | None = None  # next-byte logits while decoding (None while a byte is pending)
        self.pending: int | None = None  # the byte sampled last, not yet read by the model
        self.state: Any = None  # this row's own decode state while it is outside a shared batch
        self.finish: str | None = None  # why it ends, once it does

    @property
    def prompt_tokens(self) -> int:
        """Bytes of the prompt, START counted when the job does not continue a reading."""
        return len(self.job.prompt) + (len(START) if self.job.start is None else 0)

    def begin(self, reading: Reading | None, rest: bytes) -> None:
        """Start reading `rest` after `reading` (None: after nothing, so `rest` begins with START)."""
        self.reading, self.feed, self.position = reading, rest, 0
        self._maybe_decode()

    @property
    def reading_prompt(self) -> bool:
        return self.logits is None and self.pending is None and self.finish is None

    def read_chunk(self, model: torch.nn.Module, size: int) -> None:
        """Read the next `size` prompt bytes (the parallel form, state carried), scoring them if the job asks."""
        before = self.reading
        piece = self.feed[self.position : self.position + size]
        self.position += len(piece)
        self.reading, logits = read_piece(model, piece, before)
        if self.prompt_logprobs is not None:
            scored = logits[:-1] if before is None else torch.cat((before.logits[None].to(logits.dtype), logits[:-1]))
            chosen, top = byte_logprobs(scored, piece[1:] if before is None else piece, self.job.logprobs or 0)
            self.prompt_logprobs += chosen
            if self.prompt_top is not None:
                self.prompt_top += top
        self._maybe_decode()

    def _maybe_decode(self) -> None:
        """Once the prompt is read: decode from its reading, or end at once when no byte is asked for."""
        if self.reading is None or self.position < len(self.feed):
            return
        if self.job.max_tokens == 0:
            self.finish = "length"
        else:
            self.logits, self.state = self.reading.logits, self.reading.state

    def sample(self) -> tuple[str, int, float | None, dict[int, float] | None]:
        """Draw the next byte from this row's logits: (text released, byte, its log-probability, top alternatives)."""
        assert self.logits is not None and self.reading is not None
        if self.first_token_seconds is None:
            self.first_token_seconds = time.perf_counter() - self.submitted
        job, params = self.job, self.job.params
        recent = None
        if params.repetition_penalty != 1.0:
            window = (self.reading.tail + bytes(self.generated))[-params.repetition_window :]
            recent = torch.tensor([list(window)], dtype=torch.long, device=self.logits.device)
        byte = int(next_tokens(self.logits[None], params, self.generator, recent)[0])
        logprob = top = None
        if job.logprobs is not None:
            chosen, tops = byte_logprobs(self.logits[None], bytes([byte]), job.logprobs)
            logprob, top = chosen[0], (tops[0] if tops else None)
        self.generated.append(byte)
        self.logits, self.pending = None, byte
        text = self.stopper.feed(self.decoder.feed(byte))
        if not self.stopper.done and len(self.generated) == job.max_tokens:
            text += self.stopper.feed(self.decoder.flush()) + self.stopper.flush()
        if self.stopper.done or len(self.generated) == job.max_tokens:
            self.finish = "stop" if self.stopper.done else "length"
        self.text.append(text)
        return text, byte, logprob, top

    def final_reading(self, state: Any) -> Reading:
        """The reading after the prompt and every generated byte (all read: no byte pending)."""
        assert self.reading is not None and self.logits is not None and self.pending is None
        return Reading(
            state,
            self.logits.clone(),
            self.reading.bytes_read + len(self.generated),
            extend_tail(self.reading.tail, bytes(self.generated)),
        )


class DecodeBatch:
    """The decoding rows' states: one batch-first state stepped by one call (a row joins by concatenation, in the
    model's decode form, and leaves by select_state), or each row on its own where states hold a shared position
    (an unlimited attention cache)."""

    def __init__(self, step: Step, shared: bool, decode_form: Callable[[Any], Any] | None = None) -> None:
        self.step_fn, self.shared = step, shared
        self.decode_form = decode_form  # a row's state as the shared batch holds it (LanguageModel.decode_state)
        self.rows: list[Row] = []
        self.state: Any = None

    def step(self, rows: list[Row], device: torch.device) -> None:
        """Read each row's pending byte: every row gets the logits for its next byte."""
        if not self.shared:
            for row in rows:
                logits, row.state = self.step_fn(torch.tensor([row.pending], device=device), row.state)
                row.logits, row.pending = next_logits(logits[0]), None
            return
        for row in rows:
            if row.state is not None:  # a new row joins
                joining = self.decode_form(row.state) if self.decode_form is not None else row.state
                self.state = joining if self.state is None else cat_states([self.state, joining])
                self.rows.append(row)
                row.state = None
        assert len(rows) == len(self.rows), "every row of a shared batch steps"
        tokens = torch.tensor([row.pending for row in self.rows], dtype=torch.long, device=device)
        logits, self.state = self.step_fn(tokens, self.state)
        logits = next_logits(logits)
        for i, row in enumerate(self.rows):
            row.logits, row.pending = logits[i], None

    def state_of(self, row: Row) -> Any:
        """The state (batch of one) of a row."""
        if not self.shared or row not in self.rows:
            return row.state
        return select_state(self.state, torch.tensor([self.rows.index(row)]))

    def leave(self, rows: list[Row]) -> None:
        """Drop rows from the batch (finished or cancelled)."""
        for row in rows:
            row.state = None
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.state = select_state(self.state, torch.tensor(keep)) if keep else None

"""The serving engine: one scheduler thread owns the model and runs every job as a row of one continuous batch.

Each iteration admits queued jobs, reads one `prompt_chunk` of every prompt still being read (so a long prompt
never stalls the others for more than a chunk), then steps all decoding rows as one batch and samples each row
with its own generator (glactl/serve/batch.py). The HTTP layer (glactl/serve/app.py) submits jobs and reads streams.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import torch

from glactl.errors import RunFailure
from glactl.inference.compiled_step import COMPILE_MIN_STEPS, stepper
from glactl.inference.reading import START, Reading, copy_reading
from glactl.inference.sampling import SamplingParams, check_positive
from glactl.runtime.threads import decoding_threads, torch_threads
from glactl.serve.batch import DecodeBatch, Row, shares_batch
from glactl.serve.jobs import Done, Job, Stream, Token
from glactl.serve.prefix_cache import PrefixCache


class Engine:
    """Continuous batching over one model: submit jobs from any thread, read their streams."""

    def __init__(
        self, model: Any, max_batch: int = 16, prompt_chunk: int = 4096, prefix_cache_bytes: int = 256 << 20
    ) -> None:
        check_positive("max_batch", max_batch)
        check_positive("prompt_chunk", prompt_chunk)
        self.model = model
        self.max_batch, self.prompt_chunk = int(max_batch), int(prompt_chunk)
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self._batch = self._new_batch()
        self._queue: deque[Row] = deque()
        self._rows: list[Row] = []  # admitted: reading their prompts or decoding (scheduler thread only)
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._counts = {"requests": 0, "generated_bytes": 0, "batch_size": 0, "step_seconds": 0.0, "steps": 0}

    def _new_batch(self) -> DecodeBatch:
        """One batch state where the model's states allow (--compile's step for max_batch rows), else row by row."""
        module = self.model.model
        decode_form = getattr(module, "decode_state", None)  # windowed attention: a preallocated window per row
        if shares_batch(decode_form(module.init_state(1)) if decode_form is not None else module.init_state(1)):
            return DecodeBatch(stepper(module, self.max_batch, COMPILE_MIN_STEPS), True, decode_form)
        return DecodeBatch(module.step, False)

    # ---- the public side (any thread) ----------------------------------------------------------
    def prepare(self) -> None:
        """Load or compile the batch's decode step now (--compile), not on the first request; seconds on a first run."""
        prepare = getattr(self._batch.step_fn, "prepare", None)  # a CompiledStep; the eager step needs nothing
        if prepare is not None:
            prepare(self.model.model.init_state(1))

    def start(self) -> None:
        """Start the scheduler thread (once)."""
        with self._wake:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="glactl-serve-engine", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the scheduler; queued and running jobs end with Done("cancelled")."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        else:
            self._cancel_all()

    def submit(self, job: Job) -> Stream:
        """Check the job (InputError for bad values) and queue it; never waits for the model."""
        stream = Stream()
        row = Row(job, stream, self.model)
        with self._wake:
            if self._closed:
                raise RunFailure("the engine is closed")
            self._queue.append(row)
            self._counts["requests"] += 1
            self._wake.notify_all()
        return stream

    def read(self, text: bytes, start: Reading | None = None) -> Reading:
        """The reading after `text` (after `start`, or after START): a job with no bytes to sample.

        Kept out of the prefix cache: a session's reading lives in the session store, not twice in memory.
        """
        job = Job(bytes(text), 0, SamplingParams(), start=start, keep_reading=True, use_prefix_cache=False)
        done = self.submit(job).result()
        if done.reading is None:
            raise RunFailure("the engine closed before the text was read")
        return done.reading

    @property
    def stats(self) -> dict[str, float]:
        """requests, generated_bytes, queue_depth, active_streams, batch_size and step_seconds (last step), steps."""
        return {**self._counts, "queue_depth": len(self._queue), "active_streams": len(self._rows)}

    # ---- the scheduler thread ------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode(), torch_threads(decoding_threads(self.model.threads)):
            while self._wait_for_work():
                try:
                    self._iterate()
                except Exception as e:  # noqa: BLE001 - a failed step ends its jobs, never the scheduler
                    for row in self._rows:
                        row.stream._put(RunFailure(f"the model failed: {type(e).__name__}: {e}"))
                    self._rows, self._batch = [], self._new_batch()
        self._cancel_all()

    def _wait_for_work(self) -> bool:
        with self._wake:
            while not (self._closed or self._queue or self._rows):
                self._wake.wait()
            return not self._closed

    def _iterate(self) -> None:
        """One scheduler iteration: admit, drop cancelled rows, one prompt chunk per reading row, one batched step, sample."""
        self._admit()
        self._end([row for row in self._rows if row.stream.cancelled], "cancelled")
        for row in [row for row in self._rows if row.reading_prompt]:
            try:
                row.read_chunk(self.model.model, self.prompt_chunk)
            except Exception as e:  # noqa: BLE001 - this prompt fails (memory, say); the other rows go on
                row.stream._put(RunFailure(f"reading the prompt failed: {type(e).__name__}: {e}"))
                self._rows.remove(row)
                continue
            if not row.reading_prompt and row.job.start is None and row.job.use_prefix_cache:
                self.prefix_cache.keep(row.job.prompt, row.reading)
        stepping = [row for row in self._rows if row.pending is not None]
        if stepping:
            began = time.perf_counter()
            self._batch.step(stepping, self.model.device)
            self._counts.update(batch_size=len(stepping), step_seconds=time.perf_counter() - began)
            self._counts["steps"] += 1
        self._end([row for row in self._rows if row.finish and row.pending is None])
        for row in self._rows:
            if row.logits is not None and row.finish is None:
                row.stream._put(Token(*row.sample()))
                self._counts["generated_bytes"] += 1
        self._end([row for row in self._rows if row.finish and not row.job.keep_reading])

    def _admit(self) -> None:
        """Move queued jobs into the batch (up to max_batch rows); jobs cancelled while queued end here."""
        with self._wake:
            queued = list(self._queue)
            self._queue.clear()
        waiting = []
        for row in queued:
            if row.stream.cancelled:
                row.stream._put(_done(row, "cancelled"))
            elif len(self._rows) < self.max_batch:
                self._rows.append(row)
                self._begin(row)
            else:
                waiting.append(row)
        with self._wake:
            self._queue.extendleft(reversed(waiting))

    def _begin(self, row: Row) -> None:
        """Where a row's reading begins: its start, the longest prompt prefix the cache keeps, or START."""
        job = row.job
        if job.start is not None:
            row.begin(copy_reading(job.start), job.prompt)
            return
        hit = self.prefix_cache.longest(job.prompt) if job.use_prefix_cache and not job.prompt_logprobs else None
        if hit is None:
            row.begin(None, START + job.prompt)
        else:
            row.begin(hit[1], job.prompt[hit[0] :])

    def _end(self, rows: list[Row], reason: str | None = None) -> None:
        """Finish these rows (with `reason`, else their own) and let them leave the batch."""
        if not rows:
            return
        events = []
        for row in rows:
            why = reason or row.finish or "length"
            reading = None
            if why != "cancelled" and row.job.keep_reading:
                reading = row.final_reading(self._batch.state_of(row)) if row.generated else row.reading
            events.append(_done(row, why, reading))
        self._batch.leave(rows)
        gone = {id(row) for row in rows}
        self._rows = [row for row in self._rows if id(row) not in gone]
        for row, event in zip(rows, events):  # after the rows left: whoever reads a Done sees the stats without them
            row.stream._put(event)

    def _cancel_all(self) -> None:
        with self._wake:
            rows = self._rows + list(self._queue)
            self._rows, self._queue = [], deque()
        for row in rows:
            row.stream._put(_done(row, "cancelled"))


def _done(row: Row, reason: str, reading: Reading | None = None) -> Done:
    """The Done event of a row."""
    return Done(
        reason,
        "".join(row.text),
        row.prompt_tokens,
        len(row.generated),
        row.prompt_logprobs,
        row.prompt_top,
        reading,
        time.perf_counter() - row.submitted,
        row.first_token_seconds,
    )

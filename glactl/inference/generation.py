"""Streaming generation in constant memory: sampled bytes, stop strings and stats for a batch of samples.

The prompt is read in one forward call (the chunk form for GLA), then each new byte is one
`model.step` over the batch of samples, so nothing grows with the length of the output.
A prompt is always read after a "\\n" (a byte-level start-of-text), as perplexity scores do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from glactl.errors import InputError
from glactl.inference.compiled_step import stepper
from glactl.inference.reading import START, Reading, extend_tail, next_logits, read
from glactl.inference.sampling import SamplingParams, check_positive, next_tokens
from glactl.inference.stops import StopMatcher
from glactl.models.state import expand_state, select_state
from glactl.runtime.threads import decoding_threads, torch_threads
from glactl.tokenizer import StreamDecoder

MAX_SAMPLES = 1024


def model_context(prompt: bytes) -> bytes:
    """The bytes a model reads for a prompt: exactly one START first, whatever the prompt's first byte (docs/design.md §2)."""
    return START + prompt


@dataclass
class GenerationStats:
    """What a finished generation reports."""

    tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0  # reading the prompt and generating; a compile of the decode step is not counted
    compile_seconds: float = 0.0  # spent compiling the decode step in this run (0 when eager or already compiled)
    compiled: bool = False  # whether the decode steps ran a compiled package (--compile)
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
        threads: int | None = None,
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
        self.threads = decoding_threads(threads)  # None: the decoding rule's count
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
        compiled_before = getattr(step_fn, "compile_seconds", 0.0)
        if self.max_new_tokens > 1 and hasattr(step_fn, "prepare"):
            step_fn.prepare(state)  # compile (or load) now: its note comes before any text, its time is left out
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
        self.stats.compile_seconds = getattr(step_fn, "compile_seconds", 0.0) - compiled_before
        self.stats.compiled = bool(getattr(step_fn, "ran_compiled", False))
        self.stats.seconds = time.perf_counter() - start - self.stats.compile_seconds
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

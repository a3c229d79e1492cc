"""The Python API: `glactl.load(...)` returns a Model with .generate, .stream, .complete, .perplexity and .info.

The command-line tool is a thin layer over this module, so both behave alike:

    import glactl
    model = glactl.load("runs/my-run")            # or a checkpoint folder, or a shipped name
    print(model.generate("The history of", max_new_tokens=200, seed=0))
    for c in model.complete("The history of", n=5):
        print(c.text, c.probability)
    print(model.perplexity(path="wiki.test.raw")["bits_per_byte"])  # a str is a text; a file is path= or a Path

A long prompt is read once and reused (docs/design.md §5): `state = model.read(book)`, `state.save("book.state")`,
`model.load_state("book.state")`, and `state=` on generate, stream, complete and perplexity; a call
never changes the caller's state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from glactl.api.describe import describe
from glactl.api.prompts import read_text, text_source
from glactl.errors import InputError


class Model:
    """A loaded language model and the operations people run on it."""

    def __init__(
        self,
        model: Any,
        document: dict[str, Any],
        device: torch.device,
        threads: int | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.document = document
        self.device = device
        self.threads = threads  # None: the decoding rule (runtime/threads.py decoding_threads)
        self.name = name  # as loaded: a shipped name or the folder as given (saved states record it)
        self.calibration: Any = None  # what --precision auto measured or found cached here (inference/calibration.py)
        self._owner: Any = None  # the StateOwner of saved states, computed on first use (hashes the checkpoint)

    @property
    def path(self) -> str:
        """The checkpoint folder the weights came from."""
        return str(self.document.get("path", ""))

    @property
    def config(self) -> Any:
        return self.model.config

    def __repr__(self) -> str:
        return f"glactl.Model({self.path!r}, mixer={self.config.mixer!r}, device={str(self.device)!r})"

    # ---- saved states --------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The precision the model computes in (recorded in saved states)."""
        return getattr(self.model, "precision", None) or str(self.model.dtype).replace("torch.", "")  # --precision

    def state_owner(self) -> Any:
        """What saved states of this model record and are checked against (sha256 of its checkpoint files, window)."""
        from glactl.storage.state_file import owner_of

        if not self.path:
            raise InputError("saved states need a model loaded from a checkpoint folder (glactl.load)")
        owner = self._owner
        if owner is None or (owner.context, owner.precision) != (self.config.context, self.precision):
            owner = self._owner = owner_of(self.model, self.path, self.precision, self.name)
        return owner

    def read(
        self,
        text: str | bytes | os.PathLike = "",
        state: Any = None,
        window: int = 4096,
        *,
        path: str | os.PathLike | None = None,
    ) -> Any:
        """A State after reading "\\n" + text (or `text` after `state`), in `window`-byte pieces: save it, or pass it as state=.

        A str or bytes is the text; a file is `path=` (str or os.PathLike) or a Path given as the text.
        """
        from glactl.inference.reading import read
        from glactl.inference.sampling import check_positive
        from glactl.runtime.threads import torch_threads
        from glactl.storage.state_file import State

        check_positive("--window", window)
        with torch_threads(self.threads):
            return State(read(self.model, read_text(text, path), self._reading(state), window), self.state_owner())

    def load_state(self, path: str | os.PathLike) -> Any:
        """A State read back from a file written by State.save (checked against this model; InputError otherwise)."""
        from glactl.storage.state_file import load_state

        return load_state(Path(path), self.model, self.state_owner())

    def state_of(self, run: Any) -> Any:
        """The State after a stream's prompt and the bytes generated so far (a stream started with keep_state=True)."""
        from glactl.storage.state_file import State

        reading = run.reading()
        if reading is None:
            raise InputError("this generation was not started with keep_state=True")
        return State(reading, self.state_owner())

    def _reading(self, state: Any) -> Any:
        """The Reading inside a State of this model (None for None); InputError for anything else."""
        from glactl.storage.state_file import State

        if state is None:
            return None
        if not isinstance(state, State):
            raise InputError(
                f"state= takes a glactl State (from Model.read or Model.load_state), not {type(state).__name__}"
            )
        owner = self.state_owner()
        if state.owner.config_sha256 != owner.config_sha256 or state.owner.weights_sha256 != owner.weights_sha256:
            raise InputError("state= holds a state of another model")
        if owner.windowed and (state.owner.context, state.owner.sink_tokens) != (owner.context, owner.sink_tokens):
            raise InputError(
                f"state= was read with attention window {state.owner.context}; this model runs with {owner.context}"
            )
        return state.reading

    # ---- generation ----------------------------------------------------------------------
    def stream(
        self,
        prompt: str | bytes | os.PathLike = "",
        max_new_tokens: int = 500,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        num_samples: int = 1,
        seed: int | None = None,
        stop: Sequence[str] = (),
        keep_text: bool = True,
        state: Any = None,
        keep_state: bool = False,
        *,
        path: str | os.PathLike | None = None,
    ) -> Any:
        """An iterable of (sample index, text piece) as bytes are generated; `.stats` holds the totals after.

        The prompt is a str or bytes; a prompt file is `path=` (str or os.PathLike) or a Path given as the prompt.

        `state`: continue after that State (the prompt, possibly empty, is read after its text, no
        extra "\\n"). `keep_state` (num_samples 1 only): `model.state_of(run)` then gives the State
        after the prompt and every generated byte, also after an interruption.
        """
        from glactl.inference.generation import Generation
        from glactl.inference.sampling import SamplingParams

        if seed is not None and (isinstance(seed, bool) or not 0 <= int(seed) < 2**63):
            raise InputError(f"--seed must be in [0, 2^63), got {seed}")
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        prompt_bytes = read_text(prompt, path)
        start = self._reading(state)
        if keep_state:
            self.state_owner()  # fail before generating, not after
        return Generation(
            self.model,
            prompt_bytes,
            max_new_tokens,
            params,
            num_samples,
            seed,
            list(stop),
            keep_text,
            threads=self.threads,
            start=start,
            keep_state=keep_state,
        )

    def generate(self, prompt: str | bytes | os.PathLike = "", return_state: bool = False, **options: Any) -> Any:
        """The continuation alone (not the prompt); a list when num_samples > 1. Options as `stream` (path= too).

        return_state=True (num_samples 1): (text, State after the prompt and the generated text).
        """
        run = self.stream(prompt, keep_state=return_state, **options)
        for _ in run:
            pass
        samples = run.stats.samples
        text = samples if int(options.get("num_samples", 1)) > 1 else samples[0]
        return (text, self.state_of(run)) if return_state else text

    # ---- completion ----------------------------------------------------------------------
    def complete(
        self,
        prefix: str | bytes | os.PathLike = "",
        n: int = 5,
        beam: int | None = None,
        until: str = "word",
        max_chars: int = 40,
        state: Any = None,
        *,
        path: str | os.PathLike | None = None,
    ) -> list[Any]:
        """The n most probable distinct continuations (Completion: text, logprob, probability); `prefix` read after `state` if given.

        The prefix is a str or bytes; a prefix file is `path=` (str or os.PathLike) or a Path given as the prefix.
        """
        from glactl.inference.completion import complete

        return complete(
            self.model,
            read_text(prefix, path),
            n=n,
            beam=beam,
            until=until,
            max_chars=max_chars,
            threads=self.threads,
            start=self._reading(state),
        )

    # ---- perplexity ----------------------------------------------------------------------
    def score(
        self,
        text: str | bytes | os.PathLike | None = None,
        window: int = 4096,
        progress: Callable[[int], None] | None = None,
        state: Any = None,
        keep_state: bool = False,
        *,
        path: str | os.PathLike | None = None,
    ) -> Any:
        """A Score (log-likelihood and counts) of a text (str or bytes) or of a file (`path=`, or a Path as `text`).

        A str is always the text itself, never a file name; a missing file raises InputError.
        `state`: the text continues that State (its first byte scored from the stored logits).
        `keep_state`: `score.final` is then the State after the text.
        """
        from glactl.inference.scoring import score_bytes, score_file

        source = text_source(text, path)
        start = self._reading(state)
        if isinstance(source, Path):
            result = score_file(self.model, source, window, progress, start, keep_state)
        else:
            result = score_bytes(self.model, source, window, start, keep_state)
        if result.final is not None:
            from glactl.storage.state_file import State

            result.final = State(result.final, self.state_owner())
        return result

    def perplexity(
        self,
        text: str | bytes | os.PathLike | None = None,
        window: int = 4096,
        state: Any = None,
        *,
        path: str | os.PathLike | None = None,
    ) -> dict[str, float | int]:
        """bits_per_byte, bits_per_char, byte_perplexity, word_perplexity, bytes, chars, words, tokens_per_second
        of a text or a file (as `score`), after `state` if given."""
        return self.score(text, window, state=state, path=path).metrics()

    # ---- description ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Architecture, parameters, state size per token of context, training summary, file sizes."""
        return describe(self.model, self.document, self.path)

"""The Python API: `glactl.load(...)` returns a Model with .generate, .stream, .complete, .perplexity and .info.

The command-line tool is a thin layer over this module, so both behave alike:

    import glactl
    model = glactl.load("runs/my-run")            # or a checkpoint folder, or a shipped name
    print(model.generate("The history of", max_new_tokens=200, seed=0))
    for c in model.complete("The history of", n=5):
        print(c.text, c.probability)
    print(model.perplexity(Path("wiki.test.raw"))["bits_per_byte"])

A long prompt is read once and reused (docs/design.md §5): `state = model.read(book)`, `state.save("book.state")`,
`model.load_state("book.state")`, and `state=` on generate, stream, complete and perplexity; a call
never changes the caller's state.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from glactl.errors import InputError

MAX_PROMPT_BYTES = 64 << 20


def read_prompt(argument: str, stdin: BinaryIO | None = None) -> bytes:
    """A prompt argument as bytes: the string itself, `-` for stdin, or `@path` for a file (must be UTF-8)."""
    if argument == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read(MAX_PROMPT_BYTES + 1)
        where = "stdin"
    elif argument.startswith("@") and len(argument) > 1:
        path = Path(argument[1:]).expanduser()
        where = str(path)
        if not path.exists():
            raise InputError(f"{path}: no such prompt file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a prompt file")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise InputError(f"{path}: cannot read prompt file ({e.strerror or type(e).__name__})") from None
    else:
        data = argument.encode("utf-8", errors="surrogateescape")
        where = "prompt"
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(f"{where}: prompt larger than {MAX_PROMPT_BYTES >> 20} MiB")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: prompt is not valid UTF-8 (byte {e.start})") from None
    return data


def _as_bytes(text: str | bytes) -> bytes:
    return bytes(text) if isinstance(text, (bytes, bytearray)) else str(text).encode("utf-8")


class Model:
    """A loaded language model and the operations people run on it."""

    def __init__(self, model: Any, document: dict[str, Any], device: torch.device, threads: int | None = None) -> None:
        self.model = model
        self.document = document
        self.device = device
        self.threads = threads  # None: byte-by-byte decoding runs on one thread (see sampling.torch_threads)
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
            owner = self._owner = owner_of(self.model, self.path, self.precision)
        return owner

    def read(self, text: str | bytes, state: Any = None, window: int = 4096) -> Any:
        """A State after reading "\\n" + text (or `text` after `state`), in `window`-byte pieces: save it, or pass it as state=."""
        from glactl.inference.reading import read
        from glactl.inference.sampling import check_positive, torch_threads
        from glactl.storage.state_file import State

        check_positive("--window", window)
        with torch_threads(self.threads):
            return State(read(self.model, _as_bytes(text), self._reading(state), window), self.state_owner())

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
        prompt: str | bytes = "",
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
    ) -> Any:
        """An iterable of (sample index, text piece) as bytes are generated; `.stats` holds the totals after.

        `state`: continue after that State (the prompt, possibly empty, is read after its text, no
        extra "\\n"). `keep_state` (num_samples 1 only): `model.state_of(run)` then gives the State
        after the prompt and every generated byte, also after an interruption.
        """
        from glactl.inference.sampling import Generation, SamplingParams

        if seed is not None and (isinstance(seed, bool) or not 0 <= int(seed) < 2**63):
            raise InputError(f"--seed must be in [0, 2^63), got {seed}")
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        start = self._reading(state)
        if keep_state:
            self.state_owner()  # fail before generating, not after
        return Generation(
            self.model,
            _as_bytes(prompt),
            max_new_tokens,
            params,
            num_samples,
            seed,
            list(stop),
            keep_text,
            threads=self.threads or 1,
            start=start,
            keep_state=keep_state,
        )

    def generate(self, prompt: str | bytes = "", return_state: bool = False, **options: Any) -> Any:
        """Generated text after `prompt` (not including it); a list when num_samples > 1. Options as `stream`.

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
        prefix: str | bytes = "",
        n: int = 5,
        beam: int | None = None,
        until: str = "word",
        max_chars: int = 40,
        state: Any = None,
    ) -> list[Any]:
        """The n most probable distinct continuations (Completion: text, logprob, probability); `prefix` read after `state` if given."""
        from glactl.inference.sampling import complete

        return complete(
            self.model,
            _as_bytes(prefix),
            n=n,
            beam=beam,
            until=until,
            max_chars=max_chars,
            threads=self.threads or 1,
            start=self._reading(state),
        )

    # ---- perplexity ----------------------------------------------------------------------
    def score(
        self,
        text_or_path: str | bytes | os.PathLike,
        window: int = 4096,
        progress: Callable[[int], None] | None = None,
        state: Any = None,
        keep_state: bool = False,
    ) -> Any:
        """A Score (log-likelihood and counts) of a text, bytes, or a file (Path, or a str naming an existing file).

        `state`: the text continues that State (its first byte scored from the stored logits).
        `keep_state`: `score.final` is then the State after the text.
        """
        from glactl.inference.scoring import score_bytes, score_file

        start = self._reading(state)
        if isinstance(text_or_path, os.PathLike) or _names_file(text_or_path):
            result = score_file(self.model, Path(text_or_path), window, progress, start, keep_state)
        else:
            result = score_bytes(self.model, _as_bytes(text_or_path), window, start, keep_state)
        if result.final is not None:
            from glactl.storage.state_file import State

            result.final = State(result.final, self.state_owner())
        return result

    def perplexity(
        self, text_or_path: str | bytes | os.PathLike, window: int = 4096, state: Any = None
    ) -> dict[str, float | int]:
        """bits_per_byte, bits_per_char, byte_perplexity, word_perplexity, bytes, chars, words, tokens_per_second (after `state` if given)."""
        return self.score(text_or_path, window, state=state).metrics()

    # ---- description ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Architecture, parameters, state size per token of context, training summary, file sizes."""
        from glactl.inference.scoring import state_growth

        short, long = state_growth(self.model, 10, 100)
        per_token = (long - short) / 90
        window = self.config.context
        if long != short and window is not None and window < 100:
            # A window caps the cache: measure the growth per token below it, not across the cap.
            top = max(2, window)
            low = max(1, min(10, top // 2))
            below_low, below_top = state_growth(self.model, low, top)
            per_token = (below_top - below_low) / (top - low)
        folder = Path(self.path) if self.path else None
        files = {}
        if folder is not None and folder.is_dir():
            files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
        return {
            "model": self.path,
            "architecture": self.config.to_dict(),
            "parameters": int(self.document.get("parameters", self.model.num_parameters())),
            "weights_dtype": self.document.get("weights_dtype", "float32"),
            "state": {
                "bytes_after_10_tokens": short,
                "bytes_after_100_tokens": long,
                "growth": "constant" if long == short else "growing",
                "bytes_per_token": per_token,
                "context": self.config.context,
            },
            "training": self.document.get("training", {}),
            "files": files,
            "total_file_bytes": sum(files.values()),
        }


def _names_file(value: Any) -> bool:
    """A str (no newline, short) that names an existing regular file is taken as a path."""
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return False
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False


def load(
    path_or_name: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int | None = None,
    context: int | None = None,
    kernels: str | None = None,
    precision: str = "float32",
    compile: str = "off",
) -> Model:
    """Load a run folder, checkpoint folder or shipped model (default: the shipped gla-enwiki).

    `precision` (auto, float32, bfloat16, int8) is the weights' format at run time and `compile`
    (auto, on, off) whether decoding runs a compiled step (glactl/inference/precision.py); the library's
    defaults are the exact ones, float32 and eager; the command line defaults to auto for both.

    `context` overrides the attention window W in tokens (sliding window for attention models;
    no effect on recurrent ones). `kernels="fla"` runs GLA's chunk form through flash-linear-attention
    (CUDA only; an InputError where it cannot run).
    """
    from glactl.inference.precision import COMPILE_CHOICES, apply_precision, check_choice, configure, resolve_precision
    from glactl.inference.sampling import torch_threads
    from glactl.runtime.devices import select_device, select_kernels, set_threads, use_kernels
    from glactl.storage.checkpoint import load_model
    from glactl.storage.model_paths import resolve_model

    set_threads(threads)
    torch_device = select_device(device)
    kernel_choice = select_kernels(kernels, torch_device)
    check_choice("--compile", compile, COMPILE_CHOICES)
    run_precision = resolve_precision(precision, torch_device)
    folder = resolve_model(path_or_name)
    # One thread unless asked: copying 43 MB is no work to share, and on a busy 2-core machine a second
    # thread made loading the shipped model 5x slower (0.96 s against 0.18 s).
    with torch_threads(1 if threads is None else threads):
        model, document = load_model(folder, device="cpu")
        if context is not None:
            model = _with_context(model, context)
        use_kernels(model.to(torch_device), kernel_choice)
        parameters = model.num_parameters()  # the checkpoint's count: int8 weights are buffers, a tied head gets a copy
        apply_precision(model, run_precision)
    configure(model, compile)
    document["precision"] = model.precision
    document["parameters"] = parameters
    return Model(model, document, torch_device, threads)


def _with_context(model: Any, context: int) -> Any:
    """The same weights in a model whose config has attention window `context`."""
    from glactl.models import LanguageModel

    if isinstance(context, bool) or int(context) != context or not 1 <= context <= 1 << 24:
        raise InputError(f"--context must be a positive number of tokens, got {context}")
    config = dataclasses.replace(model.config, context=int(context))
    weights = next(model.parameters())
    rebuilt = LanguageModel(config.validate()).to(device=weights.device, dtype=weights.dtype)  # keep the loaded dtype
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()

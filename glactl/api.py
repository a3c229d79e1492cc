"""The Python API: `glactl.load(...)` returns a Model with .generate, .stream, .complete, .perplexity and .info.

The command-line tool is a thin layer over this module, so both behave alike:

    import glactl
    model = glactl.load("runs/my-run")            # or a checkpoint folder, or a shipped name
    print(model.generate("The history of", max_new_tokens=200, seed=0))
    for c in model.complete("The history of", n=5):
        print(c.text, c.probability)
    print(model.perplexity(Path("wiki.test.raw"))["bits_per_byte"])
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

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
        raise InputError(f"{where}: prompt larger than {MAX_PROMPT_BYTES >> 20} MB")
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

    @property
    def path(self) -> str:
        """The checkpoint folder the weights came from."""
        return str(self.document.get("path", ""))

    @property
    def config(self) -> Any:
        return self.model.config

    def __repr__(self) -> str:
        return f"glactl.Model({self.path!r}, mixer={self.config.mixer!r}, device={str(self.device)!r})"

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
    ) -> Any:
        """An iterable of (sample index, text piece) as bytes are generated; `.stats` holds the totals after."""
        from glactl.sampling import Generation, SamplingParams

        if seed is not None and (isinstance(seed, bool) or not 0 <= int(seed) < 2**63):
            raise InputError(f"--seed must be in [0, 2^63), got {seed}")
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        return Generation(self.model, _as_bytes(prompt), max_new_tokens, params, num_samples, seed, list(stop), keep_text,
                          threads=self.threads or 1)

    def generate(self, prompt: str | bytes = "", **options: Any) -> str | list[str]:
        """Generated text after `prompt` (not including it); a list when num_samples > 1. Options as `stream`."""
        run = self.stream(prompt, **options)
        for _ in run:
            pass
        samples = run.stats.samples
        return samples if int(options.get("num_samples", 1)) > 1 else samples[0]

    # ---- completion ----------------------------------------------------------------------
    def complete(self, prefix: str | bytes, n: int = 5, beam: int | None = None, until: str = "word", max_chars: int = 40) -> list[Any]:
        """The n most probable distinct continuations (Completion: text, logprob, probability)."""
        from glactl.sampling import complete

        return complete(self.model, _as_bytes(prefix), n=n, beam=beam, until=until, max_chars=max_chars, threads=self.threads or 1)

    # ---- perplexity ----------------------------------------------------------------------
    def score(self, text_or_path: str | bytes | os.PathLike, window: int = 4096, progress: Callable[[int], None] | None = None) -> Any:
        """A Score (log-likelihood and counts) of a text, bytes, or a file (Path, or a str naming an existing file)."""
        from glactl.evaluation import score_bytes, score_file

        if isinstance(text_or_path, os.PathLike) or _names_file(text_or_path):
            return score_file(self.model, Path(text_or_path), window, progress)
        return score_bytes(self.model, _as_bytes(text_or_path), window)

    def perplexity(self, text_or_path: str | bytes | os.PathLike, window: int = 4096) -> dict[str, float | int]:
        """bits_per_byte, bits_per_char, byte_perplexity, word_perplexity, bytes, chars, words, tokens_per_second."""
        return self.score(text_or_path, window).metrics()

    # ---- description ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Architecture, parameters, state size per token of context, training summary, file sizes."""
        from glactl.evaluation import state_growth

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
            "parameters": int(self.model.num_parameters()),
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
) -> Model:
    """Load a run folder, checkpoint folder or shipped model (default: the shipped gla-enwiki).

    `context` overrides the attention window W in tokens (sliding window for attention models;
    no effect on recurrent ones). `kernels="fla"` runs GLA's chunk form through flash-linear-attention
    (CUDA only; an InputError where it cannot run).
    """
    from glactl.checkpoint import load_model
    from glactl.devices import select_device, select_kernels, set_threads, use_kernels
    from glactl.paths import resolve_model

    set_threads(threads)
    torch_device = select_device(device)
    kernel_choice = select_kernels(kernels, torch_device)
    folder = resolve_model(path_or_name)
    model, document = load_model(folder, device="cpu")
    if context is not None:
        model = _with_context(model, context)
    use_kernels(model.to(torch_device), kernel_choice)
    return Model(model, document, torch_device, threads)


def _with_context(model: Any, context: int) -> Any:
    """The same weights in a model whose config has attention window `context`."""
    from glactl.models import LanguageModel

    if isinstance(context, bool) or int(context) != context or not 1 <= context <= 1 << 24:
        raise InputError(f"--context must be a positive number of tokens, got {context}")
    config = dataclasses.replace(model.config, context=int(context))
    rebuilt = LanguageModel(config.validate())
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()

"""Streaming perplexity: score any byte stream window by window with the state carried, in constant memory.

Every byte is conditioned on all bytes before it (a recurrent model) or on the model's sliding
context (attention with `config.context`); the first byte is conditioned on "\\n". Metrics
follow lm-evaluation-harness: bits per byte, byte perplexity, word perplexity with
words = len(re.split(r"\\s+", text)), plus bits per character of the UTF-8 text.
"""

from __future__ import annotations

import codecs
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

import torch

from glactl.errors import InputError
from glactl.inference.reading import START, Reading, extend_tail, read
from glactl.inference.sampling import check_positive
from glactl.models.state import clone_state

DEFAULT_WINDOW = 4096
METRIC_KEYS = (
    "bits_per_byte",
    "bits_per_char",
    "byte_perplexity",
    "word_perplexity",
    "bytes",
    "chars",
    "words",
    "tokens_per_second",
)
_WHITESPACE_RUN = re.compile(r"\s+")
LN2 = math.log(2.0)


class TextCounter:
    """Counts characters and lm-eval-harness words of a byte stream fed in pieces (same as on the whole text)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strict = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self.valid_utf8 = True
        self.chars = 0
        self._runs = 0
        self._ends_in_space = False

    def feed(self, data: bytes, final: bool = False) -> None:
        """Add the next bytes (final=True at the end of the stream)."""
        text = self._decoder.decode(data, final)
        if self.valid_utf8:
            try:
                self._strict.decode(data, final)
            except UnicodeDecodeError:
                self.valid_utf8 = False
        if not text:
            return
        self.chars += len(text)
        runs = len(_WHITESPACE_RUN.findall(text))
        if self._ends_in_space and _WHITESPACE_RUN.match(text):
            runs -= 1  # the run continues across the boundary between pieces
        self._runs += runs
        self._ends_in_space = _WHITESPACE_RUN.match(text[-1]) is not None

    @property
    def words(self) -> int:
        """len(re.split(r"\\s+", text)) of all the text so far: whitespace runs + 1."""
        return self._runs + 1


@dataclass
class Score:
    """Total log-likelihood (nats) of a byte stream and the counts the metrics divide by."""

    loglik: float = 0.0
    bytes: int = 0
    chars: int = 0
    words: int = 0
    seconds: float = 0.0
    valid_utf8: bool = True
    notes: list[str] = field(default_factory=list)
    final: Reading | None = None  # the reading after the whole text (keep_state=True; a State through glactl.api.model)

    def __add__(self, other: Score) -> Score:
        return Score(
            self.loglik + other.loglik,
            self.bytes + other.bytes,
            self.chars + other.chars,
            self.words + other.words,
            self.seconds + other.seconds,
            self.valid_utf8 and other.valid_utf8,
        )

    def metrics(self) -> dict[str, float | int]:
        """Exactly METRIC_KEYS; nothing divides by zero (an empty score gives zeros)."""
        nll = -self.loglik
        return {
            "bits_per_byte": nll / (self.bytes * LN2) if self.bytes else 0.0,
            "bits_per_char": nll / (self.chars * LN2) if self.chars else 0.0,
            "byte_perplexity": _exp(nll / self.bytes) if self.bytes else 0.0,
            "word_perplexity": _exp(nll / self.words) if self.words else 0.0,
            "bytes": self.bytes,
            "chars": self.chars,
            "words": self.words,
            "tokens_per_second": self.bytes / self.seconds if self.seconds > 0 else 0.0,
        }


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def read_windows(stream: BinaryIO, window: int) -> Iterator[bytes]:
    """Consecutive pieces of exactly `window` bytes (the last may be shorter), read as needed."""
    buffer = b""
    while True:
        piece = stream.read(window - len(buffer))
        if not piece:
            break
        buffer += piece
        if len(buffer) == window:
            yield buffer
            buffer = b""
    if buffer:
        yield buffer


def bytes_windows(data: bytes, window: int) -> Iterator[bytes]:
    """Consecutive `window`-byte pieces of an in-memory byte string."""
    for start in range(0, len(data), window):
        yield bytes(data[start : start + window])


def score_windows(
    model: torch.nn.Module,
    windows: Iterable[bytes],
    progress: Callable[[int], None] | None = None,
    start_reading: Reading | None = None,
    keep_state: bool = False,
) -> Score:
    """Score consecutive byte pieces with the state carried; byte i is predicted from bytes < i (first from "\\n").

    With `start_reading`, the text continues that reading: its first byte is scored with the stored
    logits. With `keep_state`, `score.final` is the reading after the whole text (for --save-state).
    """
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    score, counter = Score(), TextCounter()
    state = None if start_reading is None else clone_state(start_reading.state)
    previous = START[-1:] if start_reading is None else b""  # read, but not yet fed to the model
    head = None if start_reading is None else start_reading.logits  # logits for the first byte, if known
    tail = START if start_reading is None else start_reading.tail
    start = time.perf_counter()
    with torch.inference_mode():
        for piece in windows:
            if not piece:
                continue
            fed = previous + piece[:-1]
            targets = torch.frombuffer(bytearray(piece), dtype=torch.uint8).to(device, torch.long)
            parts = [head[None]] if head is not None else []
            if fed:
                inputs = torch.frombuffer(bytearray(fed), dtype=torch.uint8).to(device, torch.long)
                logits, state = model(inputs[None], state)
                parts.append(logits[0])
            logits = torch.cat([p.to(parts[-1].dtype) for p in parts]) if len(parts) > 1 else parts[0]
            head = None
            if keep_state:
                tail = extend_tail(tail, piece)
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None])
            score.loglik += float(logprobs.sum(dtype=torch.float64))
            score.bytes += len(piece)
            counter.feed(piece)
            previous = piece[-1:]
            if progress is not None:
                progress(len(piece))
    counter.feed(b"", final=True)
    if keep_state and score.bytes:  # the state lags one byte behind the text: read the last byte too
        before = Reading(
            state, logits[-1], (start_reading.bytes_read if start_reading else 0) + score.bytes - 1, tail[:-1]
        )
        score.final = read(model, previous, before)
    score.seconds = time.perf_counter() - start
    score.chars, score.words, score.valid_utf8 = counter.chars, counter.words, counter.valid_utf8
    if not score.valid_utf8:
        score.notes.append("not valid UTF-8: scored as bytes; characters counted on the text decoded with replacement")
    return score


def log_likelihood(model: torch.nn.Module, data: bytes, window: int = DEFAULT_WINDOW) -> float:
    """Total natural log-likelihood of `data` read in windows with the state carried (the perplexity path)."""
    check_positive("--window", window)
    return score_windows(model, bytes_windows(data, window)).loglik


def score_bytes(
    model: torch.nn.Module,
    data: bytes,
    window: int = DEFAULT_WINDOW,
    start_reading: Reading | None = None,
    keep_state: bool = False,
) -> Score:
    """Score an in-memory byte string (after `start_reading` if given; see score_windows)."""
    check_positive("--window", window)
    if not data:
        raise InputError("empty text: 0 bytes, nothing to score")
    return score_windows(model, bytes_windows(data, window), None, start_reading, keep_state)


def check_file(path: str | Path) -> Path:
    """A readable, non-empty regular file, or InputError (one line) saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    try:
        stat = path.stat()
        size = stat.st_size
        if not S_ISREG(stat.st_mode):  # a FIFO or pipe (e.g. /dev/stdin): a test read would eat its data
            return path
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if size == 0 and not first:
        raise InputError(f"{path}: empty file (0 bytes), nothing to score")
    return path


def score_file(
    model: torch.nn.Module,
    path: str | Path,
    window: int = DEFAULT_WINDOW,
    progress: Callable[[int], None] | None = None,
    start_reading: Reading | None = None,
    keep_state: bool = False,
) -> Score:
    """Score a file read `window` bytes at a time, never held whole in memory (after `start_reading`, see score_windows)."""
    check_positive("--window", window)
    path = check_file(path)
    try:
        with open(path, "rb") as f:
            score = score_windows(model, read_windows(f, window), progress, start_reading, keep_state)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if score.bytes == 0:
        raise InputError(f"{path}: empty file (0 bytes), nothing to score")
    return score


def state_growth(model: torch.nn.Module, short: int = 10, long: int = 100) -> tuple[int, int]:
    """State bytes after `short` and after `long` tokens of context (equal for recurrent models)."""
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    sizes = []
    with torch.inference_mode():
        for length in (short, long):
            idx = torch.full((1, length), ord(" "), dtype=torch.long, device=device)
            _, state = model(idx, None)
            sizes.append(int(model.state_nbytes(state)))
    return sizes[0], sizes[1]


def score_split(
    model: torch.nn.Module,
    data: str,
    split: str = "test",
    window: int = DEFAULT_WINDOW,
    progress: Callable[[int], None] | None = None,
    prepare_progress: Callable[[str, int, int | None], None] | None = None,
    start_reading: Reading | None = None,
    keep_state: bool = False,
) -> Score:
    """Score a split of a `--data` source (encoded once into the cache, then streamed from its memmap)."""
    from glactl.data.hub import SPLITS, DatasetUnavailable  # local imports: the data layer loads only when asked
    from glactl.data.sources import prepare_source

    check_positive("--window", window)
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    try:
        source = prepare_source(data, prepare_progress)
    except DatasetUnavailable as e:  # the advice for scoring, not for training
        raise DatasetUnavailable(e.label, e.reason, "score local text instead: glactl perplexity FILE") from None
    tokens = source.array(split)
    if tokens.shape[0] == 0:
        have = ", ".join(name for name, size in source.splits.items() if size) or "none"
        raise InputError(f"--data {data}: no {split} split (splits with text: {have})")
    windows = (tokens[start : start + window].tobytes() for start in range(0, tokens.shape[0], window))
    return score_windows(model, windows, progress, start_reading, keep_state)

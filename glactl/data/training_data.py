"""The training data of a run: its `--data` sources prepared, split for validation and weighed, as batches.

Text is byte-level (the tokenizer is UTF-8 bytes); this module knows nothing about models.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from glactl.data.local import CHUNK_BYTES, Progress
from glactl.data.sources import SourceSpec, prepare_source
from glactl.data.windows import Stream, WindowSampler, eval_batches, fixed_windows
from glactl.errors import InputError

VALID_FRACTION = 0.01


@dataclass
class TrainingData:
    """Training streams with their weights and validation streams, ready for sampling."""

    sources: list[dict[str, Any]]
    train: list[Stream]
    weights: list[float]
    valid: list[Stream]
    valid_weights: list[float]
    messages: list[str]

    def fingerprint(self) -> dict[str, Any]:
        """What the data is, by content: each training source's sha256 and one over the validation text.

        A resumed run must train on the same data and keep scoring on the same validation text,
        or best/ would compare bits per byte measured on different texts.
        """
        valid = hashlib.sha256()
        for stream in self.valid:
            valid.update(len(stream).to_bytes(8, "little"))
            for start in range(0, len(stream), CHUNK_BYTES):
                valid.update(np.asarray(stream.tokens[start : start + CHUNK_BYTES]).tobytes())
        return {"train": {s["source"]: s.get("sha256") for s in self.sources}, "valid": valid.hexdigest()[:16]}


def load_training_data(
    data: list[str],
    valid: str | None,
    seq_len: int,
    progress: Progress | None = None,
    allow_binary: bool = False,
) -> TrainingData:
    """Prepare every `--data` source (and `--valid`), split by position where needed, weigh them."""
    if not data:
        raise InputError("--data is required (a text file, folder, glob, wikitext-103, wikitext-2 or hf:REPO)")
    window = seq_len + 1
    specs = [SourceSpec.parse(d) for d in data]
    train: list[Stream] = []
    valid_streams: list[Stream] = []
    weights: list[float | None] = []
    sources: list[dict[str, Any]] = []
    messages: list[str] = []
    for spec in specs:
        prepared = prepare_source(spec.text, progress, allow_binary)
        messages.append(
            f"{'reusing' if prepared.reused else 'encoded'} {spec.text} "
            f"({_human(sum(prepared.splits.values()))} in {prepared.folder})"
        )
        splits = prepared.splits
        if not splits.get("train"):
            raise InputError(
                f"--data {spec.text}: no train split (it has: {', '.join(s for s, n in splits.items() if n) or 'nothing'})"
            )
        tokens = prepared.array("train")
        if valid is None and (prepared.meta["kind"] == "local" or not splits.get("validation")):
            n = len(tokens)
            n_valid = max(math.ceil(n * VALID_FRACTION), window)
            if n - n_valid < window:
                raise InputError(
                    f"--data {spec.text}: {n} bytes, too short to split into training and validation "
                    f"windows of {window} bytes (--seq-len {seq_len} + 1); use a longer text or --valid FILE"
                )
            train.append(Stream(spec.text, tokens[: n - n_valid]))
            valid_streams.append(Stream(f"{spec.text} (last {n_valid} bytes)", tokens[n - n_valid :]))
        else:
            train.append(Stream(spec.text, tokens))
            if valid is None and splits.get("validation"):
                valid_streams.append(Stream(f"{spec.text} validation", prepared.array("validation")))
        weights.append(spec.weight)
        sources.append(
            {
                "source": spec.text,
                "weight": spec.weight,
                "train_bytes": len(train[-1]),
                "sha256": prepared.meta["sha256"].get("train"),
                "cache": str(prepared.folder),
            }
        )
    valid_weights: list[float] = [1.0] * len(valid_streams)
    if valid is not None:
        prepared = prepare_source(valid, progress, allow_binary)
        messages.append(f"{'reusing' if prepared.reused else 'encoded'} {valid} for validation")
        split = "validation" if prepared.meta["kind"] == "hf" and prepared.splits.get("validation") else "train"
        valid_streams = [Stream(valid, prepared.array(split))]
        valid_weights = [1.0]
    elif len(valid_streams) == len(train):
        valid_weights = [float(len(s)) for s in valid_streams]
    if not valid_streams:
        raise InputError("no validation data: the sources have no validation split; pass --valid FILE")
    for stream in valid_streams:
        if len(stream) < window:
            raise InputError(
                f"validation data {stream.label}: {len(stream)} bytes, shorter than one window of {window} "
                f"(--seq-len {seq_len} + 1)"
            )
    resolved = [float(w) if w is not None else float(len(s)) for w, s in zip(weights, train)]
    if any(w is not None for w in weights) and any(w is None for w in weights):
        # Mixed explicit and implicit weights: implicit ones are their share of the total size.
        total_size = sum(len(s) for s in train)
        resolved = [float(w) if w is not None else len(s) / total_size for w, s in zip(weights, train)]
    for source, w in zip(sources, resolved):
        source["weight"] = w
    return TrainingData(sources, train, resolved, valid_streams, valid_weights, messages)


class TextBatches:
    """Text as the training loop's batch source: random windows by (seed, step), fixed validation windows.

    Batches are (x, y, None): every position is scored (a task's source gives an answer mask instead).
    """

    def __init__(self, data: TrainingData, seq_len: int, seed: int, eval_count: int) -> None:
        self.data = data
        self.seq_len = seq_len
        self.sampler = WindowSampler(data.train, data.weights, seq_len, seed)
        self.eval_windows = fixed_windows(data.valid, data.valid_weights, eval_count, seq_len)

    def train_batch(self, step: int, count: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        """The `count` windows of a step (deterministic in (seed, step)) as inputs and targets."""
        x, y = self.sampler.gather(self.sampler.windows(step, count))
        return x, y, None

    def eval_batches(self, rank: int, world: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, None]]:
        """This rank's share of the fixed validation windows (windows rank, rank + world, ...) in batches."""
        for x, y in eval_batches(self.data.valid, self.eval_windows[rank::world], self.seq_len, batch_size):
            yield x, y, None


def _human(n: int) -> str:
    """Sizes in glactl's one convention (KiB, MiB: powers of 1024)."""
    from glactl.report.display import human_bytes

    return human_bytes(n)

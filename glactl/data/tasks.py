"""Synthetic probe tasks (docs/design.md §3.9): multi-query associative recall, selective copying, sorting.

A task draws byte sequences as (inputs x, targets y, answer mask), each [seq_len]: the model
reads x and is scored at the answer positions only, where y holds the answer. Training batches
are a pure function of (seed, step); the test set is a fixed set drawn from its own stream and
is disjoint from every training batch by construction: a sequence belongs to the test side when
a hash of its bytes falls in a 1/16 slice, and training draws skip those sequences.
No model code and no data loading here: only generators, masks and scoring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from glactl.data.task_scoring import TaskScore
from glactl.errors import InputError

TASKS = ("lm", "mqar", "selective-copy", "sort")  # "lm" is language modelling on --data (not made here)
TEST_SEQUENCES = 256  # default size of a task's fixed test set
TEST_STREAM = 1234  # the test set's seed: the same test set for every run seed, so runs compare on it
TEST_SLICE = 16  # 1 in TEST_SLICE sequences (by hash) belongs to the test side
MAX_TRIES = 1000  # draws per wanted sequence before a task is declared too small for a disjoint test set

# mqar: keys, values and filler come from disjoint byte ranges.
MQAR_KEYS = range(64, 128)
MQAR_VALUES = range(128, 192)
MQAR_FILLER = range(0, 64)
MQAR_POWER_A = 0.01  # Zoology's query-gap law p(g) ~ (g + 1)^(a - 1): most queries soon after the pairs
MQAR_PAIRS = 8
MQAR_SEQ_LEN = 64

# selective-copy (Mamba, minGRU papers: 16 data tokens, vocabulary 16, a noise token, 16 markers).
COPY_TOKENS = 16
COPY_DATA = range(ord("a"), ord("a") + 16)
COPY_NOISE = ord(".")
COPY_MARKER = ord("#")
COPY_SEQ_LEN = 256  # the papers use 4096; 256 keeps a CPU run to minutes

# sort (Reflex-attention report: 100 numbers; repeats are the hard part).
SORT_COUNT = 100
SORT_RANGE = 16
SORT_BASE = ord("A")  # values are bytes SORT_BASE .. SORT_BASE + range - 1
SORT_MAX_RANGE = 62  # up to byte 126
SORT_SEPARATOR = ord("=")
SORT_PAD = 0


def _rng(*parts: Any) -> np.random.Generator:
    """A numpy generator seeded from the given parts (e.g. stream name, seed, step)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def is_test_sequence(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether a sequence belongs to the test side of the hash split (1 in TEST_SLICE)."""
    digest = hashlib.blake2b(x.tobytes() + b"|" + y.tobytes(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % TEST_SLICE == 0


# ---- the tasks --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A probe: draws (x, y, mask) of `seq_len` bytes; `whole_sequence` says if sequence accuracy is reported.

    Two floors for its accuracy (docs/comparing.md, Probes): `chance_accuracy`, a uniform guess among the
    answer bytes the task scores, and `trivial_accuracy`, the best simple rule that learns nothing (what
    `trivial_rule` says), scored exactly on the fixed test set.
    """

    name: str
    seq_len: int
    whole_sequence: bool = False
    trivial_rule: ClassVar[str] = ""

    def settings(self) -> dict[str, Any]:
        """What defines the task's sequences (recorded with every run)."""
        return {"task": self.name, "seq_len": self.seq_len}

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sequence: x, y (uint8) and the answer mask (bool), each [seq_len]."""
        raise NotImplementedError

    def answer_bytes(self) -> range:
        """The byte values an answer can take."""
        raise NotImplementedError

    def trivial_guess(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The trivial rule's guess at every position of one sequence (only the answer positions count)."""
        raise NotImplementedError

    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess among the answer bytes."""
        return 1.0 / len(self.answer_bytes())

    def trivial_accuracy(self, test_size: int = TEST_SEQUENCES) -> float:
        """Accuracy of the trivial rule on the fixed test set of `test_size` sequences (exact, not sampled)."""
        return self.trivial_score(test_size).metrics(False)["accuracy"]

    def trivial_score(self, test_size: int = TEST_SEQUENCES) -> TaskScore:
        """The trivial rule scored on the fixed test set (answers and whole sequences right; no loss)."""
        x, y, mask = fixed_test_set(self, test_size)
        guesses = np.stack([self.trivial_guess(x[i].numpy(), mask[i].numpy()) for i in range(len(x))])
        score = TaskScore()
        score.add_guesses(torch.from_numpy(guesses.astype(np.int64)), y, mask)
        return score

    def baselines(self, test_size: int = TEST_SEQUENCES) -> dict[str, dict[str, Any]]:
        """The two floors as results.json records them: accuracy, sequence accuracy where reported, and the rule."""
        chance = self.chance_accuracy()
        trivial = self.trivial_score(test_size)
        floors: dict[str, dict[str, Any]] = {
            "chance": {"accuracy": round(chance, 6)},
            "trivial": {"accuracy": round(trivial.correct / max(1, trivial.answers), 6)},
        }
        if self.whole_sequence:  # chance: every answer right, chance ** answers (the same count in every sequence)
            floors["chance"]["sequence_accuracy"] = round(chance ** (trivial.answers / max(1, trivial.sequences)), 6)
            floors["trivial"]["sequence_accuracy"] = round(trivial.sequences_right / max(1, trivial.sequences), 6)
        floors["chance"]["rule"] = f"a uniform guess among the {len(self.answer_bytes())} answer bytes"
        floors["trivial"]["rule"] = self.trivial_rule
        return floors


@dataclass(frozen=True)
class MQAR(Task):
    """Multi-query associative recall (Zoology's multiquery_ar): k1 v1 ... kP vP, then each key again among filler.

    The answer is the value that follows a key when it is queried (x = key, y = its value); keys
    and values are distinct within a sequence, queries sit at even offsets after the pairs with
    Zoology's power-law gaps, every other byte of that region is random filler.
    """

    pairs: int = MQAR_PAIRS
    # Without recall: each key is queried once and the answers already given are in the input (teacher
    # forcing), so guessing a value of the context not yet answered is right 1/P, 1/(P-1), ..., 1/1 of the time.
    trivial_rule: ClassVar[str] = "first context value not yet answered"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "pairs": self.pairs}

    def answer_bytes(self) -> range:
        return MQAR_VALUES

    def trivial_guess(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        guess = np.zeros_like(x)
        left = [int(v) for v in x[1 : 2 * self.pairs : 2]]  # the values, in the order of their pairs
        for p in np.flatnonzero(mask):
            guess[p] = left[0] if left else 0
            if p + 1 < len(x) and int(x[p + 1]) in left:  # the answer, read at the next position
                left.remove(int(x[p + 1]))
        return guess

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        length = self.seq_len + 1
        context = 2 * self.pairs
        slots = (length - context) // 2
        keys = rng.choice(np.array(MQAR_KEYS), size=self.pairs, replace=False)
        values = rng.choice(np.array(MQAR_VALUES), size=self.pairs, replace=False)
        weights = MQAR_POWER_A * np.arange(1, slots + 1, dtype=np.float64) ** (MQAR_POWER_A - 1)
        gaps = rng.choice(slots, size=self.pairs, replace=False, p=weights / weights.sum())
        s = rng.integers(MQAR_FILLER.start, MQAR_FILLER.stop, size=length).astype(np.uint8)
        s[0:context:2], s[1:context:2] = keys, values
        s[context + 2 * gaps], s[context + 2 * gaps + 1] = keys, values
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[context + 2 * gaps] = True
        return s[:-1], s[1:], mask


@dataclass(frozen=True)
class SelectiveCopy(Task):
    """Selective copying (Mamba, minGRU): 16 data bytes scattered among noise, then 16 markers.

    x = region of seq_len - 16 bytes (the data tokens in order at random positions, noise
    elsewhere) + 16 marker bytes; at the i-th marker the answer y is the i-th data token.
    Elsewhere y is the next byte of x (not scored).
    """

    whole_sequence: bool = True
    # The markers are all alike and the data is uniform, so without counting positions the best guess is the
    # data byte the sequence holds most often (the lowest such byte on a tie), the same at every marker.
    trivial_rule: ClassVar[str] = "most frequent data byte of the sequence"

    def answer_bytes(self) -> range:
        return COPY_DATA

    def trivial_guess(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        data = x[: self.seq_len - COPY_TOKENS]
        counts = np.bincount(data[data != COPY_NOISE], minlength=256)
        return np.full_like(x, int(np.argmax(counts)))

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        region = self.seq_len - COPY_TOKENS
        data = rng.integers(COPY_DATA.start, COPY_DATA.stop, size=COPY_TOKENS).astype(np.uint8)
        where = np.sort(rng.choice(region, size=COPY_TOKENS, replace=False))
        x = np.full(self.seq_len, COPY_NOISE, dtype=np.uint8)
        x[where] = data
        x[region:] = COPY_MARKER
        y = np.empty_like(x)
        y[:-1] = x[1:]
        y[region:] = data
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[region:] = True
        return x, y, mask


@dataclass(frozen=True)
class Sort(Task):
    """Sorting (Reflex-attention report): `count` values with repeats, a separator, the values sorted.

    s = v1 .. vN, separator, sorted(v), padding to seq_len + 1; x = s[:-1], y = s[1:]; the
    answers are the N sorted values (teacher-forced: each is predicted after the ones before).
    """

    count: int = SORT_COUNT
    value_range: int = SORT_RANGE
    whole_sequence: bool = True
    # Sorted values with repeats mostly equal the one before, and the first is almost always the lowest value
    # of the range; this rule needs no counting (what sorting is) and scores about 1 - range / count.
    trivial_rule: ClassVar[str] = "repeat the previous value; lowest first"

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "sort_count": self.count, "sort_range": self.value_range}

    def answer_bytes(self) -> range:
        return range(SORT_BASE, SORT_BASE + self.value_range)

    def trivial_guess(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        guess = x.copy()  # teacher forcing: the input at an answer position is the previous sorted value
        guess[self.count] = SORT_BASE  # there the input is the separator
        return guess

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.count
        values = (SORT_BASE + rng.integers(0, self.value_range, size=n)).astype(np.uint8)
        s = np.full(self.seq_len + 1, SORT_PAD, dtype=np.uint8)
        s[:n], s[n], s[n + 1 : 2 * n + 1] = values, SORT_SEPARATOR, np.sort(values)
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[n : 2 * n] = True
        return s[:-1], s[1:], mask


def default_seq_len(name: str, sort_count: int | None = None) -> int:
    """The sequence length a task uses when --seq-len is not given (512 for lm)."""
    return {
        "lm": 512,
        "mqar": MQAR_SEQ_LEN,
        "selective-copy": COPY_SEQ_LEN,
        "sort": 2 * (sort_count if sort_count is not None else SORT_COUNT),
    }[name]


def make_task(
    name: str,
    seq_len: int | None = None,
    pairs: int | None = None,
    sort_count: int | None = None,
    sort_range: int | None = None,
) -> Task:
    """The task `name` with its settings checked (InputError, one line); None = the task's default."""
    if name not in TASKS or name == "lm":
        raise InputError(f"--task {name!r}: choose one of {', '.join(TASKS)}")
    given = {"--pairs": (pairs, "mqar"), "--sort-count": (sort_count, "sort"), "--sort-range": (sort_range, "sort")}
    for flag, (value, owner) in given.items():
        if value is not None and name != owner:
            raise InputError(f"{flag} is a setting of --task {owner}, not of --task {name}")
    seq_len = seq_len if seq_len is not None else default_seq_len(name, sort_count)
    if seq_len < 1:
        raise InputError("--seq-len must be at least 1")
    if name == "mqar":
        pairs = MQAR_PAIRS if pairs is None else pairs
        if not 1 <= pairs <= len(MQAR_KEYS):
            raise InputError(f"--pairs {pairs}: must be in 1..{len(MQAR_KEYS)} (distinct keys per sequence)")
        if seq_len < 4 * pairs:
            raise InputError(
                f"--task mqar with --pairs {pairs} needs --seq-len >= {4 * pairs} "
                f"(the pairs, then a query slot per pair), got {seq_len}"
            )
        return MQAR("mqar", seq_len, pairs=pairs)
    if name == "selective-copy":
        if seq_len < 2 * COPY_TOKENS:
            raise InputError(
                f"--task selective-copy needs --seq-len >= {2 * COPY_TOKENS} "
                f"({COPY_TOKENS} data tokens among noise, then {COPY_TOKENS} markers), got {seq_len}"
            )
        return SelectiveCopy("selective-copy", seq_len)
    count = SORT_COUNT if sort_count is None else sort_count
    value_range = SORT_RANGE if sort_range is None else sort_range
    if count < 1:
        raise InputError(f"--sort-count {count}: must be at least 1")
    if not 2 <= value_range <= SORT_MAX_RANGE:
        raise InputError(f"--sort-range {value_range}: must be in 2..{SORT_MAX_RANGE} distinct values")
    if 2 * count > seq_len:
        raise InputError(
            f"--task sort with --sort-count {count} needs --seq-len >= {2 * count} "
            f"(the values, a separator, the sorted values), got {seq_len}"
        )
    return Sort("sort", seq_len, count=count, value_range=value_range)


# ---- batches ----------------------------------------------------------------------------------------
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y [B, T] int64; mask [B, T] bool


def _stack(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Batch:
    x = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64))
    y = torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.int64))
    mask = torch.from_numpy(np.stack([r[2] for r in rows]))
    return x, y, mask


def fixed_test_set(task: Task, size: int = TEST_SEQUENCES) -> Batch:
    """The task's fixed test set of `size` sequences: the same for every run seed (its own stream)."""
    return _stack(_draw_side(task, _rng("task-test", task.name, TEST_STREAM), size, test=True))


def _draw_side(
    task: Task, rng: np.random.Generator, count: int, test: bool
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`count` sequences from the training (test=False) or test side of the hash split."""
    rows = []
    tries = 0
    while len(rows) < count:
        x, y, mask = task.draw(rng)
        tries += 1
        if is_test_sequence(x, y) == test:
            rows.append((x, y, mask))
        elif tries > MAX_TRIES * count:
            raise InputError(
                f"--task {task.name}: these settings allow too few distinct sequences "
                "to keep a test set apart from training; make the task bigger"
            )
    return rows


@dataclass
class TaskBatches:
    """A task as the training loop's batch source: training batches by (seed, step), a fixed test set."""

    task: Task
    seed: int
    test_size: int = TEST_SEQUENCES
    _test: Batch | None = field(default=None, init=False, repr=False)

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    def train_batch(self, step: int, count: int) -> Batch:
        """The `count` training sequences of a step: a pure function of (task, seed, step)."""
        return _stack(_draw_side(self.task, _rng("task-train", self.task.name, self.seed, step), count, test=False))

    def test_set(self) -> Batch:
        """The fixed test set (drawn once; the same for every run seed)."""
        if self._test is None:
            self._test = fixed_test_set(self.task, self.test_size)
        return self._test

    def eval_batches(self, rank: int, world: int, batch_size: int) -> Iterator[Batch]:
        """This rank's share of the test set (sequences rank, rank + world, ...) in batches."""
        x, y, mask = (t[rank::world] for t in self.test_set())
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size], mask[start : start + batch_size]

"""--precision auto decided by measuring this machine, once, and cached: the precision and the thread count.

A fixed rule measured on one or two CPU kinds loses on another: int8 weights decoded the shipped GLA
2.2x faster than float32 on an AVX512-BF16 EPYC but scored text slower than float32 on a Xeon with AMX,
where float32 GEMMs are fast. So the first run of a model's shape on a machine times each precision
this build can run (float32, bfloat16 where native, int8 where torch has the kernel) at each thread count
the caller allows (runtime/threads.thread_choices: 1 and the idle cores unless --threads gives one) on the
model's own weights, for the work at hand: one-row decode steps ("decode": generate, complete, serve) or a
window of bytes read at once ("score": perplexity). It keeps the fastest pair whose cost in bits per byte,
measured offline (BPB_COST), stays within AUTO_BPB_BOUND of float32. That takes a few seconds; the answer
is cached in the glactl cache, keyed by CPU model and flags, torch version, model shape, work and thread
counts, and said once on stderr. `glactl info --machine` shows the cached answers. Where the cache cannot
be written, or GLACTL_CALIBRATE=0, the fixed rules hold (precision.py; the first thread count).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glactl.inference.precision import AUTO_BPB_BOUND, apply_precision, int8_available, native_bf16, note
from glactl.runtime.cache import cache_root
from glactl.runtime.threads import torch_threads

CALIBRATION_FILE = "precision-calibration.json"
WORKS = ("decode", "score")
# Bits per byte over float32's on the first 300,000 bytes of wiki.test.raw and of enwiki held-out text, shipped
# gla-enwiki (benchmarks/precision_bpb.py; docs/inference.md, "Cost in bits per byte"): the largest measured,
# rounded up (bfloat16 +0.00008; int8 +0.00037 with bfloat16 GEMMs, +0.00169 with int8 x int8 products).
BPB_COST = {"float32": 0.0, "bfloat16": 0.0001, "int8": 0.0017}
DECODE_STEPS = 24  # timed one-row steps per repeat
SCORE_BYTES = 512  # bytes per timed window
REPEATS = 3  # best of, after one untimed run each; the candidates take turns, so a neighbour's load hits each alike
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

Timer = Callable[[Any, str, int], float]  # (a prepared copy, work, threads) -> seconds of one run
Candidate = tuple[str, int]  # (precision, threads)


@dataclass(frozen=True)
class Calibration:
    """What auto chose for a work on this machine, and the seconds each (precision, threads) took (a step or a window).

    `thread_counts` are the counts that were timed, the rule's first: speeds are said against float32 at it.
    """

    precision: str
    threads: int
    work: str
    thread_counts: tuple[int, ...]
    seconds: dict[Candidate, float]
    cached: bool

    @property
    def speedup(self) -> float:
        """The chosen pair's speed over float32's at the rule's thread count."""
        return self.seconds[("float32", self.thread_counts[0])] / max(
            self.seconds[(self.precision, self.threads)], 1e-12
        )


def label(candidate: Candidate) -> str:
    """'int8@2': a (precision, threads) pair as the cache file writes it."""
    return f"{candidate[0]}@{candidate[1]}"


def parse_label(text: str) -> Candidate | None:
    """The pair a cache label names (None where it names none)."""
    precision, _, threads = str(text).partition("@")
    return (precision, int(threads)) if threads.isdigit() and int(threads) > 0 else None


def enabled() -> bool:
    """Whether auto may measure (GLACTL_CALIBRATE=0 keeps the fixed rule: tests, reproducible timings)."""
    return os.environ.get("GLACTL_CALIBRATE", "1").strip() not in ("0", "off", "no", "false")


def machine() -> dict[str, Any]:
    """The machine facts a calibration holds for: CPU model and the flags that change kernels, torch version."""
    from glactl.runtime.devices import cpu_flags, cpu_name

    flags = cpu_flags() or set()
    return {"cpu": cpu_name(), "flags": [f for f in CPU_FLAGS if f in flags], "torch": torch.__version__}


def candidates(device: torch.device) -> list[str]:
    """The precisions this build can run on `device`, float32 first."""
    found = ["float32"]
    if native_bf16(device):
        found.append("bfloat16")
    if device.type == "cpu" and int8_available():
        found.append("int8")
    return found


def choose(
    seconds: dict[Candidate, float], costs: dict[str, float] = BPB_COST, bound: float = AUTO_BPB_BOUND
) -> Candidate:
    """The fastest pair among those whose precision costs at most `bound` bits per byte; a tie keeps float32, then the
    earlier thread count (the dict's order puts the rule's count first)."""
    allowed = [c for c in seconds if costs.get(c[0], float("inf")) <= bound]
    return min(allowed, key=lambda c: (seconds[c], c[0] != "float32"))


def prepared(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """A copy of `model` (float32 weights) at `precision`, the model left as it is."""
    return apply_precision(copy.deepcopy(model), precision)


def time_run(probe: torch.nn.Module, work: str, threads: int) -> float:
    """Seconds per decode step (one row, DECODE_STEPS steps) or per window of SCORE_BYTES bytes, for one run."""
    inputs = torch.randint(0, 256, (1, SCORE_BYTES), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch_threads(threads):
        start = time.perf_counter()
        if work == "score":
            probe(inputs)
            return time.perf_counter() - start
        state = probe.init_state(1)
        for t in range(DECODE_STEPS):
            _, state = probe.step(inputs[:, t], state)
        return (time.perf_counter() - start) / DECODE_STEPS


def cache_key(facts: dict[str, Any]) -> str:
    """The cache entry's name: a hash of the facts it holds for (machine, model shape, and what was timed)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def model_facts(model: torch.nn.Module) -> dict[str, Any]:
    """The model's shape as its config says it (what a calibration holds for, with the machine)."""
    return model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)


def read_cache(path: Path) -> dict[str, Any]:
    """The cached calibrations ({} where the file is missing or damaged: it is written again whole)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def writable_cache(path: Path, what: str) -> bool:
    """Whether the cache file's folder can be written (made where missing); a note saying the fixed rule holds if not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.access(path.parent, os.W_OK):
            return True
    except OSError:
        pass
    note(f"{what}: cannot write the glactl cache ({path.parent}); using the fixed rule, not a measurement")
    return False


def write_cache(path: Path, known: dict[str, Any]) -> None:
    """Write the cache whole (a temporary file renamed over it); a failed write only loses the cache."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)


def _cached(entry: Any, device: torch.device, thread_counts: tuple[int, ...]) -> Calibration | None:
    """The calibration a cache entry holds, or None where it is not one this run can use."""
    if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), dict):
        return None
    seconds = {parse_label(k): v for k, v in entry["seconds"].items()}
    chosen = (entry.get("precision"), entry.get("chosen_threads"))
    if (
        None in seconds
        or not all(isinstance(v, (int, float)) and v > 0 for v in seconds.values())
        or chosen not in seconds
        or chosen[0] not in candidates(device)
        or ("float32", thread_counts[0]) not in seconds
    ):
        return None
    return Calibration(chosen[0], chosen[1], entry["work"], thread_counts, seconds, cached=True)


def calibrate(
    model: torch.nn.Module,
    work: str,
    threads: int | tuple[int, ...],
    folder: Path | None = None,
    timer: Timer | None = None,
    prepare: Callable[[torch.nn.Module, str], Any] | None = None,
) -> Calibration | None:
    """auto's precision and thread count for `work` with `model` (float32, on the CPU) among `threads` (the rule's
    count first): cached, or measured now and cached; None where auto may not measure here (the caller keeps the
    fixed rules). `prepare` makes each precision's copy and `timer` times one run of it (defaults: prepared, time_run).
    """
    if work not in WORKS:
        raise ValueError(f"work must be one of {WORKS}, got {work!r}")
    thread_counts = (threads,) if isinstance(threads, int) else tuple(dict.fromkeys(threads))
    device = next(model.parameters()).device
    if not enabled() or device.type != "cpu":
        return None
    path = (folder or cache_root()) / CALIBRATION_FILE
    facts = {"machine": machine(), "model": model_facts(model), "work": work, "threads": list(thread_counts)}
    key, known = cache_key(facts), read_cache(path)
    cached = _cached(known.get(key), device, thread_counts)
    if cached is not None:
        return cached
    if not writable_cache(path, "--precision auto"):
        return None
    timer, prepare = timer or time_run, prepare or prepared
    precisions = candidates(device)
    probes = {p: prepare(model, p) for p in precisions}
    pairs = [(p, t) for t in thread_counts for p in precisions]
    taken: dict[Candidate, list[float]] = {c: [] for c in pairs}
    for rounds in range(1 + REPEATS):  # the candidates take turns; the first round is not counted (warm-up)
        for precision, count in pairs:
            seconds = timer(probes[precision], work, count)
            if rounds:
                taken[(precision, count)].append(seconds)
    del probes
    best = {c: min(times) for c, times in taken.items()}
    chosen = choose(best)
    known[key] = {
        **facts,
        "precision": chosen[0],
        "chosen_threads": chosen[1],
        "seconds": {label(c): s for c, s in best.items()},
        "measured": int(time.time()),
    }
    write_cache(path, known)
    result = Calibration(chosen[0], chosen[1], work, thread_counts, best, cached=False)
    baseline = best[("float32", thread_counts[0])]
    ratios = ", ".join(f"{describe(c, thread_counts)} {baseline / s:.2f}x" for c, s in best.items() if s != baseline)
    note(
        f"--precision auto: measured {work} on this CPU ({ratios} float32's speed"
        f"{f' at {thread_counts[0]} thread(s)' if len(thread_counts) > 1 else ''}): {describe(chosen, thread_counts)}; "
        f"cached for this model shape (glactl info --machine shows it)"
    )
    return result


def describe(candidate: Candidate, thread_counts: tuple[int, ...]) -> str:
    """'int8' where one thread count was timed, 'int8 on 2 threads' where several were."""
    precision, threads = candidate
    return precision if len(thread_counts) == 1 else f"{precision} on {threads} thread{'s' if threads != 1 else ''}"

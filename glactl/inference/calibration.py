"""--precision auto decided by measuring this machine, once, and cached.

A fixed rule measured on one or two CPU kinds loses on another: int8 weights decoded the shipped GLA
2.2x faster than float32 on an AVX512-BF16 EPYC but scored text slower than float32 on a Xeon with AMX,
where float32 GEMMs are fast. So the first run of a model's shape on a machine times each precision
this build can run (float32, bfloat16 where native, int8 where torch has the kernel) on the model's own
weights, for the work at hand: one-row decode steps ("decode": generate, complete, serve) or a window
of bytes read at once ("score": perplexity), at the run's thread count. It keeps the fastest whose cost
in bits per byte, measured offline (BPB_COST), stays within AUTO_BPB_BOUND of float32. That takes a
second or two; the answer is cached in the glactl cache, keyed by CPU model and flags, torch version,
model shape, work and threads, and said once on stderr. `glactl info --machine` shows the cached
answers. Where the cache cannot be written, or GLACTL_CALIBRATE=0, the fixed rule in precision.py holds.
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


@dataclass(frozen=True)
class Calibration:
    """What auto chose for a work on this machine, and the seconds each precision took (one step or one window)."""

    precision: str
    work: str
    threads: int
    seconds: dict[str, float]
    cached: bool

    @property
    def speedup(self) -> float:
        """The chosen precision's speed over float32's."""
        return self.seconds["float32"] / max(self.seconds[self.precision], 1e-12)


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


def choose(seconds: dict[str, float], costs: dict[str, float] = BPB_COST, bound: float = AUTO_BPB_BOUND) -> str:
    """The fastest precision among those whose cost in bits per byte stays within `bound` (float32 on a tie)."""
    allowed = [p for p in seconds if costs.get(p, float("inf")) <= bound]
    return min(allowed, key=lambda p: (seconds[p], p != "float32"))


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


def _key(model: torch.nn.Module, work: str, threads: int) -> tuple[str, dict[str, Any]]:
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)
    facts = {"machine": machine(), "model": config, "work": work, "threads": threads}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24], facts


def read_cache(path: Path) -> dict[str, Any]:
    """The cached calibrations ({} where the file is missing or damaged: it is written again whole)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _valid(entry: Any, device: torch.device) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("seconds"), dict)
        and entry.get("precision") in candidates(device)
        and all(isinstance(v, (int, float)) and v > 0 for v in entry["seconds"].values())
        and "float32" in entry["seconds"]
    )


def calibrate(
    model: torch.nn.Module,
    work: str,
    threads: int,
    folder: Path | None = None,
    timer: Timer | None = None,
    prepare: Callable[[torch.nn.Module, str], Any] | None = None,
) -> Calibration | None:
    """auto's precision for `work` with `model` (float32, on the CPU) at `threads`: cached, or measured now and
    cached; None where auto may not measure here (the caller keeps the fixed rule). `prepare` makes each
    precision's copy and `timer` times one run of it (the defaults: prepared, time_run)."""
    if work not in WORKS:
        raise ValueError(f"work must be one of {WORKS}, got {work!r}")
    device = next(model.parameters()).device
    if not enabled() or device.type != "cpu":
        return None
    path = (folder or cache_root()) / CALIBRATION_FILE
    key, facts = _key(model, work, threads)
    known = read_cache(path)
    if _valid(known.get(key), device):
        entry = known[key]
        return Calibration(entry["precision"], work, threads, dict(entry["seconds"]), cached=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(path.parent, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        note(
            f"--precision auto: cannot write the glactl cache ({path.parent}); using the fixed rule, not a measurement"
        )
        return None
    precisions, timer, prepare = candidates(device), timer or time_run, prepare or prepared
    probes = {p: prepare(model, p) for p in precisions}
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    for rounds in range(1 + REPEATS):  # the candidates take turns; the first round is not counted (warm-up)
        for precision in precisions:
            taken = timer(probes[precision], work, threads)
            if rounds:
                seconds[precision].append(taken)
    del probes
    best = {p: min(times) for p, times in seconds.items()}
    chosen = choose(best)
    known[key] = {**facts, "precision": chosen, "seconds": best, "measured": int(time.time())}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
    result = Calibration(chosen, work, threads, best, cached=False)
    ratios = ", ".join(f"{p} {best['float32'] / best[p]:.2f}x" for p in precisions if p != "float32")
    note(
        f"--precision auto: measured {work} on this CPU ({ratios} float32's speed): {chosen}; "
        f"cached for this model shape (glactl info --machine shows it)"
    )
    return result

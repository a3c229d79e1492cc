"""Shared helpers for the benchmark scripts: timing, machine description, markdown tables."""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable

import torch


def machine_line() -> str:
    """One line naming the machine, torch version, threads and date (goes above every table)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}, {datetime.date.today().isoformat()}"
    )


def cpu_flags() -> str:
    """The vector-math flags that decide CPU speed rules (AVX2, FMA, AVX512*, AMX*), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return "unknown"
    keep = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    return " ".join(sorted(keep))


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, min_seconds: float = 0.0) -> float:
    """Best wall time of `fn` over `repeats` runs after `warmup` runs (noise only adds time)."""
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table (printed by every script and pasted into RESULTS.md)."""

    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)

"""Thread counts, the one place for their rules: by kind of work (--threads, OMP_NUM_THREADS, idle cores), one for decoding.

Commands choose a count here (thread_line), set it for the process (set_threads) and run a block with one (torch_threads).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from glactl.errors import InputError

# benchmarks/cpu_defaults.py on the 2-core EPYC while other jobs kept it busy (load average 7): 2 threads
# against 1 took 6.7x as long to train (d64 x 2), 3.9x to score and 7.1x to decode, the oversubscription
# was measured (perplexity 4.6x slower without --threads 1). Byte-by-byte decoding stays on one thread:
# on the idle AVX2 machine a second thread gave 0.84-1.23x for eager and compiled steps of three GLA
# sizes in float32 and int8 (benchmarks/decode_threads.py, RESULTS.md section 8d). Reading, scoring and
# training get the cores that are idle now: measured over BUSY_SAMPLE_SECONDS from /proc/stat, since the
# 1-minute load average still counts a command that has just ended (a second perplexity right after a
# first got one thread of two and ran 1.5x slower); the load average where /proc/stat is missing.
THREAD_KINDS = ("training", "scoring", "decoding")
BUSY_SAMPLE_SECONDS = 0.1


def plural(count: int, word: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """(all ticks, idle ticks) since boot of each CPU in `cpus`, from /proc/stat (OSError where it is missing)."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            cpu = int(name[3:]) if name.startswith("cpu") and name[3:].isdigit() else None
            if cpu in cpus:
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[cpu] = (sum(ticks), ticks[3] + ticks[4])
    return times


def busy_cores(cpus: set[int], seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """How many of `cpus` other work keeps busy right now (this process sleeps while it looks); None if unknown."""
    try:
        before = cpu_times(cpus)
        time.sleep(seconds)
        after = cpu_times(cpus)
    except (OSError, ValueError):
        return None
    busy, seen = 0.0, 0
    for cpu, (total, idle) in after.items():
        if cpu in before and total > before[cpu][0]:
            busy += 1.0 - (idle - before[cpu][1]) / (total - before[cpu][0])
            seen += 1
    return busy if seen else None


def default_threads(kind: str) -> tuple[int, str]:
    """(threads, why) for a kind of work when --threads is not given."""
    if kind not in THREAD_KINDS:
        raise ValueError(f"kind of work must be one of {THREAD_KINDS}, got {kind!r}")
    if kind == "decoding":
        return decoding_threads(None), "byte-by-byte decoding is too small to share between threads"
    return idle_cores()


def usable_cpus() -> set[int]:
    """The CPUs this process may run on."""
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many CPUs this process may run on."""
    return len(usable_cpus())


def idle_cores() -> tuple[int, str]:
    """(cores that other work leaves idle now, at least 1; the line that says how that was found)."""
    cpus = usable_cpus()
    cores, busy = len(cpus), busy_cores(cpus)
    if busy is not None:
        source = f"{busy:.1f} busy over the last {BUSY_SAMPLE_SECONDS:g} s"
    else:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        source = f"load average {busy:.1f}"
    idle = max(1, min(cores, int(cores - busy + 0.5)))
    return idle, f"{plural(idle, 'idle core')} of {cores}, {source}"


# OMP_NUM_THREADS as it was when glactl started (set_threads writes it later for child processes)
_ENVIRONMENT_THREADS = os.environ.get("OMP_NUM_THREADS", "")


def environment_threads() -> int | None:
    """The thread count the user gave in OMP_NUM_THREADS before glactl started (a positive integer), else None."""
    value = _ENVIRONMENT_THREADS.strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_line(kind: str, threads: int | None) -> tuple[int, str]:
    """The count to use for `kind` and the line that says how it was chosen ("" when --threads gave it)."""
    if threads is not None:
        return threads, ""
    count = environment_threads()
    if count is not None:
        why = f"OMP_NUM_THREADS={count}"
    else:
        count, why = default_threads(kind)
    return count, f"threads: {plural(count, 'thread')} for {kind}: {why} (--threads N to choose)"


def thread_choices(kind: str, threads: int | None) -> tuple[tuple[int, ...], str]:
    """The counts `--precision auto` may time for `kind`, the rule's count first, and how they were found.

    One count where --threads or OMP_NUM_THREADS gives it (with thread_line's line). Otherwise decoding times 1
    and every core (no sampling of the load, so a cached choice costs nothing at start; a count above 1 is capped
    at the idle cores when it is used), and the rest time the idle cores and 1.
    """
    if threads is not None or environment_threads() is not None:
        count, why = thread_line(kind, threads)
        return (count,), why
    if kind == "decoding":
        cores = usable_cores()
        return ((1,) if cores == 1 else (1, cores)), plural(cores, "core")
    idle, why = default_threads(kind)
    return ((1,) if idle == 1 else (idle, 1)), why


def affordable(count: int) -> int:
    """`count` threads, or fewer where other work keeps cores busy now (a chosen count is never oversubscribed)."""
    return count if count <= 1 else min(count, idle_cores()[0])


def chosen_line(kind: str, counts: tuple[int, ...], why: str, used: int, measured: bool) -> str:
    """The line saying how many threads `kind` ran on and why, for counts from thread_choices ("" where --threads
    gave the count)."""
    if len(counts) == 1 and (not why or why.startswith("threads:")):  # --threads, or OMP_NUM_THREADS's line
        return why
    others = " and ".join(str(c) for c in counts if c != used)
    how = f"measured faster here than {others} ({why})" if measured and others else why
    return f"threads: {plural(used, 'thread')} for {kind}: {how} (--threads N to choose)"


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None = leave torch's default); returns the count in use."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return torch.get_num_threads()


def decoding_threads(threads: int | None) -> int:
    """The intra-op threads byte-by-byte decoding runs on: `threads` where the caller asks for a count, else one.

    Byte-by-byte steps of these models are too small to share between threads: a second
    thread only adds synchronisation (5x slower on a busy 2-core machine), so decoding uses
    one thread unless the caller asks for more.
    """
    return threads or 1


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with `threads` intra-op threads (None = leave as is), restoring the count after."""
    if threads is None or threads == torch.get_num_threads():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

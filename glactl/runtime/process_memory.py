"""Process-wide memory setting for the glactl command (no torch import: `glactl --help` stays light).

A 4096-byte window of the shipped model allocates and frees about 0.3 GB of activations. glibc returns
freed memory at the top of its heap to the system and maps large blocks afresh, so every window paid
21,000-78,000 page faults; with freed memory kept (no trimming, mmap threshold 32 MiB) 200-350, and a
window took 828-1025 ms against 1012-1100 (benchmarks/RESULTS.md section 8d). 32 MiB is the largest
threshold glibc takes on 64-bit, and the window's [4096, 2048] MLP products are exactly 32 MiB, so they
were still mapped and faulted in afresh each time (16 ms for one such product against 2.3 ms into
reused memory, measured): glactl now maps no block on its own (M_MMAP_MAX 0), so every block is reused.
The CLI process asks for that at start; the library never changes its host process's allocator.
"""

from __future__ import annotations

import ctypes
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # mallopt parameters (malloc.h)


def _mallopt() -> Any:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the running process's own C library
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (fewer page faults per window); False where not glibc."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def share_one_heap() -> bool:
    """Ask glibc's malloc to serve every thread from one heap; False where not glibc.

    glibc gives threads their own heaps (up to 8 per core), and with freed memory kept each heap holds on to
    the most its threads ever used: the server's request threads then kept 30 MiB more for the same work
    (docs/serve.md). Its threads mostly wait on the engine, so sharing one heap costs no measurable speed.
    """
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, 1))

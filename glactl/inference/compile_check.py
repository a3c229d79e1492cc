"""--compile auto keeps a compiled decode step only where it beats the eager one on this machine, timed once.

The compile rule (compiled_step.py) was measured on one CPU kind. A compile costs tens of seconds, so it is
never timed up front; but once a package is built for a run long enough to pay for it, timing it against
eager steps costs a fraction of a second. The verdict is cached beside the precision calibrations, keyed by
CPU model and flags, torch version, model shape, precision, batch and threads: where eager won, later auto
runs skip the package (no build, no load); `--compile on` still forces it; GLACTL_CALIBRATE=0 keeps the rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glactl.inference.calibration import (
    REPEATS,
    cache_key,
    enabled,
    machine,
    model_facts,
    read_cache,
    writable_cache,
    write_cache,
)
from glactl.inference.precision import note
from glactl.runtime.cache import cache_root

COMPILE_FILE = "compile-calibration.json"
STEPS = 16  # timed steps per repeat

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
StepTimer = Callable[[Step, Any, int], float]  # (a step, the model, batch) -> seconds per step


def time_steps(step: Step, model: Any, batch: int) -> float:
    """Seconds per decode step of `batch` rows through `step`, from a fresh state in the form the step runs on."""
    tokens = torch.randint(0, 256, (batch, STEPS), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(next(model.parameters()).device)
    with torch.inference_mode():
        state = model.init_state(batch)
        state = model.decode_state(state) if hasattr(model, "decode_state") else state  # a window preallocated
        start = time.perf_counter()
        for t in range(STEPS):
            _, state = step(tokens[:, t], state)
        return (time.perf_counter() - start) / STEPS


def _facts(model: Any, batch: int) -> dict[str, Any]:
    return {
        "machine": machine(),
        "model": model_facts(model),
        "precision": getattr(model, "precision", "float32"),
        "batch": batch,
        "threads": torch.get_num_threads(),
    }


def cached_verdict(model: Any, batch: int, folder: Path | None = None) -> bool | None:
    """Whether the compiled step measured faster than eager here for this model and batch (None: not measured)."""
    if not enabled():
        return None
    entry = read_cache((folder or cache_root()) / COMPILE_FILE).get(cache_key(_facts(model, batch)))
    return (
        entry["compiled_faster"] if isinstance(entry, dict) and isinstance(entry.get("compiled_faster"), bool) else None
    )


def compiled_pays(
    model: Any, batch: int, compiled: Step, folder: Path | None = None, timer: StepTimer | None = None
) -> bool:
    """Whether to run `compiled` rather than eager steps: the cached verdict, or one measured now (the two take turns,
    one untimed round, then the best of REPEATS) and cached. True where nothing may be measured (the fixed rule)."""
    known = cached_verdict(model, batch, folder)
    if known is not None:
        return known
    path = (folder or cache_root()) / COMPILE_FILE
    if not enabled() or not writable_cache(path, "--compile auto"):
        return True
    timer = timer or time_steps
    steps = {"compiled": compiled, "eager": model.step}
    taken: dict[str, list[float]] = {name: [] for name in steps}
    for rounds in range(1 + REPEATS):
        for name, step in steps.items():
            seconds = timer(step, model, batch)
            if rounds:
                taken[name].append(seconds)
    best = {name: min(times) for name, times in taken.items()}
    faster = best["compiled"] < best["eager"]
    facts = _facts(model, batch)
    known_all = read_cache(path)
    known_all[cache_key(facts)] = {**facts, "compiled_faster": faster, "seconds": best, "measured": int(time.time())}
    write_cache(path, known_all)
    ratio = best["eager"] / max(best["compiled"], 1e-12)
    note(
        f"--compile auto: the compiled step ran at {ratio:.2f}x eager's speed on this CPU at batch {batch}: "
        + ("kept" if faster else "steps run eager (--compile on forces the compiled step)")
        + "; cached for this model shape"
    )
    return faster

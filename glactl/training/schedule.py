"""The learning-rate schedule of a run: linear warmup, then cosine decay (or constant) over its steps or time budget.

A pure function of (step, elapsed seconds), so a resumed run continues on the same curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MIN_LR_RATIO = 0.1


@dataclass
class Schedule:
    """Linear warmup to `peak`, then cosine down to 10% of it (or constant) over steps or the time budget."""

    peak: float
    warmup: int
    total_steps: int | None
    time_budget: float | None
    kind: str = "cosine"
    warmup_seconds: float | None = None  # with a time budget: the warmup also ends once this much time has passed

    def lr(self, step: int, elapsed: float) -> float:
        """Learning rate for the update that makes step `step + 1`."""
        if step < self.warmup:
            ramp = (step + 1) / self.warmup
            if self.warmup_seconds:
                ramp = max(ramp, elapsed / self.warmup_seconds)
            if ramp < 1.0:
                return self.peak * ramp
        if self.kind == "constant":
            return self.peak
        progress = 0.0
        if self.total_steps is not None:
            progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.time_budget is not None:
            progress = max(progress, elapsed / self.time_budget)
        progress = min(1.0, max(0.0, progress))
        return self.peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "peak_lr": self.peak,
            "warmup": self.warmup,
            "total_steps": self.total_steps,
            "time_budget_seconds": self.time_budget,
            "warmup_seconds": self.warmup_seconds,
            "min_lr_ratio": MIN_LR_RATIO,
        }

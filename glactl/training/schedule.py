"""The learning-rate schedule of a run: linear warmup, then cosine decay (or constant) over its steps or time budget.

A pure function of (step, elapsed seconds), so a resumed run continues on the same curve. A run resumed with
another end (--steps or --time) continues the cosine from the rate it stands at (`continue_schedule`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from glactl.errors import InputError

MIN_LR_RATIO = 0.1


@dataclass
class Schedule:
    """Linear warmup to `peak`, then cosine down to 10% of it (or constant) over steps or the time budget.

    `extended_at` ({step, elapsed_seconds, lr}) is set when a resumed run got another end: from the update of
    that step on, the cosine runs from that lr down to the floor at the new end instead of from the peak.
    """

    peak: float
    warmup: int
    total_steps: int | None
    time_budget: float | None
    kind: str = "cosine"
    warmup_seconds: float | None = None  # with a time budget: the warmup also ends once this much time has passed
    extended_at: dict[str, float] | None = None

    def warmup_ramp(self, step: int, elapsed: float) -> float | None:
        """The warmup's fraction of the peak for the update that makes step `step + 1`; None once warmup is over."""
        if step >= self.warmup:
            return None
        ramp = (step + 1) / self.warmup
        if self.warmup_seconds:
            ramp = max(ramp, elapsed / self.warmup_seconds)
        return ramp if ramp < 1.0 else None

    def _progress(self, step: float, elapsed: float, start_step: float, start_elapsed: float) -> float:
        """How far the cosine is from (start_step, start_elapsed) to the end, 0..1: the further of steps and time."""
        progress = 0.0
        if self.total_steps is not None:
            progress = (step - start_step) / max(1.0, self.total_steps - start_step)
        if self.time_budget is not None:
            progress = max(progress, (elapsed - start_elapsed) / max(1e-9, self.time_budget - start_elapsed))
        return min(1.0, max(0.0, progress))

    def lr(self, step: int, elapsed: float) -> float:
        """Learning rate for the update that makes step `step + 1`."""
        ramp = self.warmup_ramp(step, elapsed)
        if ramp is not None:
            return self.peak * ramp
        if self.kind == "constant":
            return self.peak
        if self.extended_at is not None:
            start = self.extended_at
            floor = MIN_LR_RATIO * self.peak
            progress = self._progress(step, elapsed, start["step"], start["elapsed_seconds"])
            return floor + (start["lr"] - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        progress = self._progress(step, elapsed, self.warmup, 0.0)
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
            "extended_at": self.extended_at,
        }

    @classmethod
    def from_dict(cls, document: Any, where: str) -> Schedule:
        """The schedule a trainer.json recorded (`where` names the file); InputError (one line) if it is not one."""

        def number(value: Any, kinds: tuple[type, ...] = (int, float)) -> bool:
            return isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)

        d = document if isinstance(document, dict) else {}
        extended = d.get("extended_at")
        good = (
            d.get("kind") in ("cosine", "constant")
            and number(d.get("peak_lr"))
            and number(d.get("warmup"), (int,))
            and (d.get("total_steps") is None or number(d.get("total_steps"), (int,)))
            and all(d.get(k) is None or number(d.get(k)) for k in ("time_budget_seconds", "warmup_seconds"))
            and (
                extended is None
                or (
                    isinstance(extended, dict)
                    and set(extended) == {"step", "elapsed_seconds", "lr"}
                    and all(number(v) for v in extended.values())
                )
            )
        )
        if not good:
            raise InputError(f"{where}: missing or bad field 'schedule'")
        return cls(
            float(d["peak_lr"]),
            d["warmup"],
            d.get("total_steps"),
            d.get("time_budget_seconds"),
            d["kind"],
            d.get("warmup_seconds"),
            dict(extended) if extended is not None else None,
        )


def continue_schedule(saved: Schedule, new: Schedule, step: int, elapsed: float) -> Schedule:
    """The schedule a run resumed at (`step`, `elapsed`) trains on: `new` (its settings now) continuing `saved`.

    The same end (--steps and --time): the saved curve, so the run continues exactly. Another end once the
    cosine has begun: from the rate of the last trained step down to the floor at the new end, never back up
    (docs/design.md §6). Another end during the warmup: the warmup goes on, then the cosine over the new end.
    """
    if (new.total_steps, new.time_budget) == (saved.total_steps, saved.time_budget):
        return replace(new, extended_at=saved.extended_at)
    if new.kind != "cosine" or step == 0 or saved.warmup_ramp(step, elapsed) is not None:
        return new
    last = step - 1
    return replace(new, extended_at={"step": last, "elapsed_seconds": elapsed, "lr": saved.lr(last, elapsed)})

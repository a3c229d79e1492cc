"""Where a training run stands (step, tokens, time, validation scores): what the loop advances, the summary and
trainer.json record, and --resume restores."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Counters and scores of a run. The validation score, lower is better: bits per byte for text; for a task the
    masked loss (nats per answer), which also picks best/. last_metrics: the last evaluation's metrics."""

    score_key: str  # val_bpb (text) or val_loss (task)
    step: int = 0
    tokens_seen: int = 0
    elapsed_before: float = 0.0
    best_bpb: float | None = None
    last_bpb: float | None = None
    start_bpb: float | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    current_lr: float = 0.0
    started: float | None = None  # time.monotonic() when this process began training

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's trainer.json."""
        self.step = saved["step"]
        self.tokens_seen = saved["tokens_seen"]
        self.elapsed_before = float(saved["elapsed_seconds"])
        self.best_bpb = saved.get(f"best_{self.score_key}")
        self.last_bpb = saved.get(f"last_{self.score_key}")
        self.start_bpb = saved.get(f"start_{self.score_key}")
        self.last_metrics = dict(saved.get("last_eval") or {})

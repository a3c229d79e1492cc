"""Saving a training run: `checkpoint/` (weights, optimizer, trainer.json for --resume) and `best/` (weights only).

Every rank holds the same weights; rank 0 alone writes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glactl.storage.checkpoint import save_model
from glactl.storage.trainer_state import write_trainer_files
from glactl.training.options import RESUMED, TrainOptions
from glactl.training.run_log import summary
from glactl.training.setup import RunParts
from glactl.training.state import Progress


@dataclass
class Checkpoints:
    """The checkpoint/ and best/ folders of the run in `out`, written from its parts and progress."""

    options: TrainOptions
    parts: RunParts
    progress: Progress
    out: Path
    is_main: bool

    def settings(self) -> dict[str, Any]:
        o = self.options
        return {name: getattr(o, name) for name in RESUMED}

    def trainer_document(self) -> dict[str, Any]:
        parts, p = self.parts, self.progress
        return {
            **({"data_fingerprint": parts.data_fingerprint} if parts.data_fingerprint else {}),
            "commands": parts.commands,
            "step": p.step,
            "tokens_seen": p.tokens_seen,
            "elapsed_seconds": p.elapsed(),
            f"best_{p.score_key}": p.best_bpb,
            f"last_{p.score_key}": p.last_bpb,
            f"start_{p.score_key}": p.start_bpb,
            **({"last_eval": p.last_metrics} if parts.task else {}),
            "schedule": parts.schedule.to_dict(),
            "settings": self.settings(),
            "data": list(self.options.data),
            "data_position": {
                "sampler": "task-v1" if parts.task else "random-windows-v1",
                "seed": self.options.seed,
                "next_step": p.step,
            },
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        }

    def save_checkpoint(self) -> None:
        """Save `checkpoint/` (weights, optimizer, trainer state) by a whole-folder swap."""
        if not self.is_main:  # every rank holds the same weights; rank 0 writes them
            return
        trainer = self.trainer_document()
        save_model(
            self.out / "checkpoint",
            self.parts.model,
            training=summary(self.options, self.parts, self.progress),
            extra_files=lambda folder: write_trainer_files(folder, self.parts.optimizer, trainer),
        )

    def save_best(self) -> None:
        if not self.is_main:
            return
        save_model(self.out / "best", self.parts.model, training=summary(self.options, self.parts, self.progress))

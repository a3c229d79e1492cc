"""What a training run tells: the records of `metrics.jsonl`, the lines on the terminal, and the summary of config.json.

Kept apart from the loop, so the loop reads as training and the formats stay in one place."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glactl.report.display import clock
from glactl.report.progress import Reporter
from glactl.runtime.distributed import Distributed
from glactl.runtime.threads import plural
from glactl.training.options import TrainOptions
from glactl.training.run_folder import METRICS_FILE
from glactl.training.setup import RunParts
from glactl.training.state import Progress
from glactl.version import __version__

LN2 = math.log(2.0)


def summary(options: TrainOptions, parts: RunParts, progress: Progress) -> dict[str, Any]:
    """The training summary stored in config.json."""
    o, p = options, progress
    if parts.task is not None:
        scores = {
            "task": parts.task.settings(),
            "val_bits_per_byte": None,
            "best_val_bits_per_byte": None,
            "val_loss": p.last_bpb,
            "best_val_loss": p.best_bpb,
            **{k: v for k, v in p.last_metrics.items() if k != "val_loss"},
        }
    else:
        scores = {"val_bits_per_byte": p.last_bpb, "best_val_bits_per_byte": p.best_bpb}
    return {
        "steps": p.step,
        "tokens_seen": p.tokens_seen,
        "data": [{k: v for k, v in s.items() if k != "cache"} for s in parts.data.sources] if parts.data else [],
        "valid": o.valid,
        **scores,
        "wall_time_seconds": round(p.elapsed(), 3),
        "glactl_version": __version__,
        "command": parts.commands[0] if parts.commands else None,  # the command that started the run
        **({"resumed_with": parts.commands[1:]} if len(parts.commands) > 1 else {}),
        "steps_planned": o.steps,
        "time_budget_seconds": o.time_budget,
        "seq_len": o.seq_len,
        "batch_size": o.batch_size,
        "grad_accum": o.grad_accum,
        "lr": parts.schedule.peak,
        "seed": o.seed,
        "device": parts.device.type,
        "dtype": parts.precision.name,
        "threads": parts.threads,
        "init_from": parts.init_from,
    }


@dataclass
class RunLog:
    """Writes a run's metrics.jsonl records (rank 0) and its permanent lines (above the live bar on a terminal)."""

    options: TrainOptions
    parts: RunParts
    progress: Progress
    dist: Distributed
    report: Reporter
    out: Path

    def write_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def start(self) -> None:
        """The notes of the set-up, then what is trained, where, and until when."""
        o, parts = self.options, self.parts
        for note in parts.notes:
            self.report.line(note)
        n_params = parts.model.num_parameters()
        target = f"{o.steps} steps" if o.steps is not None else ""
        if o.time_budget is not None:
            target += (" or " if target else "") + f"{clock(o.time_budget)} of training"
        self.report.line(
            f"training {parts.config.mixer} ({n_params / 1e6:.2f}M parameters, d {parts.config.d_model}, "
            f"{plural(parts.config.n_layers, 'layer')}) on {parts.device.type}/{parts.precision.name}, {plural(parts.threads, 'thread')}, "
            f"seq {o.seq_len} x batch {o.batch_size}"
            + (f" x {o.grad_accum} accum" if o.grad_accum > 1 else "")
            + (f" over {self.dist.world} processes ({self.dist.backend})" if self.dist.enabled else "")
            + f", lr {parts.schedule.peak:g}, until {target}; run folder {self.out}"
        )

    def first_evaluation(self) -> None:
        """The score before any training (step 0)."""
        self.write_metrics(
            {
                "kind": "eval",
                "step": 0,
                "tokens": 0,
                **({"val_bpb": self.progress.start_bpb} if self.parts.task is None else self.progress.last_metrics),
                "wall_time": 0.0,
            }
        )
        self.report.line(f"step 0 | {self._eval_text()}")

    def nothing_to_train(self) -> None:
        """A resumed run that already reached its --steps or --time."""
        o, p = self.options, self.progress
        reached = (
            f"step {p.step} of --steps {o.steps}"
            if o.steps is not None and p.step >= o.steps
            else f"its --time budget ({clock(p.elapsed())} trained)"
        )
        self.report.line(
            f"nothing to train: the run already reached {reached}; "
            "pass a larger --steps or --time with --resume to train further"
        )

    def train(self, mean: float, rate: float, use_steps: bool) -> None:
        """The train record, line and bar of the steps since the last one: mean loss (nats), tokens per second."""
        o, p = self.options, self.progress
        record = {
            "kind": "train",
            "step": p.step,
            "tokens": p.tokens_seen,
            "loss": round(mean, 6),
            "bpb": round(mean / LN2, 6),
            "lr": p.current_lr,
            "tokens_per_s": round(rate, 1),
            "wall_time": round(p.elapsed(), 3),
        }
        if self.parts.task is not None:  # a task's loss is per answer, not per byte of text
            del record["bpb"]
        self.write_metrics(record)
        fields = [
            f"step {p.step}" + (f"/{o.steps}" if use_steps else ""),
            f"loss {mean:.4f}",
            f"bpb {mean / LN2:.3f}",
            f"lr {p.current_lr:.2e}",
            f"{rate:,.0f} tok/s",
        ]
        if self.parts.task is not None:
            del fields[2]
        # A permanent line every --log-every steps (above the live bar on a terminal), as nanoGPT prints.
        self.report.line(" | ".join(fields + [f"elapsed {clock(p.elapsed())}", f"ETA {clock(self._eta(rate))}"]))
        self.report.update(p.step if use_steps else p.elapsed(), fields[0].replace("step ", ""))

    def _eta(self, rate: float) -> float:
        o, p = self.options, self.progress
        left = []
        if o.steps is not None and rate > 0:
            left.append((o.steps - p.step) * o.seq_len * o.batch_size * o.grad_accum / rate)
        if o.time_budget is not None:
            left.append(o.time_budget - p.elapsed())
        return max(0.0, min(left)) if left else 0.0

    def evaluation(self, improved: bool) -> None:
        """The eval record and line of the evaluation just made; `improved`: it was saved as best/."""
        p = self.progress
        self.write_metrics(
            {
                "kind": "eval",
                "step": p.step,
                "tokens": p.tokens_seen,
                **self._eval_fields(),
                "lr": p.current_lr,
                "wall_time": round(p.elapsed(), 3),
            }
        )
        line = f"eval step {p.step} | {self._eval_text()} | best {p.best_bpb:.4f}" + (
            " (saved best/)" if improved else ""
        )
        self.report.line(line)  # permanent, above the live bar on a terminal

    def done(self) -> dict[str, Any]:
        """The closing line; returns the summary of the finished run (with its start score and folder)."""
        p = self.progress
        result = summary(self.options, self.parts, p)
        result["start_val_bits_per_byte"] = p.start_bpb
        result["run_folder"] = str(self.out)
        if self.parts.task is not None:
            result["start_val_bits_per_byte"] = None
            result["start_val_loss"] = p.start_bpb
        self.report.line(
            f"done: step {p.step}, {p.tokens_seen:,} tokens, {self._eval_text()} "
            f"(best {p.best_bpb:.4f}), {clock(p.elapsed())}; checkpoint in {self.out / 'checkpoint'}"
        )
        return result

    def _eval_fields(self) -> dict[str, float]:
        """The last evaluation as metrics.jsonl fields: val_bpb (text), or val_loss, accuracy[, sequence_accuracy] (task)."""
        if self.parts.task is None:
            return {"val_bpb": round(self.progress.last_bpb, 6)}
        return dict(self.progress.last_metrics)

    def _eval_text(self) -> str:
        if self.parts.task is None:
            return f"val bpb {self.progress.last_bpb:.4f}"
        m = self.progress.last_metrics
        return f"val loss {m['val_loss']:.4f} | accuracy {m['accuracy']:.4f}" + (
            f" | sequences {m['sequence_accuracy']:.4f}" if "sequence_accuracy" in m else ""
        )

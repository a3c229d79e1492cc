"""One results.json entry per model: the mean of its seeds' measurements and, with --seeds, their spread."""

from __future__ import annotations

import re
import statistics
from typing import Any

RESULT_KEYS = (
    "model",
    "task",
    "parameters",
    "train_tokens_per_second",
    "dtype",
    "val_bits_per_byte",
    "curve",
    "generate_tokens_per_second",
    "decode",
    "state_bytes",
    "sample",
    "config",
)
SPREAD_KEYS = ("val_bits_per_byte_std", "seeds")
# --task rows: accuracy on the task's test set; sequence_accuracy only for tasks scored per whole sequence;
# baselines: the task's chance and trivial floors on that test set (the same in every row).
TASK_RESULT_KEYS = (
    "model",
    "task",
    "parameters",
    "train_tokens_per_second",
    "dtype",
    "accuracy",
    "sequence_accuracy",
    "baselines",
    "val_loss",
    "curve",
    "state_bytes",
    "task_settings",
    "config",
)
TASK_SPREAD_KEYS = ("accuracy_std", "seeds")


def summarize(model: str, results: list[dict[str, Any]], spread: bool, dtype: dict[str, Any]) -> dict[str, Any]:
    """One results.json entry: means over seeds (with --seeds, also the spread and the seeds' values).

    `dtype`: the comparison's training dtype and how it was chosen (runner.comparison_dtype), the same in every entry.
    """
    first = results[0]
    bpbs = [r["val_bits_per_byte"] for r in results]
    entry = {
        "model": model,
        "task": "lm",
        "parameters": first["parameters"],
        "train_tokens_per_second": round(statistics.fmean(r["train_tokens_per_second"] for r in results), 1),
        "dtype": dict(dtype),
        "val_bits_per_byte": round(statistics.fmean(bpbs), 6),
        "curve": mean_curve([r["curve"] for r in results]),
        "generate_tokens_per_second": {
            k: round(statistics.fmean(r["generate_tokens_per_second"][k] for r in results), 1)
            for k in first["generate_tokens_per_second"]
        },
        "decode": dict(first["decode"]),
        "state_bytes": dict(first["state_bytes"]),
        "sample": first["sample"],
        "config": first.get("config"),
    }
    if spread:
        entry["val_bits_per_byte_std"] = round(statistics.stdev(bpbs), 6) if len(bpbs) > 1 else 0.0
        entry["seeds"] = [
            {"seed": _seed_of(r), "val_bits_per_byte": r["val_bits_per_byte"], "run": r.get("run")} for r in results
        ]
    return entry


def summarize_task(
    model: str,
    results: list[dict[str, Any]],
    spread: bool,
    task: Any,
    dtype: dict[str, Any],
    baselines: dict[str, Any],
) -> dict[str, Any]:
    """One results.json entry of a --task comparison: means over seeds (with --seeds, the spread of accuracy).

    `dtype` as for `summarize`; `baselines`: the task's floors on its test set (Task.baselines).
    """
    first = results[0]
    accuracies = [r["accuracy"] for r in results]
    entry: dict[str, Any] = {
        "model": model,
        "task": task.name,
        "parameters": first["parameters"],
        "train_tokens_per_second": round(statistics.fmean(r["train_tokens_per_second"] for r in results), 1),
        "dtype": dict(dtype),
        "accuracy": round(statistics.fmean(accuracies), 6),
    }
    if task.whole_sequence:
        entry["sequence_accuracy"] = round(statistics.fmean(r["sequence_accuracy"] for r in results), 6)
    entry.update(
        {
            "baselines": baselines,
            "val_loss": round(statistics.fmean(r["val_loss"] for r in results), 6),
            "curve": mean_curve([r["curve"] for r in results]),
            "state_bytes": dict(first["state_bytes"]),
            "task_settings": task.settings(),
            "config": first["config"],
        }
    )
    if spread:
        entry["accuracy_std"] = round(statistics.stdev(accuracies), 6) if len(accuracies) > 1 else 0.0
        entry["seeds"] = [
            {
                "seed": _seed_of(r),
                "accuracy": r["accuracy"],
                "run": r.get("run"),
                **({"sequence_accuracy": r["sequence_accuracy"]} if task.whole_sequence else {}),
            }
            for r in results
        ]
    return entry


def _seed_of(result: dict[str, Any]) -> int | None:
    match = re.search(r"-seed(\d+)$", str(result.get("run", "")))
    return int(match.group(1)) if match else None


def mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Point-by-point mean of several seeds' curves over the points they all have."""
    length = min(len(c) for c in curves)
    values = [k for k in curves[0][0] if k not in ("step", "tokens")] if length else []  # bpb, or a task's metrics
    return [
        {
            "step": round(statistics.fmean(c[i]["step"] for c in curves)),
            "tokens": round(statistics.fmean(c[i]["tokens"] for c in curves)),
            **{k: round(statistics.fmean(c[i][k] for c in curves), 6) for k in values},
        }
        for i in range(length)
    ]

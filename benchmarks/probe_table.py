"""Combine the probe runs of `glactl compare --task` (benchmarks/probes/<task>/results.json) into one table.

Usage: python benchmarks/probe_table.py [benchmarks/probes]   (prints markdown on stdout)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("mqar", "sort", "selective-copy")


def load(folder: Path) -> dict[str, dict[str, dict]]:
    """task -> model -> results.json entry, for the tasks whose results exist."""
    found: dict[str, dict[str, dict]] = {}
    for task in TASKS:
        path = folder / task / "results.json"
        if path.is_file():
            found[task] = {entry["model"]: entry for entry in json.loads(path.read_text())}
    return found


def cell(entry: dict | None) -> str:
    """'0.984' or '0.998 (0.96)' with the whole-sequence accuracy in brackets; '-' when not run."""
    if entry is None:
        return "-"
    text = f"{entry['accuracy']:.3f}"
    if entry.get("sequence_accuracy") is not None:
        text += f" ({entry['sequence_accuracy']:.2f})"
    return text


def table(found: dict[str, dict[str, dict]]) -> str:
    models: list[str] = []
    for by_model in found.values():
        models += [m for m in by_model if m not in models]
    tasks = [t for t in TASKS if t in found]
    lines = [
        "| model | params | " + " | ".join(f"{t} accuracy" for t in tasks) + " | state after a task sequence |",
        "|---|---:|" + "---:|" * len(tasks) + "---:|",
    ]
    for model in models:
        entries = [found[t].get(model) for t in tasks]
        first = next(e for e in entries if e is not None)
        states = ", ".join(f"{next(iter(e['state_bytes'].values())) / 1024:.1f} KiB" for e in entries if e is not None)
        lines.append(
            f"| {model} | {first['parameters'] / 1e6:.2f}M | " + " | ".join(cell(e) for e in entries) + f" | {states} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "probes")))

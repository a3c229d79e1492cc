"""`glactl info --machine`: this machine as glactl sees it (CPU, the flags that pick kernels, torch, cores) and the
choices `--precision auto` measured here, from the calibration cache."""

from __future__ import annotations

import json
import sys
from typing import Any

from glactl.cli.common import print_facts, write


def machine_document() -> dict[str, Any]:
    """{"machine", "cores", "cache", "calibrations": [...]}: the facts and every cached calibration for them."""
    import os

    from glactl.inference.calibration import CALIBRATION_FILE, enabled, machine, read_cache
    from glactl.runtime.cache import cache_root

    here = machine()
    path = cache_root() / CALIBRATION_FILE
    calibrations = []
    for entry in read_cache(path).values():
        if not isinstance(entry, dict) or entry.get("machine") != here or not isinstance(entry.get("seconds"), dict):
            continue
        model, seconds = entry.get("model") or {}, entry["seconds"]
        float32 = seconds.get("float32") or 0
        calibrations.append(
            {
                "model": {key: model.get(key) for key in ("mixer", "d_model", "n_layers", "n_heads", "context")},
                "work": entry.get("work"),
                "threads": entry.get("threads"),
                "precision": entry.get("precision"),
                "speed_vs_float32": {p: round(float32 / s, 3) for p, s in seconds.items() if s},
            }
        )
    return {
        "machine": here,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "calibration": "on" if enabled() else "off (GLACTL_CALIBRATE=0: the fixed rule)",
        "cache": str(path),
        "calibrations": calibrations,
    }


def describe_machine(json_out: bool) -> None:
    """Print the machine document: JSON, or a table of facts then one line per cached calibration."""
    document = machine_document()
    if json_out:
        write(sys.stdout, json.dumps(document) + "\n")
        return
    here = document["machine"]
    rows = [
        ("cpu", here["cpu"]),
        ("kernel flags", " ".join(here["flags"]) or "none of them"),
        ("torch", here["torch"]),
        ("cores", str(document["cores"])),
        ("--precision auto", f"measured per model shape, {document['calibration']}"),
        ("cache", document["cache"]),
    ]
    print_facts("this machine", rows)
    if not document["calibrations"]:
        write(sys.stdout, "no calibration cached for this machine yet (the first generate or perplexity makes one)\n")
    for c in document["calibrations"]:
        m = c["model"]
        speeds = ", ".join(f"{p} {x:.2f}x" for p, x in c["speed_vs_float32"].items() if p != "float32")
        write(
            sys.stdout,
            f"{m['mixer']} d{m['d_model']} x {m['n_layers']} layers, {c['work']}, {c['threads']} thread(s): "
            f"{c['precision']} ({speeds} float32's speed)\n",
        )

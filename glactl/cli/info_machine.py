"""`glactl info --machine`: this machine as glactl sees it (CPU, the flags that pick kernels, torch, cores) and the
choices `--precision auto` (precision and threads) and `--compile auto` measured here, from the calibration caches."""

from __future__ import annotations

import json
import sys
from typing import Any

from glactl.cli.common import print_facts, write


def machine_document() -> dict[str, Any]:
    """{"machine", "cores", "cache", "calibrations": [...], "compile_checks": [...]}: the facts and what is cached."""
    from glactl.inference.calibration import CALIBRATION_FILE, enabled, machine, parse_label, read_cache
    from glactl.runtime.cache import cache_root
    from glactl.runtime.threads import usable_cores

    here = machine()
    path = cache_root() / CALIBRATION_FILE
    calibrations = []
    for entry in read_cache(path).values():
        if not isinstance(entry, dict) or entry.get("machine") != here or not isinstance(entry.get("seconds"), dict):
            continue
        timed = entry.get("threads") if isinstance(entry.get("threads"), list) and entry.get("threads") else [1]
        seconds = {label: s for label, s in entry["seconds"].items() if parse_label(label) and s}
        baseline = seconds.get(f"float32@{timed[0]}")
        if not baseline:
            continue  # an entry of another glactl's format: measured again when it is next used
        model = entry.get("model") or {}
        calibrations.append(
            {
                "model": {key: model.get(key) for key in ("mixer", "d_model", "n_layers", "n_heads", "context")},
                "work": entry.get("work"),
                "threads_timed": timed,
                "precision": entry.get("precision"),
                "threads": entry.get("chosen_threads"),
                "speed_vs_float32": {label: round(baseline / s, 3) for label, s in seconds.items()},
            }
        )
    return {
        "machine": here,
        "cores": usable_cores(),
        "calibration": "on" if enabled() else "off (GLACTL_CALIBRATE=0: the fixed rule)",
        "cache": str(path),
        "calibrations": calibrations,
        "compile_checks": compile_checks(here),
    }


def compile_checks(here: dict[str, Any]) -> list[dict[str, Any]]:
    """Every cached verdict of `--compile auto` for this machine: the compiled step's speed over eager steps."""
    from glactl.inference.calibration import read_cache
    from glactl.inference.compile_check import COMPILE_FILE
    from glactl.runtime.cache import cache_root

    checks = []
    for entry in read_cache(cache_root() / COMPILE_FILE).values():
        seconds = entry.get("seconds") if isinstance(entry, dict) and entry.get("machine") == here else None
        if not isinstance(seconds, dict) or not all(
            isinstance(seconds.get(k), (int, float)) for k in ("eager", "compiled")
        ):
            continue
        model = entry.get("model") or {}
        checks.append(
            {
                "model": {key: model.get(key) for key in ("mixer", "d_model", "n_layers", "n_heads", "context")},
                "precision": entry.get("precision"),
                "batch": entry.get("batch"),
                "threads": entry.get("threads"),
                "compiled_kept": bool(entry.get("compiled_faster")),
                "speed_vs_eager": round(seconds["eager"] / max(seconds["compiled"], 1e-12), 3),
            }
        )
    return checks


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
        m, base = c["model"], f"float32@{c['threads_timed'][0]}"
        speeds = ", ".join(f"{label} {x:.2f}x" for label, x in c["speed_vs_float32"].items() if label != base)
        write(
            sys.stdout,
            f"{m['mixer']} d{m['d_model']} x {m['n_layers']} layers, {c['work']}: {c['precision']} on "
            f"{c['threads']} thread(s) ({speeds} {base}'s speed)\n",
        )
    for c in document["compile_checks"]:
        m = c["model"]
        write(
            sys.stdout,
            f"{m['mixer']} d{m['d_model']} x {m['n_layers']} layers, {c['precision']}, batch {c['batch']}, "
            f"{c['threads']} thread(s): compiled step {c['speed_vs_eager']:.2f}x eager's speed, "
            + ("kept\n" if c["compiled_kept"] else "eager runs\n"),
        )

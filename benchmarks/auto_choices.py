"""What `auto` measures on this machine for shipped models: precision x threads for decoding and for scoring, the
compiled decode step against eager, and what each measurement costs.

Usage: python benchmarks/auto_choices.py [--models gla-enwiki,transformer-enwiki]

For each model, both works are calibrated from an empty calibration cache at the thread counts the CLI would
time (glactl/runtime/threads.thread_choices: decoding 1 and every core, scoring the idle cores and 1), exactly
as the first `glactl generate` or `glactl perplexity` does; the rows give each (precision, threads) pair's
speed over float32 at the rule's count, and the seconds the measurement took. Then the decode step at the
chosen precision and threads is compiled (or its package loaded from the glactl cache) and timed against
eager steps, as `--compile auto` does once a package is ready. Ratios are within one run: the candidates take
turns, so a neighbour's load hits each alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_flags, machine_line, markdown_table

from glactl.inference.calibration import calibrate, describe, label
from glactl.inference.compile_check import COMPILE_FILE, compiled_pays
from glactl.inference.compiled_step import CompiledStep, configure
from glactl.inference.precision import apply_precision
from glactl.runtime.threads import thread_choices, torch_threads
from glactl.storage.checkpoint import load_model
from glactl.storage.model_paths import resolve_model

WORKS = {"decode": "decoding", "score": "scoring"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gla-enwiki,transformer-enwiki")
    args = parser.parse_args()
    print(machine_line())
    print(f"CPU flags: {cpu_flags()}\n")
    calibrations, verdicts = [], []
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        for name in args.models.split(","):
            exact = load_model(resolve_model(name), device="cpu")[0].eval()  # as load() has it before any precision
            chosen = {}
            for work, kind in WORKS.items():
                counts, why = thread_choices(kind, None)
                start = time.perf_counter()
                result = calibrate(exact, work, counts, cache)
                assert result is not None, "the calibration is off (GLACTL_CALIBRATE=0) or the cache cannot be written"
                spent = time.perf_counter() - start
                baseline = result.seconds[("float32", counts[0])]
                speeds = ", ".join(f"{label(c)} {baseline / s:.2f}x" for c, s in result.seconds.items())
                chosen[work] = result
                calibrations.append(
                    [
                        name,
                        work,
                        f"{counts} ({why})",
                        speeds,
                        describe((result.precision, result.threads), counts),
                        spent,
                    ]
                )
            decode = chosen["decode"]
            model = apply_precision(copy.deepcopy(exact), decode.precision)
            configure(model, "auto")
            with torch_threads(decode.threads):
                step = CompiledStep(model, 1)
                start = time.perf_counter()
                step.compiled = step._build()
                built = time.perf_counter() - start
                start = time.perf_counter()
                kept = compiled_pays(model, 1, step.compiled, cache)
                spent = time.perf_counter() - start
            entry = next(iter(json.loads((cache / COMPILE_FILE).read_text()).values()))
            (cache / COMPILE_FILE).unlink()
            ratio = entry["seconds"]["eager"] / entry["seconds"]["compiled"]
            verdicts.append(
                [name, f"{decode.precision}, {decode.threads} thread(s)", f"{ratio:.2f}x", kept, built, spent]
            )
    print(
        markdown_table(
            ["model", "work", "threads timed", "speed over float32 at the first count", "chosen", "seconds"],
            calibrations,
        )
    )
    print()
    print(
        markdown_table(
            ["model", "decode at", "compiled / eager speed", "compiled kept", "build or load s", "timing s"], verdicts
        )
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

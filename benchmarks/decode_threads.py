"""Byte-by-byte decoding with 1 and with 2 threads: the measurement behind the decoding thread rule.

For the shipped gla-enwiki and two random GLA shapes, in float32 and int8 weights, eager and compiled
(the AOTInductor step `generate` runs), times batch-1 decode steps with 1 and 2 torch threads. The two
thread counts alternate within each cell, so a neighbour's load hits both alike; each time is the best of
--repeats runs of --steps steps. The load average is printed before and after: a second thread only pays
on an idle core (measured 2-14x slower decoding with a second thread on a busy core).

    cd benchmarks && python decode_threads.py --steps 200 --repeats 4
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import cpu_flags, machine_line, markdown_table

from glactl.api.loading import load
from glactl.inference.compiled_step import configure, stepper
from glactl.inference.precision import apply_precision
from glactl.models import LanguageModel, ModelConfig

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "gla-enwiki"
RANDOM_SHAPES = {
    "random d128x2": dict(d_model=128, n_layers=2, n_heads=4),
    "random d256x6": dict(d_model=256, n_layers=6, n_heads=4),
}


def build(name: str, precision: str) -> torch.nn.Module:
    """A model in `precision`, loaded the way `generate` loads it (weights swapped at load time)."""
    if name == "gla-enwiki":
        return load(str(SHIPPED), threads=1, precision=precision).model
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(mixer="gla", **RANDOM_SHAPES[name])).eval()
    return apply_precision(model, precision)


def seconds_per_step(model: torch.nn.Module, threads: int, compiled: bool, steps: int) -> tuple[float, bool]:
    """(seconds per batch-1 decode step at `threads`, whether it ran compiled); a package is built per count once."""
    torch.set_num_threads(threads)
    configure(model, "on" if compiled else "off")
    step = stepper(model, 1, 10**6)
    with torch.inference_mode():
        _, state = model(torch.tensor([list(b"\nThe history of")]), None)
        token = torch.zeros(1, dtype=torch.long)
        for _ in range(10):  # builds or loads the package, warms the caches
            logits, state = step(token, state)
        start = time.perf_counter()
        for _ in range(steps):
            logits, state = step(token, state)
            token = logits.argmax(-1)
    return (time.perf_counter() - start) / steps, bool(getattr(step, "ran_compiled", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--models", default="gla-enwiki," + ",".join(RANDOM_SHAPES))
    parser.add_argument("--precisions", default="float32,int8")
    parser.add_argument("--compile", default="off,on", help="off, on, or both")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    print(f"CPU flags: {cpu_flags()}; cores {os.cpu_count()}; load average before {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            model = build(name, precision)
            weight_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
            for compiled in [c == "on" for c in args.compile.split(",")]:
                best, ran_compiled = {1: float("inf"), 2: float("inf")}, True
                for _ in range(args.repeats):
                    for threads in (1, 2):
                        seconds, ran = seconds_per_step(model, threads, compiled, args.steps)
                        best[threads], ran_compiled = min(best[threads], seconds), ran_compiled and ran
                ran = "compiled" if ran_compiled else "eager"
                rows.append(
                    [
                        name,
                        f"{weight_mb:.1f}",
                        precision,
                        ran,
                        f"{best[1] * 1e3:.3f}",
                        f"{best[2] * 1e3:.3f}",
                        f"{best[1] / best[2]:.2f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}", flush=True)
    print(
        markdown_table(
            ["model", "weights MB", "precision", "step", "1 thread ms", "2 threads ms", "2-thread speed-up"], rows
        )
    )


if __name__ == "__main__":
    main()

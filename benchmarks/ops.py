"""GLA op alone: chunk vs recurrent vs naive quadratic form, forward and forward+backward.

Usage: python benchmarks/ops.py [--threads 2] [--lengths 256,1024,4096]
Prints a markdown table with times and ratios measured side by side in this run.
"""

from __future__ import annotations

import argparse

import torch
from common import best_time, machine_line, markdown_table

from glactl.ops.gla import gate_log, gla_chunk, gla_quadratic, gla_recurrent

FORMS = {
    "chunk": gla_chunk,
    "recurrent": gla_recurrent,
    "quadratic": lambda q, k, v, a: (gla_quadratic(q, k, v, a), None),
}


def make_inputs(batch: int, heads: int, length: int, key: int, value: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, key, generator=g)
    k = torch.randn(batch, heads, length, key, generator=g)
    v = torch.randn(batch, heads, length, value, generator=g)
    log_a = gate_log(torch.randn(batch, heads, length, key, generator=g))
    return [t.requires_grad_(True) for t in (q, k, v, log_a)]


def time_form(form: str, inputs: list[torch.Tensor], backward: bool) -> float:
    fn = FORMS[form]

    def run() -> None:
        if backward:
            out, _ = fn(*inputs)
            out.sum().backward()
        else:
            with torch.no_grad():
                fn(*inputs)

    return best_time(run, repeats=2 if form == "recurrent" else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--tokens", type=int, default=4096, help="batch * length, held constant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heads, key, value = 4, 32, 64  # the small preset's GLA heads
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        batch = max(1, args.tokens // length)
        inputs = make_inputs(batch, heads, length, key, value)
        for backward in (False, True):
            times = {}
            for form in FORMS:
                if form == "quadratic" and batch * heads * length * length * key * 4 > 2e9:
                    continue  # the naive form's [T, T, K] tensor would not fit
                times[form] = time_form(form, inputs, backward)
            tokens = batch * length
            row = [length, batch, "fwd+bwd" if backward else "fwd"]
            row += [tokens / times[f] if f in times else "-" for f in FORMS]
            row += [
                times["recurrent"] / times["chunk"],
                (times["quadratic"] / times["chunk"]) if "quadratic" in times else "-",
            ]
            rows.append(row)
    print(machine_line())
    print(
        markdown_table(
            [
                "T",
                "B",
                "pass",
                "chunk tok/s",
                "recurrent tok/s",
                "quadratic tok/s",
                "chunk / recurrent",
                "chunk / quadratic",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()

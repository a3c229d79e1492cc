"""Bits per byte of each --precision against float32 on the first bytes of wiki.test.raw and enwiki held-out text.

Usage: cd benchmarks && python precision_bpb.py [--bytes 300000] [--threads 2]

Goes through `glactl.load(precision=...).perplexity(bytes)`, the path of `glactl perplexity`: on this CPU
that means the scoring windows' products in each precision's many-row form (int8: int8 x int8 products
with one scale per row where bfloat16 is not native; dequantized bfloat16 GEMMs where it is). A precision
this machine cannot run (bfloat16 without native support) falls back to float32 and is marked so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import cpu_flags, machine_line, markdown_table

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    ROOT.parent / "shared" / "data" / "wikitext-103-raw" / "wiki.test.raw",
    ROOT.parent / "shared" / "data" / "enwiki" / "enwiki-2021-heldout.txt",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "weights" / "gla-enwiki"))
    args = parser.parse_args()
    import glactl

    print(machine_line())
    print(f"CPU flags: {cpu_flags()}")
    texts = [(path.name, path.read_bytes()[: args.bytes]) for path in TEXTS if path.is_file()]
    rows, reference = [], {}
    for precision in ("float32", "bfloat16", "int8"):
        lm = glactl.load(args.model, threads=args.threads, precision=precision)
        ran = lm.model.precision
        row: list[object] = [precision if ran == precision else f"{precision} (ran {ran})"]
        for name, data in texts:
            bpb = lm.perplexity(data)["bits_per_byte"]
            reference.setdefault(name, bpb)
            row += [f"{bpb:.5f}", "-" if precision == "float32" else f"{bpb - reference[name]:+.5f}"]
        rows.append(row)
        print(f"{row}", flush=True)
    print()
    print(f"Bits per byte, first {args.bytes:,} bytes, {Path(args.model).name}, {args.threads} threads")
    print()
    print(markdown_table(["precision", *[h for name, _ in texts for h in (f"{name} bpb", "vs float32")]], rows))


if __name__ == "__main__":
    main()

"""Learning-rate sweep behind the registry's DEFAULT_LR: each architecture at a few peak rates, same data,
seed, preset and step count, scored by the final validation bits per byte.

    python benchmarks/lr_sweep.py --models gla,transformer --lrs 1e-3,3e-3,1e-2 --steps 80 --out /tmp/sweep

Runs are ordinary run folders under --out (OUT/MODEL-lrLR); a finished one is read back, not redone.
Prints a markdown table and writes OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from glactl.training import TrainOptions, train

ENWIKI = "../shared/data/enwiki/enwiki-2015-*.txt"


def final_val_bpb(folder: Path) -> float:
    """Last validation bits per byte in a run's metrics.jsonl (inf when it never evaluated or diverged)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return math.inf
    evals = [json.loads(line) for line in path.read_text().splitlines() if '"eval"' in line]
    value = evals[-1]["val_bpb"] if evals else math.inf
    return value if math.isfinite(value) else math.inf


def run(model: str, lr: float, args: argparse.Namespace) -> float:
    """Train one (model, lr) point unless its folder already holds a finished run; return its final score."""
    folder = Path(args.out) / f"{model}-lr{lr:g}"
    done = folder / "sweep-done"
    if not done.exists():
        options = TrainOptions(data=[args.data], model=model, preset=args.preset, seq_len=args.seq_len,
                               batch_size=args.batch_size, steps=args.steps, lr=lr, eval_every=args.steps,
                               out=str(folder), force=True, seed=args.seed, threads=args.threads,
                               command_line=["benchmarks/lr_sweep.py", model, f"{lr:g}"])
        try:
            train(options, None)
        except Exception as error:  # a diverged run scores inf; the sweep goes on
            print(f"{model} lr {lr:g}: {error}")
        done.write_text("")
    return final_val_bpb(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gla,transformer,performer,infinite,reflex,mingru,minlstm")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--data", default=ENWIKI)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/glactl-lr-sweep")
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    results = {model: {f"{lr:g}": run(model, lr, args) for lr in lrs} for model in args.models.split(",")}
    Path(args.out, "sweep.json").write_text(json.dumps(results, indent=1))
    print(f"\nPreset {args.preset}, {args.steps} steps x {args.batch_size} x {args.seq_len} bytes, seed {args.seed}; "
          "final validation bits per byte (best in bold)\n")
    print("| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    print("|---|" + "---:|" * len(lrs))
    for model, scores in results.items():
        best = min(scores.values())
        cells = [(f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in scores.values()]
        print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Learning-rate sweep behind the registry's DEFAULT_LR: each architecture at a few peak rates, same data,
seed, preset and step count, scored by the final validation bits per byte.

    python benchmarks/lr_sweep.py --models gla,transformer --lrs 1e-3,3e-3,1e-2 --steps 80 --out /tmp/sweep

Runs are ordinary run folders under --out (OUT/MODEL-lrLR); scores go to OUT/sweep.json after each run, and a
point already there is not trained again (use a new --out for other settings). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from glactl.errors import RunFailure
from glactl.training.options import TrainOptions
from glactl.training.trainer import train

ENWIKI = "../shared/data/enwiki/enwiki-2015-*.txt"


def score(model: str, lr: float, args: argparse.Namespace) -> float:
    """Train one (model, lr) point in OUT/MODEL-lrLR; its final validation bits per byte (inf if it diverged)."""
    options = TrainOptions(
        data=[args.data],
        model=model,
        preset=args.preset,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=lr,
        eval_every=args.steps,
        out=str(Path(args.out) / f"{model}-lr{lr:g}"),
        force=True,
        seed=args.seed,
        threads=args.threads,
        command_line=["benchmarks/lr_sweep.py", model, f"{lr:g}"],
    )
    try:
        return float(train(options)["val_bits_per_byte"])
    except RunFailure as failure:  # a non-finite loss stops the run: that rate scores inf, the sweep goes on
        print(f"{model} lr {lr:g}: {failure}")
        return math.inf


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
    record = Path(args.out, "sweep.json")
    record.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(record.read_text()) if record.is_file() else {}
    results: dict[str, dict[str, float]] = {}
    for model in args.models.split(","):
        scores = known.setdefault(model, {})
        for key, lr in ((f"{lr:g}", lr) for lr in lrs):
            if key not in scores:
                scores[key] = score(model, lr, args)
                record.write_text(json.dumps(known, indent=1))
            results.setdefault(model, {})[key] = scores[key]
    print(
        f"\nPreset {args.preset}, {args.steps} steps x {args.batch_size} x {args.seq_len} bytes, seed {args.seed}; "
        "final validation bits per byte (best in bold)\n"
    )
    print("| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |")
    print("|---|" + "---:|" * len(lrs))
    for model, scores in results.items():
        best = min(scores.values())
        cells = [(f"**{v:.4f}**" if v == best else f"{v:.4f}") for v in scores.values()]
        print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

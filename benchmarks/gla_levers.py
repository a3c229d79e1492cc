"""GLA's levers on recall, copying and text: each change to today's GLA (short convolution 4, 4 heads, lr 1e-3,
gate normalizer 16) trained on the probes and on enwiki, one change at a time, same seeds and tokens.

    python benchmarks/gla_levers.py --phase mqar --out /tmp/levers          # every lever, one seed
    python benchmarks/gla_levers.py --phase lm --levers base,heads1 --seeds 0,1,2 --out /tmp/levers

mqar: the probe table's setting (tiny preset, 8 pairs in 32 bytes, batch 64) stopped at 500 steps, where
today's GLA is still learning, so a lever that speeds recall up (or slows it down) shows.
mqar-16pairs: 16 pairs in 64 bytes, batch 32, 1000 steps (a harder setting, where every variant tried
stayed at chance). lm: tiny preset, enwiki-2015, 400 steps x 16 x 256 bytes, final validation bits per
byte. probe-mqar and probe-copy: the probe table's mqar and selective-copy settings at their full budgets
(2,500 and 2,000 steps; selective copying at the table's lr 3e-3 unless a lever sets lr); screen-mqar and
screen-copy: the same stopped at 1,000 steps. A lever's warm-up given as a share of the steps
(warmup_fraction) is the same share in every phase. All float32, one thread. Runs are ordinary run folders under
--out; scores and wall seconds go to OUT/levers.json after each run and a point already there is not
trained again. Prints a markdown table (mean and spread over the seeds, which seeds, seconds per run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from glactl.storage.atomic import write_json_atomic
from glactl.training.options import TrainOptions
from glactl.training.trainer import train

ENWIKI = "../shared/data/enwiki/enwiki-2015-*.txt"

# lever -> TrainOptions fields that differ from today's GLA defaults
LEVERS: dict[str, dict[str, Any]] = {
    "base": {},
    "no-conv": {"short_conv": 0},
    "lr3e-3": {"lr": 3e-3},
    "heads2": {"n_heads": 2},
    "heads1": {"n_heads": 1},
    "normalizer8": {"model_options": {"gla_gate_normalizer": 8.0}},
    "normalizer32": {"model_options": {"gla_gate_normalizer": 32.0}},
    "gate-rank64": {"model_options": {"gla_gate_rank": 64}},
    "qk-norm": {"model_options": {"gla_qk_norm": True}},
    "gate-bias3": {"model_options": {"gla_gate_bias": 3.0}},
    "fla-init": {"model_options": {"gla_init": "fla"}},
    "no-decay-gates": {"decay_gates": False},
    "wd0": {"weight_decay": 0.0},
    "lr5e-4": {"lr": 5e-4},
    "lr2e-3": {"lr": 2e-3},
    "lr1e-3": {"lr": 1e-3},
    "warmup250": {"warmup": 250},
    "conv2": {"short_conv": 2},
    "conv8": {"short_conv": 8},
    "heads2-qk-norm": {"n_heads": 2, "model_options": {"gla_qk_norm": True}},
    "warmup10%": {"warmup_fraction": 0.1},
    "lr2e-3-warmup10%": {"lr": 2e-3, "warmup_fraction": 0.1},
    "heads2-warmup10%": {"n_heads": 2, "warmup_fraction": 0.1},
    "lr1e-3-warmup10%": {"lr": 1e-3, "warmup_fraction": 0.1},  # GLA's own defaults on selective copying
    "transformer": {"model": "transformer"},  # the reference, not a lever: the same budget for softmax attention
    "transformer-lr1e-3": {"model": "transformer", "lr": 1e-3},  # the reference at its own default learning rate
}

PHASES: dict[str, dict[str, Any]] = {
    "mqar": {
        "task": "mqar",
        "task_options": {"pairs": 8},
        "seq_len": 32,
        "batch_size": 64,
        "steps": 500,
        "eval_every": 50,
    },
    "mqar-16pairs": {
        "task": "mqar",
        "task_options": {"pairs": 16},
        "seq_len": 64,
        "batch_size": 32,
        "steps": 1000,
        "eval_every": 100,
    },
    "lm": {"data": [ENWIKI], "seq_len": 256, "batch_size": 16, "steps": 400, "eval_every": 400},
    # the probe table's two settings, full budgets (README, docs/comparing.md "Probes")
    "probe-mqar": {
        "task": "mqar",
        "task_options": {"pairs": 8},
        "seq_len": 32,
        "batch_size": 64,
        "steps": 2500,
        "eval_every": 250,
    },
    "probe-copy": {
        "task": "selective-copy",
        "seq_len": 64,
        "batch_size": 32,
        "lr": 3e-3,
        "steps": 2000,
        "eval_every": 200,
    },
    # screens: the same settings stopped at 1,000 steps (the schedule decays over the 1,000)
    "screen-mqar": {
        "task": "mqar",
        "task_options": {"pairs": 8},
        "seq_len": 32,
        "batch_size": 64,
        "steps": 1000,
        "eval_every": 250,
    },
    "screen-copy": {
        "task": "selective-copy",
        "seq_len": 64,
        "batch_size": 32,
        "lr": 3e-3,
        "steps": 1000,
        "eval_every": 200,
    },
}
COLUMNS = {
    "mqar": "mqar accuracy (8 pairs, 500 steps)",
    "mqar-16pairs": "mqar accuracy (16 pairs in 64 bytes)",
    "lm": "lm bits per byte",
    "probe-mqar": "mqar accuracy (probe table, 2,500 steps)",
    "probe-copy": "selective-copy accuracy (probe table, 2,000 steps)",
    "screen-mqar": "mqar accuracy (1,000 steps)",
    "screen-copy": "selective-copy accuracy (1,000 steps)",
}


def run(phase: str, lever: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Train one point; the score of its last evaluation (mqar: accuracy and answer loss; lm: bits per byte)."""
    fields = {"model": "gla", **PHASES[phase], **LEVERS[lever]}
    if "warmup_fraction" in fields:  # a warm-up over this share of the phase's steps, whatever its length
        fields["warmup"] = max(1, round(fields.pop("warmup_fraction") * fields["steps"]))
    folder = Path(args.out) / f"{phase}-{lever}-seed{seed}"
    options = TrainOptions(
        preset="tiny",
        dtype="float32",
        threads=args.threads,
        seed=seed,
        out=str(folder),
        force=True,
        command_line=["benchmarks/gla_levers.py", phase, lever],
        **fields,
    )
    start = time.perf_counter()
    summary = train(options)
    seconds = round(time.perf_counter() - start, 1)
    if "task" not in PHASES[phase]:
        return {"bpb": float(summary["val_bits_per_byte"]), "seconds": seconds}
    last = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1]
    return {"accuracy": last["accuracy"], "answer_loss": last["val_loss"], "seconds": seconds}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.4f}" + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")


def table(known: dict[str, Any]) -> str:
    phases = [p for p in PHASES if p in known]
    lines = [
        "| lever | change | " + " | ".join(f"{COLUMNS[p]} | seeds | s/run" for p in phases) + " |",
        "|---|---|" + "---:|---:|---:|" * len(phases),
    ]
    for lever, fields in LEVERS.items():
        points = {p: sorted(known[p].get(lever, {}).items()) for p in phases}
        scores = {p: [v.get("accuracy", v.get("bpb")) for _, v in points[p]] for p in phases}
        seconds = {p: [v["seconds"] for _, v in points[p] if "seconds" in v] for p in phases}
        if not any(scores.values()):
            continue
        change = (
            ", ".join(
                f"{k} {v}"
                for k, v in {
                    **{k: v for k, v in fields.items() if k != "model_options"},
                    **fields.get("model_options", {}),
                }.items()
            )
            or "today's GLA"
        )
        if fields.get("model") == "transformer":
            change = "softmax attention (reference)" + (f", lr {fields['lr']}" if "lr" in fields else "")
        cells = [
            f"{spread(scores[p]) if scores[p] else '-'} | "
            + (",".join(seed for seed, _ in points[p]) or "-")
            + f" | {round(statistics.fmean(seconds[p])) if seconds[p] else '-'}"
            for p in phases
        ]
        lines.append(f"| {lever} | {change} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_point(record: Path, phase: str, lever: str, seed: int, score: dict[str, float]) -> dict[str, Any]:
    """Add one point to OUT/levers.json as it is on disk now (another phase may be running beside this one)."""
    known = json.loads(record.read_text()) if record.is_file() else {}
    known.setdefault(phase, {}).setdefault(lever, {})[str(seed)] = score
    write_json_atomic(record, known)
    return known


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=list(PHASES), required=True)
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/glactl-gla-levers")
    parser.add_argument("--table-only", action="store_true", help="print the table of what is in OUT/levers.json")
    args = parser.parse_args()
    record = Path(args.out, "levers.json")
    record.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(record.read_text()) if record.is_file() else {}
    if not args.table_only:
        for lever in args.levers.split(","):
            if lever not in LEVERS:
                parser.error(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
            for seed in (int(s) for s in args.seeds.split(",")):
                if str(seed) not in known.get(args.phase, {}).get(lever, {}):
                    known = record_point(record, args.phase, lever, seed, run(args.phase, lever, seed, args))
    print(table(known))


if __name__ == "__main__":
    main()

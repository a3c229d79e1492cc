"""Generation tokens/s and state bytes for each mixer after long contexts, batch 1 and 8, against the weight-streaming floor.

Usage: python benchmarks/decode.py [--preset small] [--models gla,transformer,...] [--contexts 1024,8192,32768,131072]
           [--attention-max 32768] [--batches 1,8] [--steps 64] [--warmup 4] [--threads 1] [--prefill-window 4096]

For each model (random weights: speed does not depend on training) the context is prefilled with the
model's own forward (GLA: chunk form) in --prefill-window pieces with the state carried, growing from one
context length to the next; at each length the state is copied to the batch (glactl.models.state.expand_state,
as glactl's Generation does) and --steps calls of model.step (greedy next byte, torch.inference_mode) are
timed after --warmup untimed ones. Mixers whose state grows with the context (attention with context=None)
stop at --attention-max. The floor is the best time of one float32 matrix-vector product over a matrix with as
many elements as the model's parameters (torch.mv), on this machine with the same threads: a decode step
must read every weight once, so "x floor" = seconds per step / floor. Threads default to 1, as glactl's
generation does. All ratios come from this one run.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from common import best_time, machine_line, markdown_table

from glactl.inference.scoring import state_growth
from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import MIXERS
from glactl.models.state import expand_state

DEFAULT_MODELS = ["gla", "transformer"] + [m for m in MIXERS if m not in ("gla", "transformer")]


def weight_floor(numel: int, repeats: int = 30) -> float:
    """Best seconds of one float32 matrix-vector pass over `numel` elements (1024 columns)."""
    cols = 1024
    matrix = torch.randn(max(1, numel // cols), cols)
    vector = torch.randn(cols)
    out = torch.empty(matrix.shape[0])
    return best_time(lambda: torch.mv(matrix, vector, out=out), repeats=repeats, warmup=3)


def time_decode(model: LanguageModel, state: object, first: torch.Tensor, steps: int, warmup: int) -> float:
    """Seconds per model.step over `steps` greedy steps (after `warmup`), starting from `state`."""
    tokens = first
    for _ in range(warmup):
        logits, state = model.step(tokens, state)
        tokens = logits.argmax(dim=-1)
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = model.step(tokens, state)
        tokens = logits.argmax(dim=-1)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--contexts", default="1024,8192,32768,131072")
    parser.add_argument("--attention-max", type=int, default=32768, help="longest context for mixers whose state grows")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--steps", type=int, default=64, help="timed decode steps per cell")
    parser.add_argument("--warmup", type=int, default=4, help="untimed decode steps per cell")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (glactl generation uses 1)")
    parser.add_argument("--prefill-window", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    contexts = sorted(int(x) for x in args.contexts.split(","))
    batches = sorted(int(x) for x in args.batches.split(","))

    print(machine_line(), flush=True)
    g = torch.Generator().manual_seed(0)
    results: dict[tuple[str, int, int], float] = {}  # (model, context, batch) -> seconds per step
    state_bytes: dict[tuple[str, int, int], int] = {}
    floors: dict[int, float] = {}
    info: dict[str, tuple[int, bool]] = {}  # model -> (parameters, state grows)
    with torch.inference_mode():
        for name in models:
            torch.manual_seed(0)
            model = LanguageModel(ModelConfig.preset(args.preset, mixer=name, context=None)).eval()
            numel = model.num_parameters()
            if numel not in floors:
                floors[numel] = weight_floor(numel)
            short, long = state_growth(model, 10, 100)
            grows = long > short
            info[name] = (numel, grows)
            state, done = None, 0
            for context in contexts:
                if grows and context > args.attention_max:
                    continue
                prefill_start = time.perf_counter()
                while done < context:
                    n = min(args.prefill_window, context - done)
                    idx = torch.randint(0, 256, (1, n), generator=g)
                    logits, state = model(idx, state)
                    done += n
                prefill = time.perf_counter() - prefill_start
                first = logits[:, -1].argmax(dim=-1)
                for batch in batches:
                    s = expand_state(state, batch) if batch > 1 else state
                    seconds = time_decode(model, s, first.expand(batch), args.steps, args.warmup)
                    results[(name, context, batch)] = seconds
                    state_bytes[(name, context, batch)] = model.state_nbytes(s)
                    del s
                    print(
                        f"{name} ctx={context} B={batch}: {batch / seconds:,.1f} tok/s, "
                        f"{seconds * 1e3:.2f} ms/step, state {state_bytes[(name, context, batch)]:,} B "
                        f"(prefill to here {prefill:.1f}s)",
                        flush=True,
                    )
            del model, state
            gc.collect()

    print()
    print(
        f"Decode, preset {args.preset}, {args.threads} thread(s), {args.steps} timed steps after {args.warmup} warmup; "
        f"floor = one float32 matrix-vector pass over as many elements as the weights"
    )
    print()
    b1 = batches[0]
    headers = ["model", "params", "context", "state bytes (B=1)", f"B={b1} tok/s", f"B={b1} ms/token", "x floor"]
    for batch in batches[1:]:
        headers += [f"B={batch} tok/s", f"B={batch} / B={b1}"]
    rows = []
    for name in models:
        numel, _ = info[name]
        floor = floors[numel]
        for context in contexts:
            if (name, context, b1) not in results:
                continue
            sec = results[(name, context, b1)]
            row = [
                name,
                f"{numel / 1e6:.2f}M",
                context,
                state_bytes[(name, context, b1)],
                b1 / sec,
                sec * 1e3,
                sec / floor,
            ]
            for batch in batches[1:]:
                other = results[(name, context, batch)]
                row += [batch / other, (batch / other) / (b1 / sec)]
            rows.append(row)
    print(markdown_table(headers, rows))
    print()
    print(markdown_table(["params", "floor ms (mv pass)"], [[f"{n / 1e6:.2f}M", f * 1e3] for n, f in floors.items()]))

    # The ratios the decoding targets name.
    def tps(name: str, context: int, batch: int) -> float | None:
        sec = results.get((name, context, batch))
        return batch / sec if sec else None

    rows = []
    for name in models:
        measured = [c for c in contexts if (name, c, b1) in results]
        if len(measured) > 1:
            a, b = tps(name, measured[-1], b1), tps(name, measured[0], b1)
            sizes = {state_bytes[(name, c, b1)] for c in measured}
            rows.append(
                [
                    f"{name} tok/s ctx {measured[-1]} / ctx {measured[0]} (B={b1})",
                    a / b,
                    "state constant" if len(sizes) == 1 else f"state {min(sizes):,} -> {max(sizes):,} B",
                ]
            )
    if "gla" in models and "transformer" in models:
        for context in contexts:
            for batch in batches:
                a, b = tps("gla", context, batch), tps("transformer", context, batch)
                if a and b:
                    rows.append([f"gla / transformer tok/s, ctx {context}, B={batch}", a / b, ""])
    print()
    print(markdown_table(["ratio", "value", "note"], rows))


if __name__ == "__main__":
    main()

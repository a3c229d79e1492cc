"""Training tokens/s (forward + backward + AdamW step) of one preset for every mixer, side by side.

Usage: python benchmarks/train_throughput.py [--preset small] [--models gla,gla-recurrent,transformer,...]
           [--lengths 256,1024,4096,16384] [--tokens 16384] [--dtypes float32,bfloat16] [--steps 2]
           [--warmup 1] [--threads 2] [--max-seconds 120] [--max-total-seconds N]

Tokens per batch are held constant (batch = tokens / length). "gla-recurrent" is the GLA model with
gla_form="recurrent" (the token-by-token reference loop); "transformer" attends to the whole sequence
(context=None). A step is the same as glactl's Trainer step: autocast forward (bfloat16 via
glactl.runtime.devices.select_precision), float32 cross-entropy, backward, clip_grad_norm_, AdamW with the
Trainer's parameter groups. A cell whose estimated time (from the same model's previous, shorter
length) exceeds --max-seconds prints "skipped" with the estimate. Ratios come from this one run.

minGRU / minLSTM against the classical GRU / LSTM (Feng et al. 2024 report their speedups at
T = 512 and 4096) in one run, float32, one thread:

    python benchmarks/train_throughput.py --models mingru,minlstm,gru,lstm --lengths 512,1024,2048,4096 \
        --dtypes float32 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F
from common import machine_line, markdown_table

from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import MIXERS
from glactl.runtime.devices import select_precision

ALL_MODELS = ["gla", "gla-recurrent", "transformer"] + [m for m in MIXERS if m not in ("gla", "transformer")]
# How a step's cost grows with the length at constant tokens per batch (exponent of L / L_prev),
# used only to estimate whether a cell fits in --max-seconds (when the same model was measured at both
# lengths in another dtype, that measured growth is used instead): the recurrent loop runs L Python steps,
# full attention costs B * L^2 = tokens * L; the rest are linear in tokens.
GROWTH = {"gla-recurrent": 1.0, "transformer": 1.0, "reflex": 1.0}


def build(preset: str, name: str) -> LanguageModel:
    overrides: dict = {"context": None}
    if name == "gla-recurrent":
        overrides.update(mixer="gla", gla_form="recurrent")
    else:
        overrides["mixer"] = name
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.preset(preset, **overrides))


def make_step(model: LanguageModel, dtype: str, batch: int, length: int):  # noqa: ANN201
    """A closure doing one Trainer-like optimizer step on a fixed random batch."""
    device = torch.device("cpu")
    precision = select_precision(dtype, device)
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, model.config.vocab_size, (batch, length + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> float:
        with precision.autocast(device):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def measure(step, warmup: int, steps: int) -> float:  # noqa: ANN001
    """Best seconds per step over `steps` timed steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--models", default=",".join(ALL_MODELS))
    parser.add_argument("--lengths", default="256,1024,4096,16384")
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per batch, held constant")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per cell (best is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per cell")
    parser.add_argument("--threads", type=int, default=2, help="1 is steadier on a busy machine")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip a cell estimated to take longer")
    parser.add_argument(
        "--max-total-seconds", type=float, default=None, help="skip every cell once the run took this long"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    lengths = sorted(int(x) for x in args.lengths.split(","))
    dtypes = [d for d in args.dtypes.split(",") if d]
    for m in models:
        if m not in ALL_MODELS:
            parser.error(f"unknown model {m!r}; choose from {', '.join(ALL_MODELS)}")

    print(machine_line(), flush=True)
    tps: dict[tuple[str, str, int], float] = {}
    notes: dict[tuple[str, str, int], str] = {}
    params: dict[str, int] = {}
    seconds_of: dict[tuple[str, str, int], float] = {}
    run_start = time.perf_counter()
    for dtype in dtypes:  # all models in float32 first: with --max-total-seconds, bfloat16 cells go first
        for name in models:
            previous: tuple[int, float] | None = None  # (length, seconds per step) of the last measured cell
            for length in lengths:
                batch = max(1, args.tokens // length)
                key = (name, dtype, length)
                if args.max_total_seconds is not None and time.perf_counter() - run_start > args.max_total_seconds:
                    notes[key] = f"skipped (run passed --max-total-seconds {args.max_total_seconds:g})"
                    continue
                if previous is not None:
                    prev_len, prev_sec = previous
                    growth = (length / prev_len) ** GROWTH.get(name, 0.0)
                    measured = [seconds_of.get((name, d, n)) for d in dtypes if d != dtype for n in (prev_len, length)]
                    if len(measured) == 2 and all(measured):  # the same model's growth in another dtype
                        growth = measured[1] / measured[0]
                    estimate = prev_sec * growth * (args.warmup + args.steps)
                    if estimate > args.max_seconds:
                        notes[key] = f"skipped (est. {estimate:.0f}s > --max-seconds {args.max_seconds:g})"
                        print(f"{name} {dtype} T={length}: {notes[key]}", flush=True)
                        continue
                model = build(args.preset, name)
                params[name] = model.num_parameters()
                model.train()
                try:
                    seconds = measure(make_step(model, dtype, batch, length), args.warmup, args.steps)
                except RuntimeError as e:  # e.g. out of memory
                    notes[key] = f"failed: {str(e).splitlines()[0][:60]}"
                    print(f"{name} {dtype} T={length}: {notes[key]}", flush=True)
                    continue
                finally:
                    del model
                    gc.collect()
                tps[key] = batch * length / seconds
                seconds_of[key] = seconds
                previous = (length, seconds)
                print(f"{name} {dtype} T={length} B={batch}: {seconds:.3f} s/step, {tps[key]:,.0f} tok/s", flush=True)

    def cell(key: tuple[str, str, int]) -> object:
        return tps[key] if key in tps else notes.get(key, "-")

    def ratio(a: tuple[str, str, int], b: tuple[str, str, int]) -> object:
        return tps[a] / tps[b] if a in tps and b in tps else "-"

    print()
    print(
        f"Training tokens/s, preset {args.preset}, {args.tokens} tokens per batch, best of {args.steps} "
        f"step(s) after {args.warmup} warmup, {args.threads} threads"
    )
    print()
    headers = ["model", "params", "dtype"] + [f"T={n} tok/s" for n in lengths]
    if len(lengths) > 1:
        headers.append(f"T={lengths[-1]} / T={lengths[0]}")
    rows = []
    for name in models:
        for dtype in dtypes:
            row = [name, f"{params.get(name, 0) / 1e6:.2f}M", dtype] + [cell((name, dtype, n)) for n in lengths]
            if len(lengths) > 1:
                row.append(ratio((name, dtype, lengths[-1]), (name, dtype, lengths[0])))
            rows.append(row)
    print(markdown_table(headers, rows))

    # The ratios the throughput targets name.
    rows = []
    for dtype in dtypes:
        for n in lengths if "gla" in models else []:
            rows.append([f"gla chunk / transformer, T={n}", dtype, ratio(("gla", dtype, n), ("transformer", dtype, n))])
        if len(lengths) > 1 and "gla" in models:
            rows.append(
                [
                    f"gla T={lengths[-1]} / gla T={lengths[0]}",
                    dtype,
                    ratio(("gla", dtype, lengths[-1]), ("gla", dtype, lengths[0])),
                ]
            )
        for n in lengths if "gla" in models else []:
            rows.append(
                [f"gla chunk / gla recurrent, T={n}", dtype, ratio(("gla", dtype, n), ("gla-recurrent", dtype, n))]
            )
        # The parallel scans against the sequential recurrences they simplify (Feng et al. 2024).
        for fast, slow in (("mingru", "gru"), ("minlstm", "lstm")):
            if fast in models and slow in models:
                for n in lengths:
                    rows.append([f"{fast} / {slow}, T={n}", dtype, ratio((fast, dtype, n), (slow, dtype, n))])
    if "float32" in dtypes and "bfloat16" in dtypes:
        for name in models:
            for n in lengths:
                rows.append([f"bf16 / fp32, {name}, T={n}", "-", ratio((name, "bfloat16", n), (name, "float32", n))])
    print()
    print(markdown_table(["ratio", "dtype", "value"], rows))


if __name__ == "__main__":
    main()

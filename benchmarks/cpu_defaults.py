"""Measurements behind the CPU defaults of `--dtype auto` and the thread counts.

Trains the default shape (seq 512 x batch 16, AdamW) in float32 and in bfloat16 autocast for a few
model sizes, and times training, scoring (4096-byte windows) and byte-by-byte decoding with 1 and
with 2 threads. The runs of each pair alternate, so a neighbour's load hits both alike; the best of
the repeats is kept (noise only adds time).

    cd benchmarks && python cpu_defaults.py --steps 8 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import machine_line, markdown_table

from glactl.models import LanguageModel, ModelConfig
from glactl.runtime.devices import cpu_supports_bf16

SHAPES = {
    "d64x2": dict(d_model=64, n_layers=2, n_heads=2),
    "tiny d128x2": dict(d_model=128, n_layers=2, n_heads=4),
    "d128x4": dict(d_model=128, n_layers=4, n_heads=4),
    "small d256x6": dict(d_model=256, n_layers=6, n_heads=4),
}


def train_seconds(config: ModelConfig, dtype: torch.dtype | None, steps: int, seq: int, batch: int) -> float:
    """Seconds per optimizer step (after one untimed step)."""
    torch.manual_seed(0)
    model = LanguageModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, seq + 1))

    def step() -> None:
        if dtype is None:
            logits, _ = model(x[:, :-1])
        else:
            with torch.autocast("cpu", dtype=dtype):
                logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, 256), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def score_seconds(config: ModelConfig, nbytes: int = 16384, window: int = 4096) -> float:
    model = LanguageModel(config).eval()
    data = torch.randint(0, 256, (1, nbytes))
    with torch.inference_mode():
        model(data[:, :window])
        start = time.perf_counter()
        state = None
        for i in range(0, nbytes, window):
            _, state = model(data[:, i : i + window], state)
    return time.perf_counter() - start


def decode_seconds(config: ModelConfig, steps: int = 200) -> float:
    model = LanguageModel(config).eval()
    with torch.inference_mode():
        _, state = model(torch.randint(0, 256, (1, 64)))
        token = torch.zeros(1, dtype=torch.long)
        start = time.perf_counter()
        for _ in range(steps):
            logits, state = model.step(token, state)
            token = logits.argmax(-1)
    return (time.perf_counter() - start) / steps


def best_pair(a, b, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Alternate a and b `repeats` times; the best time of each."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(a())
        tb.append(b())
    return min(ta), min(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--skip-threads", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line(), f"(native bfloat16: {cpu_supports_bf16()})")
    rows = []
    for name in args.shapes.split(","):
        config = ModelConfig(**SHAPES[name], context=args.seq)
        f32, bf16 = best_pair(
            lambda: train_seconds(config, None, args.steps, args.seq, args.batch),
            lambda: train_seconds(config, torch.bfloat16, args.steps, args.seq, args.batch),
            args.repeats,
        )
        tokens = args.seq * args.batch
        rows.append([name, f"{tokens / f32:,.0f}", f"{tokens / bf16:,.0f}", f"{f32 / bf16:.2f}"])
        print(markdown_table(["model", "float32 tok/s", "bfloat16 tok/s", "bf16 speed-up"], rows[-1:]), flush=True)
    print("\nTraining, 1 thread, seq", args.seq, "x batch", args.batch)
    print(markdown_table(["model", "float32 tok/s", "bfloat16 tok/s", "bf16 speed-up"], rows))
    if args.skip_threads:
        return
    rows = []
    for name in args.shapes.split(","):
        config = ModelConfig(**SHAPES[name], context=args.seq)
        for kind, fn in (
            ("training", lambda: train_seconds(config, None, max(2, args.steps // 2), args.seq, args.batch)),
            ("scoring", lambda: score_seconds(config)),
            ("decoding", lambda: decode_seconds(config)),
        ):

            def with_threads(n: int, fn=fn):  # noqa: ANN001, ANN202
                torch.set_num_threads(n)
                try:
                    return fn()
                finally:
                    torch.set_num_threads(1)

            one, two = best_pair(lambda: with_threads(1), lambda: with_threads(2), args.repeats)
            rows.append([name, kind, f"{one:.4f}", f"{two:.4f}", f"{one / two:.2f}"])
            print(
                markdown_table(["model", "work", "1 thread s", "2 threads s", "2-thread speed-up"], rows[-1:]),
                flush=True,
            )
    print("\nThreads (seconds per training step / per 16 KiB scored / per decoded byte)")
    print(markdown_table(["model", "work", "1 thread s", "2 threads s", "2-thread speed-up"], rows))


if __name__ == "__main__":
    main()

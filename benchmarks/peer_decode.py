"""glactl's decode against Hugging Face transformers at the same shapes: tokens/s of greedy generation, one thread.

Usage: python benchmarks/peer_decode.py [--tokens 1000] [--batches 1,16] [--repeats 3] [--pairs transformer,gla]

Pairs (random weights for the peers; glactl runs its shipped checkpoints, whose values do not change a step's work):
- transformer: Hugging Face `GPT2LMHeadModel` at `transformer-enwiki`'s shape (d384, 6 layers, 4 heads,
  vocab 256, MLP 4 d, positions for the prompt and every new token) against glactl's `transformer-enwiki`
  (window 512 with 4 sinks: past 512 tokens it attends to at most 512 keys where GPT-2 attends to all of them).
- gla: Hugging Face `MambaForCausalLM` at the shipped GLA's size (d384, state 16, expand 2, as many layers as
  bring its parameters closest to gla-enwiki's) against glactl's `gla-enwiki`.

Each row generates --tokens new bytes greedily after a 24-byte prompt (the peer: `generate()` with
min_new_tokens = max_new_tokens, so no row stops early; glactl: its `generate` path, the same that
`glactl generate` runs, texts not kept), for a batch of 1 and of 16 identical prompts. glactl runs at
float32 eager (`--precision float32 --compile off`) and at its default flags (`--precision auto --compile auto`:
a compiled step is built or loaded in an untimed first run). Every row runs once untimed, then --repeats
times in turn with the other rows (so a neighbour's load hits all alike); the best run counts. The ratios
compare rows of this one run. The peer package is optional: a pair whose peer is not installed is
reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from common import cpu_flags, machine_line, markdown_table

PROMPT = b"The history of the city b"[:24]


@dataclass
class Entry:
    """One measured row: a named generation function for one batch size, and its best seconds."""

    pair: str
    name: str
    flags: str
    batch: int
    run: Callable[[], None] | None
    params: int = 0
    skipped: str = ""
    times: list[float] = field(default_factory=list)

    def tokens_per_second(self, tokens: int) -> float:
        return self.batch * tokens / min(self.times) if self.times else 0.0


def glactl_runner(name: str, precision: str, compile: str, batch: int, tokens: int) -> tuple[Callable[[], None], int]:
    """A function generating `tokens` greedy bytes from PROMPT with glactl's generation path, and the parameters."""
    import glactl
    from glactl.inference.generation import generate
    from glactl.inference.sampling import SamplingParams

    loaded = glactl.load(name, threads=1, precision=precision, compile=compile)
    model, params = loaded.model, SamplingParams(temperature=0.0)

    def run() -> None:
        stats = generate(
            model, PROMPT, max_new_tokens=tokens, params=params, num_samples=batch, seed=0, keep_text=False, threads=1
        )
        assert stats.tokens == batch * tokens, stats.tokens
        run.ran = f"{model.precision}, {'compiled' if stats.compiled else 'eager'}"  # type: ignore[attr-defined]

    return run, int(loaded.document["parameters"])  # the checkpoint's count (precision may hold weights as buffers)


def hf_runner(model: torch.nn.Module, batch: int, tokens: int) -> Callable[[], None]:
    """A function running `model.generate` for `tokens` greedy new tokens on `batch` copies of PROMPT."""
    ids = torch.tensor([list(PROMPT)] * batch, dtype=torch.long)
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        assert out.shape == (batch, ids.shape[1] + tokens), out.shape

    return run


def gpt2_peer(tokens: int) -> tuple[torch.nn.Module | None, str]:
    """GPT2LMHeadModel at transformer-enwiki's shape (random weights), or None and why not."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        return None, f"transformers not installed ({e})"
    config = GPT2Config(
        vocab_size=256,
        n_positions=max(1024, len(PROMPT) + tokens),
        n_embd=384,
        n_layer=6,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval(), ""


def mamba_peer(target_params: int) -> tuple[torch.nn.Module | None, str]:
    """MambaForCausalLM with d384 and the layer count whose parameters come closest to `target_params`."""
    try:
        from transformers import MambaConfig, MambaForCausalLM
    except ImportError as e:
        return None, f"transformers not installed ({e})"

    def config(layers: int) -> MambaConfig:
        return MambaConfig(
            vocab_size=256, hidden_size=384, num_hidden_layers=layers, state_size=16, expand=2, conv_kernel=4
        )

    with torch.device("meta"):
        sizes = {n: sum(p.numel() for p in MambaForCausalLM(config(n)).parameters()) for n in range(4, 25)}
    layers = min(sizes, key=lambda n: abs(sizes[n] - target_params))
    torch.manual_seed(0)
    return MambaForCausalLM(config(layers)).eval(), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1000, help="new tokens per generation")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", default="transformer,gla")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",") if b]
    pairs = [p for p in args.pairs.split(",") if p]

    entries: list[Entry] = []
    for pair in pairs:
        glactl_name = {"transformer": "transformer-enwiki", "gla": "gla-enwiki"}[pair]
        for batch in batches:
            group = []
            for flags, precision, compile in (("float32", "float32", "off"), ("default", "auto", "auto")):
                run, params = glactl_runner(glactl_name, precision, compile, batch, args.tokens)
                group.append(Entry(pair, f"glactl {glactl_name}", flags, batch, run, params))
            if pair == "transformer":
                peer, why = gpt2_peer(args.tokens)
                peer_name = "HF GPT2LMHeadModel"
            else:
                peer, why = mamba_peer(group[0].params)
                peer_name = f"HF MambaForCausalLM ({peer.config.num_hidden_layers} layers)" if peer else "HF Mamba"
            if peer is None:
                group.insert(0, Entry(pair, peer_name, "float32", batch, None, skipped=why))
            else:
                params = sum(p.numel() for p in peer.parameters())
                group.insert(0, Entry(pair, peer_name, "float32", batch, hf_runner(peer, batch, args.tokens), params))
            entries += group

    print(machine_line(), flush=True)
    print(f"CPU flags: {cpu_flags()}", flush=True)
    live = [e for e in entries if e.run is not None]
    for entry in live:  # untimed: first calls, a compiled step built or loaded
        assert entry.run is not None
        entry.run()
    for repeat in range(args.repeats):
        for entry in live:
            assert entry.run is not None
            start = time.perf_counter()
            entry.run()
            entry.times.append(time.perf_counter() - start)
            print(
                f"repeat {repeat + 1}: {entry.name} {entry.flags} B={entry.batch}: "
                f"{entry.batch * args.tokens / entry.times[-1]:,.1f} tokens/s",
                flush=True,
            )

    print()
    print(
        f"Greedy decode of {args.tokens:,} new tokens after a {len(PROMPT)}-byte prompt, 1 thread, best of "
        f"{args.repeats}; x peer = tokens/s over the Hugging Face row of the same pair and batch, this run"
    )
    print()
    rows = []
    for entry in entries:
        peer = next(e for e in entries if e.pair == entry.pair and e.batch == entry.batch and e.name.startswith("HF"))
        speed = entry.tokens_per_second(args.tokens)
        if entry.skipped:
            rows.append([entry.name, entry.batch, entry.flags, "-", "-", "-", f"skipped: {entry.skipped}"])
            continue
        ratio = f"{speed / peer.tokens_per_second(args.tokens):.2f}x" if peer.times else "-"
        ran = getattr(entry.run, "ran", "")  # what glactl's flags resolved to: precision, compiled or eager
        flags = f"{entry.flags} ({ran})" if ran else entry.flags
        rows.append([entry.name, entry.batch, flags, f"{entry.params / 1e6:.2f}M", speed, ratio, ""])
    print(markdown_table(["model", "batch", "flags", "params", "tokens/s", "x peer", "note"], rows))


if __name__ == "__main__":
    main()

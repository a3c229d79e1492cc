"""Bytes/s of scoring a file with the small GLA model through the code path of `glactl perplexity`.

Usage: python benchmarks/perplexity_throughput.py [--megabytes 20] [--preset small] [--models gla]
           [--windows 4096] [--threads 2] [--cli-megabytes 0]

The file is English text from ../shared/data (enwiki, else any .txt there) repeated to --megabytes, or
random bytes when no text is found; it is written to a temporary folder. Scoring goes through
glactl.inference.scoring.score_file (what `glactl perplexity FILE` calls after loading), with random weights:
speed does not depend on training. --cli-megabytes N > 0 also saves the model as a checkpoint folder and
runs `python -m glactl perplexity FILE --model DIR --json` end to end on an N MB file (wall time includes
start-up and loading). Several --windows (bytes per forward call) may be compared side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine_line, markdown_table

from glactl.inference.scoring import score_file
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import save_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def source_text() -> tuple[bytes, str]:
    """Some real text to repeat (first 4 MB of an enwiki file), or random bytes."""
    candidates = sorted((DATA / "enwiki").glob("*.txt")) + sorted(DATA.rglob("*.txt")) if DATA.is_dir() else []
    for path in candidates:
        if path.name.startswith("exclude") or path.stat().st_size < 1 << 20:
            continue
        with open(path, "rb") as f:
            return f.read(4 << 20), str(path.relative_to(ROOT.parent))
    return os.urandom(4 << 20), "random bytes"


def write_file(path: Path, size: int, text: bytes) -> None:
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = text[: size - written]
            f.write(piece)
            written += len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=20.0, help="size of the scored file (MB = 10^6 bytes)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--models", default="gla", help="mixers to compare (comma-separated)")
    parser.add_argument(
        "--windows", default="4096", help="bytes per forward call (the CLI's --window), comma-separated"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cli-megabytes", type=float, default=0.0, help="also run the CLI end to end on a file this large"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    windows = [int(w) for w in args.windows.split(",")]
    models = [m for m in args.models.split(",") if m]
    text, origin = source_text()

    print(machine_line(), flush=True)
    rows, cli_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "score.txt"
        size = int(args.megabytes * 1e6)
        write_file(path, size, text)
        for name in models:
            torch.manual_seed(0)
            model = LanguageModel(ModelConfig.preset(args.preset, mixer=name)).eval()
            for window in windows:
                start = time.perf_counter()
                score = score_file(model, path, window=window)
                seconds = time.perf_counter() - start
                rows.append(
                    [
                        name,
                        f"{model.num_parameters() / 1e6:.2f}M",
                        window,
                        score.bytes,
                        seconds,
                        score.bytes / seconds,
                        score.metrics()["bits_per_byte"],
                    ]
                )
                print(
                    f"{name} window={window}: {score.bytes:,} bytes in {seconds:.1f}s = {score.bytes / seconds:,.0f} bytes/s",
                    flush=True,
                )
            if args.cli_megabytes > 0:
                folder = Path(tmp) / f"model-{name}"
                save_model(folder, model)
                small = Path(tmp) / "cli.txt"
                write_file(small, int(args.cli_megabytes * 1e6), text)
                command = [
                    sys.executable,
                    "-m",
                    "glactl",
                    "perplexity",
                    str(small),
                    "--model",
                    str(folder),
                    "--device",
                    "cpu",
                    "--threads",
                    str(args.threads),
                    "--window",
                    str(windows[0]),
                    "--json",
                ]
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    print(f"CLI failed ({done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
                    cli_rows.append([name, int(args.cli_megabytes * 1e6), f"failed rc {done.returncode}", "-", "-"])
                else:
                    total = json.loads(done.stdout)["total"]
                    cli_rows.append([name, total["bytes"], wall, total["bytes"] / wall, total["tokens_per_second"]])
                    print(f"CLI {name}: {total['bytes']:,} bytes, wall {wall:.1f}s", flush=True)
            del model

    print()
    print(
        f"Perplexity scoring (glactl.inference.scoring.score_file), preset {args.preset}, {args.threads} threads, "
        f"file: {origin} repeated to {args.megabytes:g} MB; random weights"
    )
    print()
    print(markdown_table(["model", "params", "window", "bytes", "seconds", "bytes/s", "bits/byte"], rows))
    if cli_rows:
        print()
        print("`glactl perplexity FILE --model DIR --json` end to end (wall includes start-up and loading):")
        print()
        print(markdown_table(["model", "bytes", "wall s", "bytes/s (wall)", "bytes/s (reported)"], cli_rows))


if __name__ == "__main__":
    main()

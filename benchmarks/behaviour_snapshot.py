"""Record what a fixed set of glactl commands print and write, and compare two recordings.

A refactoring that claims "no behaviour change" is checked by recording before and after:

    python benchmarks/behaviour_snapshot.py record /tmp/before     # on the old code
    python benchmarks/behaviour_snapshot.py record /tmp/after      # on the new code
    python benchmarks/behaviour_snapshot.py compare /tmp/before /tmp/after

Each command's stdout, stderr and exit code are kept, and so are the files it writes (hashed).
Times, speeds, paths of the temporary folder and the like are masked, so that two recordings of
the same code on the same machine are byte-identical. Everything runs on one thread, float32
and int8 alike, so that the sampled text does not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEXT = SHARED / "prose" / "tinyshakespeare.txt"

# Numbers that change from run to run (times, speeds, memory, dates) and the scratch folder.
MASKS = [
    (re.compile(r"\d+(\.\d+)?\s*(s|ms|min|h)\b"), "<time>"),
    (re.compile(r"[\d,]+(\.\d+)?\s*(tokens|tok|bytes|B)/s"), "<speed>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?"), "<date>"),
    (re.compile(r"\d+(\.\d+)?\s*(GiB|MiB|GB|MB) (peak|rss|resident)"), "<memory>"),
    (re.compile(r"pid \d+"), "pid <n>"),
    (re.compile(r"\b\d+:\d\d:\d\d\b"), "<clock>"),
    (re.compile(r"/[^\s\"']*/weights/"), "<checkout>/weights/"),
    (re.compile(r"(\.txt)-[0-9a-f]{16}"), r"\1-<hash>"),
    (re.compile(r"\d+(\.\d+)?x\b"), "<ratio>"),
]
JSON_VOLATILE = re.compile(
    r"(second|time|elapsed|per_s|speed|_s$|date|created|pid|peak_(mem|rss|bytes)|rss|memory|host|cpu|ratio)"
)


def commands(scratch: Path) -> list[tuple[str, list[str]]]:
    """The fixed set: both shipped models, every command, a tiny train + resume, compare, states."""
    run = scratch / "run"
    state = scratch / "prompt.state"
    text = scratch / "text.txt"
    text.write_bytes(TEXT.read_bytes()[:3000] if TEXT.exists() else b"To be or not to be.\n" * 100)
    one = ["--threads", "1"]
    eager32 = ["--precision", "float32", "--compile", "off"]
    tiny = ["--preset", "tiny", "--batch-size", "4", "--dtype", "float32", *one]
    train = ["train", "--data", str(text), *tiny, "--seq-len", "64", "--eval-every", "3", "--eval-windows", "4"]
    compare = ["compare", "--steps", "4", *tiny, *eager32]
    # One command a line reads better than one flag a line.
    # fmt: off
    return [
        ("generate-gla", ["generate", "The history of", "-n", "120", "--seed", "0", *one]),
        ("generate-gla-float32", ["generate", "The history of", "-n", "80", "--seed", "1", *eager32, *one]),
        ("generate-transformer", ["generate", "The history of", "-n", "120", "--seed", "0", "-m", "transformer-enwiki", *one]),
        ("generate-json", ["generate", "Once", "-n", "40", "--seed", "3", "--num-samples", "2", "--json", "--temperature", "0.8", "--top-k", "20", *one]),
        ("complete", ["complete", "The history of", "-n", "3", *one]),
        ("complete-json", ["complete", "The cat", "-n", "2", "--until", "line", "--json", "-m", "transformer-enwiki", *one]),
        ("perplexity-json", ["perplexity", str(text), "--json", *one]),
        ("perplexity-table", ["perplexity", text.name, "-m", "transformer-enwiki", "--precision", "float32", *one]),
        ("info-gla", ["info", "gla-enwiki"]),
        ("info-json", ["info", "transformer-enwiki", "--json"]),
        ("save-state", ["generate", "The history of", "-n", "30", "--seed", "0", "--save-state", str(state), *one]),
        ("info-state", ["info", str(state)]),
        ("from-state", ["generate", " and", "-n", "30", "--seed", "0", "--state", str(state), *one]),
        ("perplexity-state", ["perplexity", str(text), "--state", str(state), "--json", *one]),
        ("train", [*train, "--steps", "6", "--out", str(run)]),
        ("resume", [*train, "--steps", "9", "--out", str(run), "--resume"]),
        ("info-run", ["info", str(run)]),
        ("generate-run", ["generate", "To be", "-n", "40", "--seed", "0", "-m", str(run), *one]),
        ("compare", [*compare, "--models", "gla,mingru", "--data", str(text), "--seq-len", "64", "--contexts", "64", "--eval-windows", "4", "--out", str(scratch / "cmp")]),
        ("compare-task", [*compare, "--models", "gla,transformer", "--task", "mqar", "--eval-windows", "8", "--out", str(scratch / "cmp-task")]),
        ("bad-flag", ["generate", "x", "--temperature", "-1"]),
        ("missing-file", ["perplexity", str(scratch / "nope.txt")]),
    ]
    # fmt: on


def mask(text: str, scratch: Path) -> str:
    """Replace what changes between runs of the same code by a placeholder."""
    text = mask_tables(text.replace(str(scratch), "<scratch>"))
    for pattern, placeholder in MASKS:
        text = pattern.sub(placeholder, text)
    # A centred title holding the checkout's path is padded by that path's length.
    return "\n".join(" ".join(line.split()) if "<checkout>" in line else line for line in text.split("\n"))


def mask_tables(text: str) -> str:
    """Blank the cells of table columns (markdown or rich) that hold speeds or times."""
    out: list[str] = []
    volatile: set[int] = set()
    for line in text.split("\n"):
        row = line.strip()
        cells = re.split(r"[|│┃]", row)
        if len(cells) < 3:
            volatile = set() if not row or row[0] not in "┏┡└┗━─-" else volatile
        elif not volatile:
            volatile = {i for i, c in enumerate(cells) if re.search(r"tok/s|bytes/s|time|speed|peak", c)}
        else:
            line = "|".join("<v>" if i in volatile else c.strip() for i, c in enumerate(cells))
        out.append(line)
    return "\n".join(out)


def mask_json(value: object) -> object:
    """Drop volatile fields (times, speeds, dates) from a JSON document, recursively."""
    if isinstance(value, dict):
        return {k: ("<volatile>" if JSON_VOLATILE.search(k) else mask_json(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_json(v) for v in value]
    return value


def file_digest(path: Path, scratch: Path) -> str:
    """A file's content as compared: JSON masked, text masked, binary hashed."""
    data = path.read_bytes()
    if path.suffix == ".json":
        try:
            return mask(json.dumps(mask_json(json.loads(data)), sort_keys=True, indent=1), scratch)
        except ValueError:
            pass
    if path.suffix == ".jsonl":
        lines = [json.dumps(mask_json(json.loads(line)), sort_keys=True) for line in data.splitlines() if line.strip()]
        return mask("\n".join(lines), scratch)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(path)
        return "\n".join(f"{k} {hashlib.sha256(tensors[k].tobytes()).hexdigest()}" for k in sorted(tensors))
    if path.suffix in {".md", ".txt", ".log"}:
        return mask(data.decode("utf-8", "replace"), scratch)
    if path.suffix == ".png":
        return "<present>"  # a plot's pixels depend on the measured speeds
    return hashlib.sha256(data).hexdigest()


def record(out: Path) -> None:
    """Run every command in a fresh scratch folder and write what it printed and wrote."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="glactl-snapshot-"))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", GLACTL_CACHE=str(scratch / "cache"), COLUMNS="100")
    try:
        for name, args in commands(scratch):
            result = subprocess.run(
                [sys.executable, "-m", "glactl", *args], capture_output=True, text=True, env=env, cwd=scratch
            )
            stdout = result.stdout
            if "--json" in args:
                try:
                    stdout = json.dumps(mask_json(json.loads(stdout)), sort_keys=True, indent=1) + "\n"
                except ValueError:
                    pass
            body = f"exit {result.returncode}\n--- stdout\n{mask(stdout, scratch)}\n--- stderr\n{mask(result.stderr, scratch)}"
            (out / f"{name}.txt").write_text(body)
            print(f"{name}: exit {result.returncode}", file=sys.stderr)
        files = sorted(p for p in scratch.rglob("*") if p.is_file() and "cache" not in p.relative_to(scratch).parts)
        lines = [f"== {p.relative_to(scratch)}\n{file_digest(p, scratch)}" for p in files]
        (out / "files.txt").write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compare(before: Path, after: Path) -> int:
    """Print the recordings that differ; exit status 1 when any does."""
    names = sorted({p.name for p in before.glob("*.txt")} | {p.name for p in after.glob("*.txt")})
    differing = [
        n
        for n in names
        if not (before / n).exists()
        or not (after / n).exists()
        or (before / n).read_bytes() != (after / n).read_bytes()
    ]
    for name in differing:
        print(f"differs: {name}")
    print(f"{len(names) - len(differing)} of {len(names)} recordings identical")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.verb == "record":
        record(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())

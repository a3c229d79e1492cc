"""The inference speed targets side by side in one run: glactl as it was (an old environment) against this tree.

Usage: python benchmarks/inference_speed.py --old-python /tmp/venv-old/bin/python [--new-python .venv/bin/python]
           [--steps 300] [--repeats 3] [--perplexity-bytes 300000] [--skip-commands | --skip-decode]
           [--commands generate1,generate2000,complete,perplexity] [--perplexity-repeats 1]

Every measurement runs in a child process of the named Python (so old and new code never mix), on the
shipped gla-enwiki at batch 1; decode steps with one torch thread, whole commands with each version's own
thread defaults (old: torch's, all cores, for scoring; new: the idle cores; both: 1 for decoding). Old
and new runs alternate, so a neighbour's load hits both alike; each cell is the best of --repeats. Decode
speed is reported twice: wall clock, and the process's CPU time (time.process_time), which a busy machine
inflates less. Floors: weight bytes divided by this machine's memory read bandwidth (best torch.sum over a
512 MB float32 array, 1 thread). Whole commands are timed from outside with /usr/bin/time (wall and
user+sys seconds); `cold` runs with an empty GLACTL_CACHE (no compiled step cached), `warm` after a run
that filled it. Every command is also timed with `--precision float32 --compile off` (the exact weights,
eager) beside the defaults, whose `--precision auto` is measured on this machine by the first run and cached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cpu_flags, markdown_table

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT.parent / "shared" / "data" / "wikitext-103-raw" / "wiki.test.raw"
NEUTRAL = (
    tempfile.gettempdir()
)  # children run here, so `import glactl` finds each environment's own copy, not this tree

STEP_SNIPPET = r"""
import json, sys, time, torch
torch.set_num_threads(1)
import glactl
opts = json.loads(sys.argv[1])
try:
    lm = glactl.load(MODEL, threads=1, **opts)
except TypeError:  # the old glactl has no precision/compile
    lm = glactl.load(MODEL, threads=1)
model = lm.model
with torch.inference_mode():
    logits, state = model(torch.tensor([list(b"\nThe history of")]), None)
    token = logits[:, -1].argmax(-1)
    try:
        from glactl.inference.compiled_step import stepper
        step = stepper(model, 1, 10**6)
    except ImportError:
        step = model.step
    start = time.perf_counter()
    logits, state = step(token, state)
    first = time.perf_counter() - start
    for _ in range(20):
        logits, state = step(logits.argmax(-1), state)
    wall = cpu = 1e9
    for _ in range(3):
        w, c = time.perf_counter(), time.process_time()
        for _ in range(STEPS):
            logits, state = step(logits.argmax(-1), state)
        wall, cpu = min(wall, (time.perf_counter() - w) / STEPS), min(cpu, (time.process_time() - c) / STEPS)
print(json.dumps({"wall": wall, "cpu": cpu, "first": first}))
"""

BANDWIDTH_SNIPPET = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
x = torch.ones(128 << 20)
best = 1e9
for _ in range(8):
    s = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - s)
print(json.dumps({"bytes_per_s": x.numel() * 4 / best}))
"""


def child(python: str, code: str, *args: str, env: dict | None = None) -> dict:
    """Run a snippet under `python`; its last stdout line is JSON."""
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, cwd=NEUTRAL, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-500:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_command(python: str, argv: list[str], env: dict) -> tuple[float, float]:
    """(wall, user+sys) seconds of `python -m glactl ARGV`, from /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        command = ["/usr/bin/time", "-o", out.name, "-f", "%e %U %S", python, "-m", "glactl", *argv]
        done = subprocess.run(command, capture_output=True, text=True, cwd=NEUTRAL, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()[-300:]}")
        wall, user, system = (float(x) for x in Path(out.name).read_text().split()[-3:])
    return wall, user + system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-python", required=True)
    parser.add_argument("--new-python", default=sys.executable)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--perplexity-bytes", type=int, default=300_000)
    parser.add_argument("--skip-commands", action="store_true")
    parser.add_argument("--skip-decode", action="store_true", help="only the whole commands")
    parser.add_argument(
        "--commands", default="generate1,generate2000,complete,perplexity", help="which whole commands to time"
    )
    parser.add_argument("--perplexity-repeats", type=int, default=1)
    parser.add_argument("--text", default=str(WIKI), help="file whose first --perplexity-bytes bytes perplexity scores")
    parser.add_argument(
        "--model", default=str(ROOT / "weights" / "gla-enwiki"), help="checkpoint folder both versions load"
    )
    args = parser.parse_args()
    old, new = args.old_python, args.new_python
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cache = tempfile.mkdtemp(prefix="glactl-bench-cache-")
    env["GLACTL_CACHE"] = cache
    from common import machine_line

    print(machine_line(), flush=True)
    print(f"CPU flags: {cpu_flags()}", flush=True)
    bandwidth = max(child(new, BANDWIDTH_SNIPPET, "1")["bytes_per_s"] for _ in range(2))
    all_cores = max(child(new, BANDWIDTH_SNIPPET, str(os.cpu_count() or 1))["bytes_per_s"] for _ in range(2))
    params = 10_777_152  # gla-enwiki parameters: a step reads every weight once (the tied embedding as the head)
    floors = {"float32": (params * 4) / bandwidth, "bfloat16": (params * 2) / bandwidth, "int8": params / bandwidth}
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s on 1 thread (the floors below), "
        f"{all_cores / 1e9:.1f} GB/s on {os.cpu_count()} threads",
        flush=True,
    )

    # ---- decode steps --------------------------------------------------------------------
    if not args.skip_decode:
        decode_table(args, old, new, env, floors, params)
    if args.skip_commands:
        return
    command_table(args, old, new, env)


def decode_table(args: argparse.Namespace, old: str, new: str, env: dict, floors: dict, params: int) -> None:
    """Decode steps of the old version and of each new precision x compile, interleaved; best of --repeats."""
    cells = [
        ("old", old, {}),
        ("new eager float32", new, {"precision": "float32", "compile": "off"}),
        ("new compiled float32", new, {"precision": "float32", "compile": "on"}),
        ("new eager bfloat16", new, {"precision": "bfloat16", "compile": "off"}),
        ("new compiled bfloat16", new, {"precision": "bfloat16", "compile": "on"}),
        ("new eager int8", new, {"precision": "int8", "compile": "off"}),
        ("new compiled int8", new, {"precision": "int8", "compile": "on"}),
        ("new defaults (auto, auto)", new, {"precision": "auto", "compile": "auto"}),
    ]
    code = STEP_SNIPPET.replace("STEPS", str(args.steps)).replace("MODEL", repr(args.model))
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, python, opts in cells:  # interleaved: old and new meet the same neighbours
            got = child(python, code, json.dumps(opts), env=env)
            prev = best.get(name)
            best[name] = got if prev is None else {k: min(prev[k], got[k]) for k in got}
            print(f"{name}: {1 / got['wall']:.0f} tok/s wall, {1 / got['cpu']:.0f} tok/s cpu", flush=True)
    base = best["old"]
    rows = []
    for name, _, opts in cells:
        b = best[name]
        floor = floors.get(opts.get("precision", "float32"), floors["float32"])
        rows.append(
            [
                name,
                1 / b["wall"],
                1 / b["cpu"],
                b["cpu"] * 1e3,
                b["cpu"] / floor if "auto" not in opts.values() else "-",
                base["wall"] / b["wall"],
                base["cpu"] / b["cpu"],
            ]
        )
    print()
    print(f"Decode, shipped gla-enwiki, batch 1, 1 thread, best of {args.repeats} x {args.steps} steps")
    print()
    print(
        markdown_table(
            ["run", "tok/s (wall)", "tok/s (cpu)", "ms/token (cpu)", "x its floor", "x old (wall)", "x old (cpu)"], rows
        )
    )
    print()
    print(
        markdown_table(
            ["precision", "weight bytes", "floor ms/token", "floor tok/s"],
            [[p, int(params * {"float32": 4, "bfloat16": 2, "int8": 1}[p]), f * 1e3, 1 / f] for p, f in floors.items()],
        )
    )


def command_table(args: argparse.Namespace, old: str, new: str, env: dict) -> None:
    """Whole commands, each version with its own thread defaults (no OMP_NUM_THREADS), old and new alternating."""
    env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "wiki300k.txt"
        text.write_bytes(Path(args.text).read_bytes()[: args.perplexity_bytes])
        model = ["--model", args.model]
        commands = {
            "generate1": ('generate "The" -n 1', ["generate", "The", "--max-new-tokens", "1", "--seed", "0", *model]),
            "generate2000": (
                'generate "The history of" -n 2000',
                ["generate", "The history of", "--max-new-tokens", "2000", "--seed", "0", *model],
            ),
            "complete": (
                'complete "The history of" --n 5',
                ["complete", "The history of", "--n", "5", "--until", "sentence", "--max-chars", "60", *model],
            ),
            "perplexity": (
                f"perplexity {args.perplexity_bytes // 1000} KB of {Path(args.text).name}",
                ["perplexity", str(text), *model],
            ),
        }
        rows = []
        for key in args.commands.split(","):
            label, argv = commands[key]
            cold, exact = "new, cold cache", "new, --precision float32 --compile off"  # extra rows, as the table says
            times: dict[str, list[tuple[float, float]]] = {"old": [], "new": [], cold: [], exact: []}
            repeats = args.perplexity_repeats if key == "perplexity" else 2
            for _ in range(repeats):
                times["old"].append(timed_command(old, argv, env))
                if key == "generate2000":
                    cold_env = dict(env, GLACTL_CACHE=tempfile.mkdtemp(prefix="glactl-cold-"))
                    times[cold].append(timed_command(new, argv, cold_env))
                times["new"].append(
                    timed_command(new, argv, env)
                )  # warm: the cold run (or a previous one) filled the cache
                times[exact].append(timed_command(new, [*argv, "--precision", "float32", "--compile", "off"], env))
            o = min(times["old"])
            n, e = min(times["new"]), min(times[exact])
            rows.append([label, "old", o[0], o[1], "", f"{e[0] / o[0]:.2f}x"])
            new_label = "new, warm" if key == "generate2000" else "new"
            rows.append([label, new_label, n[0], n[1], f"{o[0] / n[0]:.2f}x", f"{e[0] / n[0]:.2f}x"])
            for name in (cold, exact):
                if times[name]:
                    c = min(times[name])
                    rows.append([label, name, c[0], c[1], f"{o[0] / c[0]:.2f}x", f"{e[0] / c[0]:.2f}x"])
            print(f"{label}: old {o[0]:.2f}s new {n[0]:.2f}s", flush=True)
        print()
        print("Whole commands, default flags and threads, timed with /usr/bin/time (best of the runs)")
        print()
        headers = ["command", "glactl", "wall s", "user+sys s", "old / this", "float32 eager / this"]
        print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()

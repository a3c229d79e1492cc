"""`glactl info`: describe a model (architecture, parameters, state growth, training summary, files) or a saved state file."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from glactl.cli.common import load_model, print_facts, write
from glactl.cli.options import ContextOption, DeviceOption, ThreadsOption
from glactl.report.display import clock, human_bytes


def info(
    model_arg: str | None = typer.Argument(
        None,
        metavar="MODEL",
        help="What to describe: a trained model (run folder, checkpoint folder or shipped name; default the "
        "shipped gla-enwiki), a state file written by --save-state, or a folder of runs (compare --out, runs/).",
    ),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help="Same as MODEL."),
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    context: ContextOption = None,
    json_out: bool = typer.Option(False, "--json", help="Print the description as one JSON document."),
    machine: bool = typer.Option(
        False, "--machine", help="Describe this machine instead: CPU, kernel flags, and what --precision auto measured."
    ),
) -> None:
    """Describe a model (architecture, parameters, state size per token of context, training summary, files),
    a saved state file (its model, bytes read, size), or the runs in a folder of runs."""
    import json

    from glactl.errors import InputError

    if model_arg and model and model_arg != model:
        raise InputError("give the model once: MODEL or --model, not both")
    target = model_arg or model
    if machine:
        from glactl.cli.info_machine import describe_machine

        describe_machine(json_out)
        return
    if _names_state_file(target):
        _describe_state_file(target, json_out)
        return
    runs = _runs_inside(Path(target)) if target else []
    if runs:
        _describe_runs(Path(target), runs, json_out)
        return
    lm = load_model(target, device, threads, context, precision="float32", compile="off")  # described, not run
    described = lm.info()
    if json_out:
        write(sys.stdout, json.dumps(described, default=str) + "\n")
        return
    from glactl.runtime.threads import plural

    arch, state = described["architecture"], described["state"]
    rows = [
        (
            "architecture",
            f"{arch['mixer']}: d_model {arch['d_model']}, {plural(arch['n_layers'], 'layer')}, "
            f"{plural(arch['n_heads'], 'head')}, "
            f"context {arch['context'] if arch['context'] is not None else 'unlimited'}",
        ),
        ("parameters", f"{described['parameters']:,}"),
    ]
    if state["growth"] == "constant":
        growth = f"constant: {human_bytes(state['bytes_after_100_tokens'])} whatever the context length"
    else:
        growth = (
            f"growing: {state['bytes_per_token']:,.0f} bytes per token of context "
            f"({human_bytes(state['bytes_after_10_tokens'])} at 10 tokens, {human_bytes(state['bytes_after_100_tokens'])} at 100)"
        )
        if state["context"] is not None:
            growth += f", up to the {state['context']}-token window"
    rows.append(("state", growth))
    rows.append(("weights", f"{described.get('weights_dtype', 'float32')}"))
    rows += _training_rows(described["training"], described["model"])
    rows += [(f"file {name}", human_bytes(size)) for name, size in described["files"].items()]
    print_facts(f"{described['model']}", rows)


def _training_rows(training: dict, path: str) -> list[tuple[str, str]]:
    """The training summary of config.json as one fact per row, numbers rounded (info's text view)."""
    from glactl.storage.model_paths import training_pid

    if not training:
        return [("training", "no training summary in config.json")]
    folder = Path(path)
    run = folder.parent if folder.name.removesuffix(".old") in ("checkpoint", "best") else folder

    rows: list[tuple[str, str]] = []
    steps, planned, budget = training.get("steps"), training.get("steps_planned"), training.get("time_budget_seconds")
    done = f"{steps:,} steps" if isinstance(steps, int) else "?"
    if isinstance(planned, int) and isinstance(steps, int):
        done = f"{steps:,} of {planned:,} steps"
    if budget:
        done += f", {clock(training.get('wall_time_seconds', 0))} of a {clock(budget)} budget"
    elif training.get("wall_time_seconds") is not None:
        done += f" in {clock(training['wall_time_seconds'])}"
    pid = training_pid(run)
    unfinished = (
        isinstance(planned, int)
        and isinstance(steps, int)
        and steps < planned
        and not (budget and training.get("wall_time_seconds", 0) >= budget)
    )
    if pid is not None:
        done += f" (training in progress, pid {pid})"
    elif unfinished:
        done += f" (unfinished; continue with: glactl train --out {run} --resume)"
    rows.append(("trained", done))
    if training.get("tokens_seen") is not None:
        rows.append(("tokens seen", f"{training['tokens_seen']:,}"))
    sources = training.get("data") or []
    sources = [sources] if isinstance(sources, (str, dict)) else sources if isinstance(sources, list) else []
    # config.json is user data: a source may be a bare name rather than train's {"source": ..., "weight": ...}
    sources = [s if isinstance(s, dict) else {"source": s} for s in sources]
    total = sum(s["weight"] for s in sources if isinstance(s.get("weight"), (int, float))) or 1.0
    for source in sources:
        size = source.get("train_bytes")
        facts = [human_bytes(size) + " of training text"] if isinstance(size, (int, float)) else []
        if len(sources) > 1 and isinstance(source.get("weight"), (int, float)):
            facts.append(f"{100 * source['weight'] / total:.1f}% of the batches")
        rows.append(("data", f"{source.get('source')}" + (f" ({', '.join(facts)})" if facts else "")))
    if training.get("task"):
        task = training["task"]
        rows.append(("task", ", ".join(f"{k} {v}" for k, v in task.items()) if isinstance(task, dict) else str(task)))
    elif training.get("data"):
        rows.append(
            ("validation", training.get("valid") or "each source's validation split (or the last 1% of a local file)")
        )
    for key, label in (("val_bits_per_byte", "val bits per byte"), ("val_loss", "val loss")):
        if isinstance(training.get(key), (int, float)):
            best = training.get(f"best_{key}")
            rows.append(
                (label, f"{training[key]:.4f}" + (f" (best {best:.4f})" if isinstance(best, (int, float)) else ""))
            )
    if isinstance(training.get("accuracy"), (int, float)):
        rows.append(("accuracy", f"{100 * training['accuracy']:.2f}%"))
    if training.get("seq_len") is not None:
        accum = f" x {training['grad_accum']} accumulated" if (training.get("grad_accum") or 1) > 1 else ""
        rows.append(("batch", f"{training.get('batch_size')} windows of {training['seq_len']} bytes{accum}"))
    if isinstance(training.get("lr"), (int, float)):
        rows.append(("peak lr", f"{training['lr']:g}"))
    if training.get("seed") is not None:
        rows.append(("seed", str(training["seed"])))
    if training.get("device"):
        from glactl.runtime.threads import plural

        threads = f", {plural(training['threads'], 'thread')}" if isinstance(training.get("threads"), int) else ""
        rows.append(("trained on", f"{training['device']}, {training.get('dtype', '?')}{threads}"))
    if training.get("init_from"):
        rows.append(("init from", str(training["init_from"])))
    if training.get("command"):
        rows.append(("command", str(training["command"])))
    for command in training.get("resumed_with") or []:
        rows.append(("resumed with", str(command)))
    if training.get("glactl_version"):
        rows.append(("glactl version", str(training["glactl_version"])))
    return rows


def _names_state_file(target: str | None) -> bool:
    """A file that is not a checkpoint's own file nor a pickle: `info` describes it as a saved state (or says why not)."""
    if not target or not Path(target).is_file():
        return False
    from glactl.storage.state_file import is_state_file

    name = Path(target).name
    return is_state_file(target) or (
        name not in ("model.safetensors", "config.json")
        and Path(target).suffix.lower() not in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
    )


def _describe_state_file(path: str, json_out: bool) -> None:
    """`glactl info STATE_FILE`: what the file holds and which model it belongs to, read from its header."""
    import json

    from glactl.storage.state_file import describe

    described = describe(path)
    if json_out:
        write(sys.stdout, json.dumps(described) + "\n")
        return
    model = described["model"]
    rows = [
        ("model", model["name"] if "name" in model else "not recorded (saved by an earlier glactl)"),
        ("architecture", model["mixer"]),
        (
            "checkpoint",
            f"config.json sha256 {model['config_sha256'][:16]}, model.safetensors sha256 {model['weights_sha256'][:16]}",
        ),
    ]
    if described["windowed"]:
        window = (
            "unlimited"
            if described["context"] is None
            else f"{described['context']} tokens ({described['sink_tokens']} sinks)"
        )
        rows.append(("attention window", window))
    rows += [
        ("bytes read", f'{described["bytes_read"]:,} (after the "\\n" start)'),
        ("text ends with", json.dumps(described["text_ends_with"], ensure_ascii=False)),
        ("precision", described["precision"]),
        ("size", f"{human_bytes(described['file_bytes'])} file, {human_bytes(described['state_bytes'])} of state"),
        ("format", f"version {described['format_version']}, written by glactl {described['glactl_version']}"),
    ]
    print_facts(f"{path} (glactl saved state)", rows)


def _runs_inside(folder: Path) -> list[Path]:
    """The run folders directly inside `folder` when it is not a model itself (a compare --out folder, runs/)."""
    if not folder.is_dir() or (folder / "config.json").exists() or (folder / "checkpoint").exists():
        return []
    try:
        return sorted(p for p in folder.iterdir() if (p / "checkpoint" / "config.json").is_file())
    except OSError:
        return []


def _describe_runs(folder: Path, runs: list[Path], json_out: bool) -> None:
    """`glactl info FOLDER` on a folder of runs: each run's architecture, steps and score, from its config.json."""
    import json

    from glactl.runtime.threads import plural
    from glactl.storage.safe_read import read_json

    listed = []
    for run in runs:
        document = read_json(run / "checkpoint" / "config.json", "config.json")
        document = document if isinstance(document, dict) else {}
        training = document.get("training") if isinstance(document.get("training"), dict) else {}
        architecture = document.get("architecture") if isinstance(document.get("architecture"), dict) else {}
        listed.append(
            {
                "name": run.name,
                "path": str(run),
                "architecture": architecture.get("mixer"),
                "steps": training.get("steps"),
                "val_bits_per_byte": training.get("val_bits_per_byte"),
                "accuracy": training.get("accuracy"),
            }
        )
    if json_out:
        write(sys.stdout, json.dumps({"folder": str(folder), "runs": listed}) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{folder}: a folder of {plural(len(runs), 'run')}; describe one with: glactl info {Path(folder) / runs[0].name}",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    table = Table()
    for column, justify in (("run", "left"), ("architecture", "left"), ("steps", "right"), ("result", "right")):
        table.add_column(column, justify=justify)
    for run in listed:
        if isinstance(run["val_bits_per_byte"], (int, float)):
            result = f"{run['val_bits_per_byte']:.4f} bits/byte"
        elif isinstance(run["accuracy"], (int, float)):
            result = f"{100 * run['accuracy']:.2f}% accuracy"
        else:
            result = "-"
        steps = f"{run['steps']:,}" if isinstance(run["steps"], int) else "-"
        table.add_row(run["name"], str(run["architecture"] or "?"), steps, result)
    console.print(table)

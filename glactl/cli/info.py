"""`glactl info`: describe a model (architecture, parameters, state growth, training summary, files) or a saved state file."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from glactl.cli.common import load_model, write
from glactl.cli.options import MODEL_HELP, DeviceOption, ThreadsOption
from glactl.report.display import clock, human_bytes


def info(
    model_arg: str | None = typer.Argument(None, metavar="MODEL", help=MODEL_HELP),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help="Same as MODEL."),
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    json_out: bool = typer.Option(False, "--json", help="Print the description as one JSON document."),
) -> None:
    """Describe a model: architecture, parameters, state size per token of context, training summary, files."""
    import json

    from glactl.errors import InputError

    if model_arg and model and model_arg != model:
        raise InputError("give the model once: MODEL or --model, not both")
    if _names_state_file(model_arg or model):
        _describe_state_file(model_arg or model, json_out)
        return
    lm = load_model(model_arg or model, device, threads)
    described = lm.info()
    if json_out:
        write(sys.stdout, json.dumps(described, default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    arch, state = described["architecture"], described["state"]
    table = Table(title=f"{described['model']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    from glactl.runtime.threads import plural

    table.add_row(
        "architecture",
        f"{arch['mixer']}: d_model {arch['d_model']}, {plural(arch['n_layers'], 'layer')}, "
        f"{plural(arch['n_heads'], 'head')}, "
        f"context {arch['context'] if arch['context'] is not None else 'unlimited'}",
    )
    table.add_row("parameters", f"{described['parameters']:,}")
    if state["growth"] == "constant":
        growth = f"constant: {human_bytes(state['bytes_after_100_tokens'])} whatever the context length"
    else:
        growth = (
            f"growing: {state['bytes_per_token']:,.0f} bytes per token of context "
            f"({human_bytes(state['bytes_after_10_tokens'])} at 10 tokens, {human_bytes(state['bytes_after_100_tokens'])} at 100)"
        )
        if state["context"] is not None:
            growth += f", up to the {state['context']}-token window"
    table.add_row("state", growth)
    table.add_row("weights", f"{described.get('weights_dtype', 'float32')}")
    for what, value in _training_rows(described["training"], described["model"]):
        table.add_row(what, value)
    for name, size in described["files"].items():
        table.add_row(f"file {name}", human_bytes(size))
    Console().print(table)


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
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path} (glactl saved state)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    model = described["model"]
    table.add_row(
        "model",
        f"{model['mixer']}: config.json sha256 {model['config_sha256'][:16]}, "
        f"model.safetensors sha256 {model['weights_sha256'][:16]}",
    )
    if described["windowed"]:
        window = (
            "unlimited"
            if described["context"] is None
            else f"{described['context']} tokens ({described['sink_tokens']} sinks)"
        )
        table.add_row("attention window", window)
    table.add_row("bytes read", f'{described["bytes_read"]:,} (after the "\\n" start)')
    table.add_row("text ends with", json.dumps(described["text_ends_with"], ensure_ascii=False))
    table.add_row("precision", described["precision"])
    table.add_row(
        "size", f"{human_bytes(described['file_bytes'])} file, {human_bytes(described['state_bytes'])} of state"
    )
    table.add_row("format", f"version {described['format_version']}, written by glactl {described['glactl_version']}")
    Console().print(table)

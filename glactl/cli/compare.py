"""`glactl compare`: train several architectures on the same data and budget, then compare them."""

from __future__ import annotations

import sys

import typer

from glactl.cli.common import write
from glactl.cli.options import (
    ARCHITECTURES,
    COMPILE_CHOICES,
    PRECISION_CHOICES,
    DeviceOption,
    DtypeOption,
    PerformerRopeOption,
    ShortConvOption,
    ThreadsOption,
    choices,
    one_spelling,
)


def compare(
    archs: str | None = typer.Option(
        None,
        "--archs",
        metavar="LIST",
        help=f"Architectures to train and compare, comma-separated, e.g. gla,transformer; any of: {ARCHITECTURES}.",
    ),
    models: str | None = typer.Option(None, "--models", "-m", metavar="LIST", hidden=True),  # --archs' old spelling
    device: DeviceOption = "auto",
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    precision: str | None = typer.Option(
        None,
        "--precision",
        metavar=PRECISION_CHOICES,
        help="Weights' format for the generation speed columns and the samples (default auto: the fixed rule, int8 on "
        "x86 CPUs with AVX2 or AVX512, else float32, the same for every architecture).",
    ),
    compile: str | None = typer.Option(
        None,
        "--compile",
        metavar=COMPILE_CHOICES,
        help="Compiled decoding step for the generation speed columns, as for generate (default auto: for runs that trained 5 minutes or more).",
    ),
    data: list[str] = typer.Option([], "--data", help="Training text as for train (repeatable); default wikitext-103."),
    valid: str | None = typer.Option(
        None, "--valid", help="Validation text (default: each source's validation split)."
    ),
    preset: str = typer.Option(
        "small", "--preset", metavar=choices("tiny", "small", "base"), help="Model size for every model."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps per model."),
    time_budget: str | None = typer.Option(None, "--time", help="Wall-clock budget per model, e.g. 10m."),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        help="Training window in bytes (default 512; with --task: mqar 64, selective-copy 256, sort twice --sort-count).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Windows per optimizer step."),
    task: str = typer.Option(
        "lm",
        "--task",
        metavar=choices("lm", "mqar", "selective-copy", "sort"),
        help="What to train and score: lm (language modelling on --data; default lm), or a synthetic probe scored by accuracy: mqar (associative recall), selective-copy, sort.",
    ),
    pairs: int | None = typer.Option(None, "--pairs", help="--task mqar: key-value pairs per sequence (default 8)."),
    sort_count: int | None = typer.Option(
        None, "--sort-count", help="--task sort: how many values to sort (default 100)."
    ),
    sort_range: int | None = typer.Option(
        None,
        "--sort-range",
        help="--task sort: how many distinct values they are drawn from, with repeats (default 16).",
    ),
    short_conv: ShortConvOption = None,
    performer_rope: PerformerRopeOption = None,
    seed: int | None = typer.Option(None, "--seed", help="Random seed for every run (default 0)."),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Repeat every run with these seeds (e.g. 0,1,2) and report mean and spread."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate for all models (default: each architecture's tuned one)."
    ),
    contexts: str = typer.Option(
        "1k,8k,32k", "--contexts", help="Context lengths in bytes for the generation speed and state measurements."
    ),
    eval_every: int | None = typer.Option(
        None, "--eval-every", help="Evaluate every N steps (default: a tenth of --steps, or 100)."
    ),
    eval_windows: int | None = typer.Option(
        None,
        "--eval-windows",
        help="Fixed validation windows (default 64); with --task, the size of the fixed test set (default 256).",
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Prompt for the samples (a string, - or @path; default: a line of the validation text)."
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FOLDER",
        help="Output folder (default compare/<preset>-<budget>, or compare/<task>-<preset>-<budget>).",
    ),
    force: bool = typer.Option(False, "--force", help="Redo runs that are already finished."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the results (results.json's entries) as one JSON document."
    ),
) -> None:
    """Train several architectures on the same data and budget, then compare speed, memory and bits per byte."""
    from rich.console import Console

    from glactl.api.prompts import read_prompt
    from glactl.compare.options import CompareOptions, default_out, parse_contexts, parse_seeds
    from glactl.compare.report import markdown_table
    from glactl.compare.runner import run_compare
    from glactl.errors import InputError
    from glactl.storage.atomic import check_output_folder
    from glactl.training.options import parse_duration

    if seed is not None and seeds is not None:
        raise InputError("give --seed or --seeds, not both")
    options = CompareOptions(
        models=_architectures(archs, models),
        data=list(data),
        valid=valid,
        preset=preset,
        steps=steps,
        time_budget=parse_duration(time_budget) if time_budget else None,
        seq_len=seq_len,
        batch_size=batch_size,
        task=task,
        pairs=pairs,
        sort_count=sort_count,
        sort_range=sort_range,
        short_conv=short_conv,
        performer_rope=performer_rope,
        seeds=parse_seeds(seeds) if seeds is not None else [seed if seed is not None else 0],
        spread=seeds is not None,
        lr=lr,
        contexts=parse_contexts(contexts),
        eval_every=eval_every,
        eval_windows=eval_windows,
        prompt=read_prompt(prompt) if prompt is not None else None,
        out=out,
        force=force,
        threads=threads,
        device=device,
        dtype=dtype,
        precision=precision or "auto",
        compile=compile or "auto",
        command_line=["glactl", *sys.argv[1:]],
    )
    out_folder = options.out or default_out(options)
    check_output_folder(out_folder, f"--out {out_folder}")  # before any training
    entries = run_compare(options, Console(stderr=True))  # progress and logs on stderr, results on stdout
    screen = Console()
    if json_out:
        import json

        write(sys.stdout, json.dumps(entries) + "\n")
    elif screen.is_terminal:
        from glactl.compare.report import terminal_table
        from glactl.report.display import print_table

        header, rows, dropped = terminal_table(entries, screen.width)
        print_table(screen, "glactl compare", header, rows)
        if dropped:
            Console(stderr=True).print(
                f"left out at this width: {', '.join(dropped)} (all columns in results.md, or --json)",
                highlight=False,
                soft_wrap=True,
            )
    else:
        typer.echo(markdown_table(entries))


def _architectures(archs: str | None, models: str | None) -> list[str]:
    """--archs (or its old spelling --models/-m) as a list of architecture names; InputError names the flag given."""
    from glactl.compare.options import parse_models
    from glactl.errors import InputError

    given = one_spelling(archs, models, "--archs", "--models")
    if given is None:
        raise InputError("missing option --archs: the architectures to compare, e.g. --archs gla,transformer")
    return parse_models(given, "--archs" if archs is not None else "--models")

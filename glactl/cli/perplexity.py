"""`glactl perplexity`: score files or a dataset split (bits per byte and char, perplexities), as a table or JSON."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from glactl.cli.common import check_save_state, load_model, saved_state_note, write
from glactl.cli.options import (
    CompileOption,
    ContextOption,
    DeviceOption,
    KernelsOption,
    ModelOption,
    PrecisionOption,
    ThreadsOption,
    choices,
)

PERPLEXITY_HELP = """Score files (or a dataset split) with the model: bits per byte and char, byte and word perplexity.

Each file streams through the model in --window byte pieces with the state carried, so every byte is conditioned on the whole file before it (attention models: a sliding --context window); the first byte is conditioned on "\\n". Word perplexity follows lm-evaluation-harness: words = len(re.split(r"\\s+", text)). Non-UTF-8 bytes are scored as bytes; characters are counted on the text decoded with replacement (a note says so).

--json prints one document: {"model": PATH, "precision": P, "compile": "eager", "window": N, "context": N or null, "files": {NAME: METRICS, ...}, "total": METRICS, "notes": [TEXT, ...]}

NAME is the file path as given (stdin for "-", DATA:SPLIT for --data); each FILE is named once; METRICS has exactly the keys bits_per_byte, bits_per_char, byte_perplexity, word_perplexity, bytes, chars, words, tokens_per_second (a perplexity too large for a float is null).
"""


def perplexity(
    files: list[str] = typer.Argument(None, metavar="FILES", help='Text files to score ("-" reads stdin).'),
    model: ModelOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    kernels: KernelsOption = None,
    precision: PrecisionOption = None,
    compile: CompileOption = None,
    context: ContextOption = None,
    state_file: str | None = typer.Option(
        None,
        "--state",
        metavar="FILE",
        help="Score every FILE as the continuation of this state file's text (its first byte too, from the stored logits).",
    ),
    save_state: str | None = typer.Option(
        None,
        "--save-state",
        metavar="FILE",
        help="Save the state after the scored text to FILE (one FILE or --data only), to continue with --state.",
    ),
    data: str | None = typer.Option(
        None, "--data", help="Score a split of a dataset instead (same names as train --data)."
    ),
    split: str = typer.Option(
        "test", "--split", metavar=choices("train", "validation", "test"), help="Split of --data."
    ),
    window: int = typer.Option(4096, "--window", help="Bytes read and scored per forward call."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (shape above)."),
) -> None:
    import json
    import math

    from glactl.errors import InputError
    from glactl.inference.sampling import check_positive
    from glactl.inference.scoring import Score, check_file, score_file, score_split, state_growth

    check_positive("--window", window)
    paths = _named_files(files or [])
    if not paths and data is None:
        raise InputError("give one or more FILES or --data NAME (see 'glactl perplexity --help')")
    for path in paths.values():
        check_file(path)
    check_save_state(save_state)
    if save_state is not None and len(paths) + (data is not None) != 1:
        raise InputError("--save-state needs exactly one FILE or --data (it saves the state after that text)")
    from glactl.runtime.threads import chosen_line, thread_choices

    counts, why = thread_choices("scoring", threads)
    lm = load_model(model, device, counts, context, kernels, precision, compile, work="score")
    thread_note = chosen_line("scoring", counts, why, lm.threads or counts[0], lm.calibration is not None)
    if (compile or "auto").lower() == "on":
        from glactl.inference.precision import note

        note("--compile on: perplexity reads whole windows, whose time is matrix products; it runs eager")
    start_state = lm.load_state(state_file) if state_file is not None else None
    continuation = {
        "start_reading": start_state.reading if start_state is not None else None,
        "keep_state": save_state is not None,
    }
    notes: list[str] = []
    short, long = state_growth(lm.model, 10, 100)
    if long > short:
        if lm.config.context is None:
            notes.append(
                f"{lm.config.mixer}: attention over the whole file (no --context): memory grows with file length"
            )
        else:
            notes.append(f"{lm.config.mixer}: sliding context of {lm.config.context} tokens")
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    err = Console(stderr=True)
    show = err.is_terminal and not json_out
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show,
    )
    scores = {}
    import time

    def advance(task: int, started: float):  # noqa: ANN202
        """Progress by time: a bar appears once scoring has taken about a second, whatever the size."""

        def step(k: int) -> None:
            progress.advance(task, k)
            if time.monotonic() - started > 1.0:
                progress.update(task, visible=True)

        return step

    with progress:
        for name, path in paths.items():
            size = os.path.getsize(path)
            task = progress.add_task(Path(name).name, total=size or None, visible=False)
            scores[name] = score_file(lm.model, path, window, advance(task, time.monotonic()), **continuation)
        if data is not None:
            task = progress.add_task(f"{data}:{split}", total=None, visible=False)
            scores[f"{data}:{split}"] = score_split(
                lm.model, data, split, window, advance(task, time.monotonic()), **continuation
            )
    for name, score in scores.items():
        notes.extend(f"{name}: {note}" for note in score.notes)
    if thread_note:  # said once, after the work (so an error before it stays one line)
        err.print(thread_note, highlight=False, soft_wrap=True)
    total = sum(scores.values(), Score())

    def clean(metrics: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

    if json_out:
        document = {
            "model": lm.path,
            "precision": lm.precision,
            "compile": "eager",  # whole windows are matrix products: scoring never runs the compiled decode step
            "window": window,
            "context": lm.config.context,
            "files": {name: clean(s.metrics()) for name, s in scores.items()},
            "total": clean(total.metrics()),
            "notes": notes,
        }
        write(sys.stdout, json.dumps(document) + "\n")
    else:
        _print_table(scores, total, notes, lm, window, err)
    if save_state is not None:  # after the results: a failing save still leaves them printed
        from glactl.storage.state_file import State

        final = State(next(iter(scores.values())).final, lm.state_owner())
        final.save(save_state)
        saved_state_note(save_state, final)


def _named_files(files: list[str]) -> dict[str, str]:
    """Row name -> path to read: "-" is stdin (row "stdin"); a file named twice is refused (one row per file)."""
    from glactl.errors import InputError

    named: dict[str, str] = {}
    seen: dict[str, str] = {}
    for given in files:
        name, path = ("stdin", "/dev/stdin") if given == "-" and os.path.exists("/dev/stdin") else (given, given)
        same = os.path.realpath(path) if given != "-" else "-"
        if same in seen or name in named:
            raise InputError(f"{given}: given twice (as {seen.get(same, name)}); name each FILE once")
        seen[same], named[name] = given, path
    return named


def _print_table(scores: dict, total, notes: list[str], lm, window: int, err) -> None:  # noqa: ANN001
    """One row per file (names fold, numbers never do), the total, then the notes on stderr."""
    from rich.console import Console

    from glactl.report.display import fit_columns, print_table, run_name

    # Four decimals on every score; counts and speed as integers.
    def score_text(value: float) -> str:  # four decimals, in e-notation once a perplexity passes a million
        return f"{value:.4e}" if abs(value) >= 1e6 else f"{value:,.4f}"

    columns = {
        "bits_per_byte": ("bits/byte", score_text),
        "bits_per_char": ("bits/char", score_text),
        "byte_perplexity": ("byte ppl", score_text),
        "word_perplexity": ("word ppl", score_text),
        "bytes": ("bytes", "{:,}".format),
        "words": ("words", "{:,}".format),
        "tokens_per_second": ("bytes/s", "{:,.0f}".format),
    }
    named = list(scores.items()) + ([("total", total)] if len(scores) > 1 else [])
    header = ["file"] + [label for label, _ in columns.values()]
    rows = [[name] + [fmt(score.metrics()[key]) for key, (_, fmt) in columns.items()] for name, score in named]
    screen = Console()
    header, rows, dropped = fit_columns(header, rows, screen.width, drop_order=(7, 6, 2, 5), flexible=0)
    print_table(
        screen, f"perplexity of {run_name(lm.path)} ({lm.precision}, window {window})", header, rows, flexible=0
    )
    if dropped:
        notes.append(f"left out at this width: {', '.join(dropped)} (all metrics with --json)")
    for note in notes:
        err.print(
            f"note: {note}", style="yellow", highlight=False, soft_wrap=True
        )  # one line per note, even when piped

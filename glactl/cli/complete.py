"""`glactl complete`: the N most probable continuations of a prefix (beam search over bytes), as a table or JSON."""

from __future__ import annotations

import sys

import typer

from glactl.cli.common import check_save_state, load_model, saved_state_note, write
from glactl.cli.options import (
    CompileOption,
    ContextOption,
    DeviceOption,
    KernelsOption,
    ModelOption,
    PrecisionOption,
    StateOption,
    ThreadsOption,
    choices,
)

_UNTIL = ("word", "line", "sentence")  # glactl.inference.completion.UNTIL_MODES (a test keeps them equal)


def complete(
    prefix: str = typer.Argument(..., help='Text to continue, "-" to read stdin, or @FILE (UTF-8).'),
    model: ModelOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    kernels: KernelsOption = None,
    precision: PrecisionOption = None,
    compile: CompileOption = None,
    context: ContextOption = None,
    state_file: StateOption = None,
    save_state: str | None = typer.Option(
        None, "--save-state", metavar="FILE", help="Save the state after the prefix to FILE, to continue with --state."
    ),
    n: int = typer.Option(
        5, "--n", "-n", help="How many completions to list (a count; --max-chars bounds each one's length)."
    ),
    beam: int | None = typer.Option(None, "--beam", help="Beam width (default 4 x N)."),
    until: str = typer.Option(
        "word",
        "--until",
        metavar=choices(*_UNTIL),
        help="Where a completion ends: at the end of a word, of a line (newline), or of a sentence (. ! ? then a space or newline; a line without them ends at its newline, shown as \\n).",
    ),
    max_chars: int = typer.Option(40, "--max-chars", help="Longest completion in characters."),
    json_out: bool = typer.Option(
        False,
        "--json",
        help='Print JSON: {"prefix", "completions": [{"text", "probability", "logprob"}], "until", "model", "seconds"}.',
    ),
) -> None:
    """The N most probable continuations of a prefix (beam search over bytes), with their probabilities.

    Ranked by total probability, the byte that ends the word/line/sentence included and no
    length normalisation; leading whitespace does not end a word; completions are distinct.
    """
    import time

    from glactl.api.prompts import read_prompt
    from glactl.errors import InputError
    from glactl.inference.completion import UNTIL_MODES
    from glactl.inference.sampling import check_positive

    check_positive("--n", n, 1000)
    if beam is not None:
        check_positive("--beam", beam, 4096)
    check_positive("--max-chars", max_chars, 100_000)
    if until not in UNTIL_MODES:
        raise InputError(f"--until must be one of {', '.join(UNTIL_MODES)}, got {until!r}")
    check_save_state(save_state)
    prefix_bytes = read_prompt(prefix)
    if prefix == "-" and prefix_bytes.endswith(b"\n"):  # `echo text | glactl complete -`: echo's newline is not typed
        prefix_bytes = prefix_bytes[:-2] if prefix_bytes.endswith(b"\r\n") else prefix_bytes[:-1]
    from glactl.runtime.threads import thread_choices

    lm = load_model(model, device, thread_choices("decoding", threads)[0], context, kernels, precision, compile)
    start_state = lm.load_state(state_file) if state_file is not None else None
    start = time.perf_counter()
    after_prefix = None
    if save_state is not None:  # read the prefix once: complete from its state, and save that state (at the end)
        after_prefix = lm.read(prefix_bytes, state=start_state)
        completions = lm.complete(b"", n=n, beam=beam, until=until, max_chars=max_chars, state=after_prefix)
    else:
        completions = lm.complete(prefix_bytes, n=n, beam=beam, until=until, max_chars=max_chars, state=start_state)
    seconds = time.perf_counter() - start
    _print_completions(completions, prefix_bytes.decode("utf-8", errors="replace"), until, lm.path, seconds, json_out)
    if after_prefix is not None:  # after the results: a failing save still leaves them printed
        after_prefix.save(save_state)
        saved_state_note(save_state, after_prefix)


def _print_completions(
    completions: list, prefix_text: str, until: str, path: str, seconds: float, json_out: bool
) -> None:
    """The completions as a table, or as one JSON document."""
    import json

    if json_out:
        rows = [{"text": c.text, "probability": c.probability, "logprob": c.logprob} for c in completions]
        document = {"prefix": prefix_text, "completions": rows, "until": until, "model": path, "seconds": seconds}
        write(sys.stdout, json.dumps(document) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"completions of {json.dumps(prefix_text[-60:], ensure_ascii=False)} (until {until})")
    table.add_column("#", justify="right")
    table.add_column("completion")
    table.add_column("probability", justify="right")
    table.add_column("log-prob", justify="right")
    for i, c in enumerate(completions, 1):
        table.add_row(
            str(i), Text(json.dumps(c.text, ensure_ascii=False)), f"{100 * c.probability:.2f}%", f"{c.logprob:.3f}"
        )
    console = Console()
    console.print(table)
    if not completions:
        console.print("no completion found within --max-chars", style="yellow")

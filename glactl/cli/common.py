"""Helpers several commands share: loading a model through the Python API, writing output, --save-state checks and notes."""

from __future__ import annotations

import sys
from pathlib import Path


def load_model(
    model: str | None,
    device: str | None,
    threads: int | tuple[int, ...] | None,
    context: int | None = None,
    kernels: str | None = None,
    precision: str | None = None,
    compile: str | None = None,
    work: str = "decode",
):  # noqa: ANN202
    """Load through the Python API, so the CLI and `glactl.load` behave alike (the CLI defaults to auto precision/compile)."""
    import time

    from glactl.api.loading import load

    start = time.perf_counter()
    lm = load(
        model,
        device=device or "auto",
        threads=threads,
        context=context,
        kernels=kernels,
        precision=precision or "auto",
        compile=compile or "auto",
        work=work,
    )
    lm.load_seconds = time.perf_counter() - start
    _note_still_training(lm.path, lm.document)
    return lm


def _note_still_training(path: str, document: dict) -> None:
    """A run that is still training: say on stderr which step's checkpoint was loaded (it will change)."""
    from glactl.storage.model_paths import training_pid

    folder = Path(path)
    run = folder.parent if folder.name.removesuffix(".old") in ("checkpoint", "best") else folder
    pid = training_pid(run)
    if pid is not None:
        step = (document.get("training") or {}).get("steps")
        sys.stderr.write(
            f"note: {run} is still training (pid {pid}, train.lock); loaded {folder.name}/ "
            f"from step {step if step is not None else '?'}\n"
        )


def write(stream, text: str) -> None:  # noqa: ANN001
    """Write text and flush, falling back to UTF-8 bytes where the terminal encoding cannot hold it."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        stream.flush()
        stream.buffer.write(text.encode("utf-8", errors="replace"))
    stream.flush()


def check_save_state(path: str | None) -> None:
    """Refuse an unwritable --save-state FILE before any work is done."""
    if path is not None:
        from glactl.storage.state_file import check_writable

        check_writable(path)


def saved_state_note(path: str, state, before: str = "") -> None:  # noqa: ANN001
    """One line on stderr saying where the state went and how big the file is (`before` starts the line)."""
    from glactl.report.display import human_bytes

    try:
        size = f" ({human_bytes(Path(path).stat().st_size)})"
    except OSError:
        size = ""
    sys.stderr.write(f"{before}state after {state.bytes_read:,} bytes saved to {path}{size}\n")
    sys.stderr.flush()


PROCESS = {"on": False}  # main() runs as the process itself (console script, python -m glactl), not called in-process


def runs_as_process() -> bool:
    """Whether glactl runs as its own process (console script, python -m glactl), so it may set process-wide things."""
    return PROCESS["on"]


def print_facts(title: str, rows: list[tuple[str, str]]) -> None:
    """A table of facts, one per row; a value with a word too long for its column (a path, a command), like a title
    wider than the screen, is printed whole on a line of its own instead, so that it can be copied."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    room = console.width - max(len(label) for label, _ in rows) - 7  # "│ label │ value │"
    fits = [max((len(word) for word in value.split()), default=0) <= room for _, value in rows]
    if len(title) > console.width:  # a long path: whole on its own line rather than folded as a centred title
        console.print(title, soft_wrap=True, highlight=False, markup=False)
    table = Table(title=title if len(title) <= console.width else None, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for (label, value), fit in zip(rows, fits):
        if fit:
            table.add_row(label, value)
    console.print(table)
    for (label, value), fit in zip(rows, fits):
        if not fit:
            console.print(f"{label}: {value}", soft_wrap=True, highlight=False, markup=False)

"""How long work (training, compare) shows its progress: a rich bar on a terminal, plain log lines when piped.

A reader that goes away (`| head`) silences the log, never the work being reported."""

from __future__ import annotations

import os
import time
from typing import Any


def silence_stream(stream: Any) -> None:
    """Point a stream whose reader is gone at /dev/null, so no later write (nor Python's exit flush) fails."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


class Reporter:
    """Shows preparation and training progress: a rich bar on a terminal, plain log lines when piped."""

    def __init__(self, console: Any | None) -> None:
        self.console = console
        self.rich = bool(console is not None and getattr(console, "is_terminal", False))
        self.progress: Any = None
        self.task: Any = None
        self._prep: dict[str, Any] = {}
        self._last_prep_line = 0.0

    def line(self, text: str) -> None:
        """A permanent log line (above the live bar on a terminal); a closed reader silences the log, never the run."""
        if self.console is None:
            return
        try:
            if self.progress is not None:
                self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
            elif self.rich:
                self.console.print(text, highlight=False, markup=False, soft_wrap=True)
            else:
                self.console.file.write(text + "\n")
                self.console.file.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.go_quiet()

    def go_quiet(self) -> None:
        """The log's reader went away (`| head`, a closed `less`): keep training, writing nowhere."""
        stream = getattr(self.console, "file", None)
        self.console, self.rich = None, False
        if self.progress is not None:
            try:
                self.progress.stop()
            except (BrokenPipeError, ValueError, OSError):
                pass
            self.progress = None
        silence_stream(stream)

    # data preparation
    def prepare(self, description: str, done: int, total: int | None) -> None:
        if self.console is None:
            return
        if not self.rich:  # a line every 10 s of a long preparation; a short one is summed up after ("encoded ...")
            now = time.monotonic()
            since = max(self._prep.setdefault("start", now), self._last_prep_line)
            if now - since > 10:
                self.line(f"{description}: {done:,}/{total:,}" if total else description)
                self._last_prep_line = now
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        if "bar" not in self._prep:
            self._prep["bar"] = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._prep["bar"].start()
        bar = self._prep["bar"]
        if self._prep.get("description") != description:
            self._prep["task"] = bar.add_task(description, total=total)
            self._prep["description"] = description
        bar.update(self._prep["task"], completed=done, total=total)

    def end_prepare(self) -> None:
        if "bar" in self._prep:
            self._prep["bar"].stop()
        self._prep = {}

    # training
    def start(self, total: float, completed: float, unit: str) -> None:
        if not self.rich:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        # Short enough for 80 columns with the ETA; the loss history goes to permanent lines above the bar.
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            expand=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=completed, info="")
        self.unit = unit

    def update(self, completed: float, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, info=info)

    def stop(self) -> None:
        if self.progress is not None:
            try:
                self.progress.stop()
            except (BrokenPipeError, ValueError, OSError):
                self.go_quiet()
            self.progress = None

"""Numbers and tables for people: one size unit (KiB/MiB/GiB), tables that fit the terminal, run names.

The command line prints through these so every command writes sizes alike and no table cuts a
digit: on a narrow terminal a table leaves whole columns out (the caller says which go first)
and says so; the full data stays in `--json` and the files a command writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def clock(seconds: float | None) -> str:
    """A duration as H:MM:SS (logs, info and ETAs alike)."""
    seconds = max(0, int(seconds or 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': powers of 1024 with their IEC names, the one size convention of glactl."""
    value = float(n)
    for unit in SIZE_UNITS:
        if abs(value) < 1024 or unit == SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def table_width(header: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Columns a rich Table (default box, one space of padding) needs to show every cell whole."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    return sum(widths) + 3 * len(widths) + 1


def fit_columns(
    header: list[str], rows: list[list[str]], width: int, drop_order: Sequence[int], flexible: int | None = None
) -> tuple[list[str], list[list[str]], list[str]]:
    """Leave out whole columns, in `drop_order`, until the table fits `width`; returns what is left and the dropped names.

    `flexible` is a column that may wrap (a file name): it counts with at most 20 characters.
    """
    keep = list(range(len(header)))

    def needed(columns: list[int]) -> int:
        h = [header[i] for i in columns]
        r = [[row[i] for i in columns] for row in rows]
        if flexible is not None and flexible in columns:
            j = columns.index(flexible)
            r = [[c if k != j else c[:20] for k, c in enumerate(row)] for row in r]
            h = [c if k != j else c[:20] for k, c in enumerate(h)]
        return table_width(h, r)

    dropped: list[str] = []
    for index in drop_order:
        if needed(keep) <= width:
            break
        if index in keep:
            keep.remove(index)
            dropped.append(header[index])
    return [header[i] for i in keep], [[row[i] for i in keep] for row in rows], dropped


def print_table(
    console: Any,
    title: str,
    header: list[str],
    rows: list[list[str]],
    left: Sequence[int] = (0,),
    flexible: int | None = None,
) -> None:
    """A rich table whose number cells never wrap or get cut (`flexible` may fold, e.g. a path)."""
    from rich.table import Table

    shown = Table(title=title)
    for i, name in enumerate(header):
        if i == flexible:
            shown.add_column(name, overflow="fold", min_width=min(12, max(len(r[i]) for r in rows) if rows else 12))
        else:
            shown.add_column(name, justify="left" if i in left else "right", no_wrap=True)
    for row in rows:
        shown.add_row(*row)
    console.print(shown)


def run_name(path: str | Path) -> str:
    """A checkpoint's name as people know it: the run folder for runs/x/checkpoint, 'x (best)' for runs/x/best."""
    folder = Path(path)
    name = folder.name.removesuffix(".old")
    if name in ("checkpoint", "best") and folder.parent.name:
        return folder.parent.name + (" (best)" if name == "best" else "")
    return folder.name or str(path)

"""PNG plots of a comparison: validation curves (or task accuracy), and state memory / generation speed against context length.

matplotlib is imported inside the functions (start-up stays fast) and drawn through the Agg
canvas directly, so no window or global pyplot state is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKERS = "osD^v<>ph*"


def _figure(width: float, height: float, columns: int = 1) -> tuple[Any, list[Any]]:
    """A figure with `columns` side-by-side axes on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _style(index: int) -> dict[str, Any]:
    """Colour and marker of the index-th model, the same in every plot."""
    return {"color": f"C{index % 10}", "marker": MARKERS[index % len(MARKERS)], "markersize": 4, "linewidth": 1.6}


def _plain_log_labels(axis: Any) -> None:
    """Plain numbers on a log y axis (1,024 rather than 1.024x10^3); minor ticks labelled within one decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 10 else f"{value:g}")
    axis.yaxis.set_major_formatter(plain)
    low, high = axis.get_ylim()
    axis.yaxis.set_minor_formatter(plain if low > 0 and high / low < 10 else NullFormatter())


def _finish(
    figure: Any, axis: Any, path: Path, xlabel: str, ylabel: str, heading: str, title: str, legend: str
) -> None:
    """Labels, title (with the comparison's settings under it), grid and legend of a one-axis curve plot; saves it."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(heading + (f"\n{title}" if title else ""), fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, title=legend, title_fontsize=8)
    figure.savefig(path)


def plot_loss(entries: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """loss.png: validation bits per byte against training tokens, one line per model."""
    figure, (axis,) = _figure(7.5, 4.8)
    finals = []
    for i, entry in enumerate(entries):
        points = entry["curve"]
        xs = [p["tokens"] for p in points]
        ys = [p["val_bits_per_byte"] for p in points]
        axis.plot(xs, ys, label=f"{entry['model']} ({entry['val_bits_per_byte']:.3f})", **_style(i))
        finals.extend(ys[1:] or ys)
    if finals:  # the untrained start (about 8 bits) would squash the curves: focus on the trained part
        low, high = min(finals), max(finals)
        margin = max(0.05, 0.08 * (high - low))
        axis.set_ylim(low - margin, high + margin)
    _finish(
        figure,
        axis,
        path,
        "training tokens (bytes)",
        "validation bits per byte",
        "Validation bits per byte",
        title,
        "model (final bpb)",
    )


def plot_accuracy(entries: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """accuracy.png (a --task comparison): test-set accuracy against training steps, one line per model, and the
    task's chance and trivial floors as horizontal lines."""
    figure, (axis,) = _figure(7.5, 4.8)
    for i, entry in enumerate(entries):
        points = entry["curve"]
        axis.plot(
            [p["step"] for p in points],
            [p["accuracy"] for p in points],
            label=f"{entry['model']} ({entry['accuracy']:.3f})",
            **_style(i),
        )
    # The task's floors on the same test set (Task.baselines): chance dashed, the trivial rule dotted.
    for (name, floor), dashes in zip((entries[0].get("baselines") or {}).items(), ("--", ":")):
        axis.axhline(
            floor["accuracy"],
            color="0.35",
            linestyle=dashes,
            linewidth=1.2,
            label=f"{name}" + (f": {floor['rule']}" if name != "chance" else "") + f" ({floor['accuracy']:.3f})",
        )
    axis.set_ylim(-0.02, 1.02)
    _finish(
        figure,
        axis,
        path,
        "training steps",
        "test-set accuracy at the answers",
        "Accuracy",
        title,
        "model (final accuracy)",
    )


def plot_scaling(entries: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """scaling.png: state bytes and generation tokens/s against context length, log axes."""
    from matplotlib.ticker import NullLocator

    figure, (memory, speed) = _figure(11, 4.6, columns=2)
    ticks: set[int] = set()
    for i, entry in enumerate(entries):
        contexts = sorted(int(c) for c in entry["state_bytes"])
        ticks.update(contexts)
        memory.plot(
            contexts, [entry["state_bytes"][str(c)] / 1024 for c in contexts], label=entry["model"], **_style(i)
        )
        speed.plot(
            contexts, [entry["generate_tokens_per_second"][str(c)] for c in contexts], label=entry["model"], **_style(i)
        )
    for axis, label in ((memory, "state memory (KiB)"), (speed, "generation tokens/s (batch 1)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("context length (bytes)")
        axis.set_ylabel(label)
        if ticks:
            axis.set_xticks(sorted(ticks), [f"{t // 1024}k" if t % 1024 == 0 else str(t) for t in sorted(ticks)])
            axis.xaxis.set_minor_locator(NullLocator())
        _plain_log_labels(axis)
        axis.grid(True, which="both", alpha=0.3)
    memory.set_title("State memory after the context", fontsize=10)
    speed.set_title("Generation speed after the context", fontsize=10)
    speed.legend(fontsize=8, loc="best")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.savefig(path)

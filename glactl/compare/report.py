"""The comparison's reports: the table (terminal and markdown), results.md, results.json and the plots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from glactl.compare.measure import SAMPLE_TEMPERATURE
from glactl.compare.options import CompareOptions, context_label, task_settings
from glactl.report.display import human_bytes  # one size convention (KiB, MiB) for every command
from glactl.storage.atomic import write_json_atomic

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
ACCURACY_PLOT = "accuracy.png"


def terminal_table(entries: list[dict[str, Any]], width: int) -> tuple[list[str], list[str], list[str]]:
    """The table for a terminal `width` columns wide: short headers, whole columns left out until it fits.

    Per-context columns go first (all but the longest context, shortest first), then the decode
    path, then the longest context's, then parameters and training speed; model and score columns
    always stay. Returns
    the header, the rows and the names of the columns left out.
    """
    from glactl.report.display import fit_columns

    header, rows = table(entries, short=True)
    short = [h.replace("gen tok/s", "gen/s") for h in header]

    def context_of(name: str) -> int:
        label = name.rsplit("@", 1)[1].strip()
        return int(label[:-1]) * 1024 if label.endswith("k") else int(label) if label.isdigit() else 0

    at = [i for i, h in enumerate(header) if "@" in h]
    longest = max((context_of(header[i]) for i in at), default=0)
    order = sorted(
        at, key=lambda i: (context_of(header[i]) == longest, context_of(header[i]), header[i].startswith("state"))
    )
    shorter = [i for i in order if context_of(header[i]) != longest]
    order = shorter + [i for i, h in enumerate(header) if h == "decode"] + order[len(shorter) :]
    order += [header.index(h) for h in ("dtype", "params", "train tok/s") if h in header]
    return fit_columns(short, rows, width, order)


def table(entries: list[dict[str, Any]], short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (shared by the terminal and results.md; `short`: terminal labels)."""
    if entries and entries[0].get("task", "lm") != "lm":
        return task_table(entries, short)
    contexts = list(entries[0]["state_bytes"]) if entries else []
    spread = any("val_bits_per_byte_std" in e for e in entries)
    header = ["model", "params", "train tok/s", *dtype_header(entries), "val bpb" + (" (± sd)" if spread else "")]
    header += ["decode"] + [f"gen tok/s @{context_label(int(c))}" for c in contexts]
    header += [f"state @{context_label(int(c))}" for c in contexts]
    rows = []
    for e in entries:
        bpb = f"{e['val_bits_per_byte']:.4f}" + (
            f" ± {e['val_bits_per_byte_std']:.4f}" if "val_bits_per_byte_std" in e else ""
        )
        row = [
            e["model"],
            f"{e['parameters'] / 1e6:.2f}M",
            f"{e['train_tokens_per_second']:,.0f}",
            *dtype_cell(entries, e),
            bpb,
            decode_label(e),
        ]
        row += [f"{e['generate_tokens_per_second'][c]:,.0f}" for c in contexts]
        row += [human_bytes(e["state_bytes"][c]) for c in contexts]
        rows.append(row)
    return header, rows


def decode_label(entry: dict[str, Any]) -> str:
    """How the speed columns decoded: "int8 compiled", "float32 eager" ("-" for results from before glactl recorded it)."""
    decode = entry.get("decode")
    if not decode:
        return "-"
    return f"{decode['precision']} {'compiled' if decode['compiled'] else 'eager'}"


def dtype_header(entries: list[dict[str, Any]]) -> list[str]:
    """The training dtype column, where the entries record one (results from before glactl did have none)."""
    return ["dtype"] if any("dtype" in e for e in entries) else []


def dtype_cell(entries: list[dict[str, Any]], entry: dict[str, Any]) -> list[str]:
    return [entry["dtype"]["name"] if "dtype" in entry else "-"] if dtype_header(entries) else []


def describe_dtype(entries: list[dict[str, Any]]) -> str:
    """The sentence of results.md on the training dtype: which, and how it was chosen."""
    dtype = next((e["dtype"] for e in entries if "dtype" in e), None)
    return f" Every run trained in {dtype['name']} ({dtype['chosen']})." if dtype else ""


def task_table(entries: list[dict[str, Any]], short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a --task comparison: accuracy on the test set, loss at the answers, state after a sequence.

    Below the models, the task's floors (Task.baselines): rows "chance" and "trivial (its rule)"; `short`
    leaves the rule out (a terminal; results.md and results.json say it).
    """
    spread = any("accuracy_std" in e for e in entries)
    whole = any("sequence_accuracy" in e for e in entries)
    length = next(iter(entries[0]["state_bytes"]))
    header = ["model", "params", "train tok/s", *dtype_header(entries), "accuracy" + (" (± sd)" if spread else "")]
    header += ["sequence accuracy"] if whole else []
    header += ["answer loss", f"state @{context_label(int(length))}"]
    rows = []
    for e in entries:
        accuracy = f"{e['accuracy']:.4f}" + (f" ± {e['accuracy_std']:.4f}" if "accuracy_std" in e else "")
        row = [e["model"], f"{e['parameters'] / 1e6:.2f}M", f"{e['train_tokens_per_second']:,.0f}"]
        row += [*dtype_cell(entries, e), accuracy]
        row += [f"{e['sequence_accuracy']:.4f}"] if whole else []
        row += [f"{e['val_loss']:.4f}", human_bytes(e["state_bytes"][length])]
        rows.append(row)
    for name, floor in (entries[0].get("baselines") or {}).items():
        label = name if short or name == "chance" else f"{name} ({floor['rule']})"
        row = [label, "-", "-", *["-" for _ in dtype_header(entries)], f"{floor['accuracy']:.4f}"]
        row += [f"{floor['sequence_accuracy']:.4f}" if "sequence_accuracy" in floor else "-"] if whole else []
        rows.append(row + ["-", "-"])
    return header, rows


def markdown_table(entries: list[dict[str, Any]]) -> str:
    header, rows = table(entries)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe_budget(options: CompareOptions) -> str:
    parts = []
    if options.steps is not None:
        parts.append(f"{options.steps} steps")
    if options.time_budget is not None:
        parts.append(f"{options.time_budget / 60:g} minutes")
    return " or ".join(parts) + " per model" + (" and seed" if len(options.seeds) > 1 else "")


def describe_task(options: CompareOptions) -> str:
    """One sentence on what a --task comparison's sequences are."""
    from glactl.data import tasks

    settings = task_settings(options)
    if options.task == "mqar":
        return (
            f"Task mqar (multi-query associative recall, after Zoology): {settings['pairs']} key-value pairs, "
            f"then each key queried once among filler, in {options.seq_len} bytes; the answer is the value after a queried key."
        )
    if options.task == "selective-copy":
        return (
            f"Task selective-copy (Mamba / minGRU papers): {tasks.COPY_TOKENS} data bytes from a vocabulary of "
            f"{len(tasks.COPY_DATA)} scattered among noise in {options.seq_len - tasks.COPY_TOKENS} bytes, then "
            f"{tasks.COPY_TOKENS} markers at which the data bytes are output in order."
        )
    return (
        f"Task sort: {settings['sort_count']} values drawn with repeats from {settings['sort_range']} byte values, "
        f"a separator, then the values in sorted order (sequence length {options.seq_len})."
    )


def task_markdown(entries: list[dict[str, Any]], options: CompareOptions) -> str:
    """results.md of a --task comparison: the task, the settings, the table and the accuracy plot."""
    from glactl.data import tasks

    lr = f"{options.lr:g} for all" if options.lr is not None else "each architecture's default"
    seeds = ", ".join(str(s) for s in options.seeds)
    test = options.eval_windows if options.eval_windows is not None else tasks.TEST_SEQUENCES
    whole = (
        " and sequence accuracy (every answer of a sequence right)"
        if any("sequence_accuracy" in e for e in entries)
        else ""
    )
    return "\n".join(
        [
            f"# glactl compare --task {options.task}",
            "",
            describe_task(options),
            "",
            f"Preset {options.preset}, batch {options.batch_size}, budget {describe_budget(options)}, learning rate {lr}, "
            f"seed{'s' if len(options.seeds) > 1 else ''} {seeds}.{describe_dtype(entries)}",
            f"Accuracy is teacher-forced argmax at the answer positions of a fixed test set of {test} sequences "
            f"(disjoint from training), at the last evaluation"
            + (" (mean ± sample standard deviation over seeds)" if options.spread else "")
            + f"{whole}; answer loss is the cross-entropy there (nats); the state is measured after one {options.seq_len}-byte "
            "task sequence; training tokens/s leaves evaluation time out. "
            "The last rows are the floors on the same test set: chance (a uniform guess among the answer bytes) and "
            "a trivial rule that learns nothing (docs/comparing.md, Probes).",
            "",
            markdown_table(entries),
            "",
            f"![test-set accuracy against training steps]({ACCURACY_PLOT})",
            "",
        ]
    )


def results_markdown(entries: list[dict[str, Any]], options: CompareOptions, prompt: bytes) -> str:
    """results.md: the settings, the table, the plots and each model's sample."""
    if options.is_task:
        return task_markdown(entries, options)
    lr = f"{options.lr:g} for all" if options.lr is not None else "each architecture's default"
    seeds = ", ".join(str(s) for s in options.seeds)
    lines = [
        "# glactl compare",
        "",
        f"Data: {', '.join(options.data)}. Preset {options.preset}, sequence length {options.seq_len}, "
        f"batch {options.batch_size}, budget {describe_budget(options)}, learning rate {lr}, seed{'s' if len(options.seeds) > 1 else ''} {seeds}."
        + describe_dtype(entries),
        "Validation bits per byte is the last evaluation"
        + (" (mean ± sample standard deviation over seeds)" if options.spread else "")
        + "; training tokens/s leaves evaluation time out; generation is batch 1, greedy, after the given bytes "
        "of context read with the parallel form, with the step `glactl generate` runs (column decode: the weights' "
        f"format, --precision {options.precision}, and whether the step ran compiled, --compile {options.compile}).",
        "",
        markdown_table(entries),
        "",
        "![validation bits per byte against training tokens](loss.png)",
        "",
        "![state memory and generation speed against context length](scaling.png)",
        "",
        f"## Samples ({options.sample_bytes} bytes, temperature {SAMPLE_TEMPERATURE}, seed {options.seeds[0]})",
        "",
        f"Prompt: `{prompt.decode('utf-8', errors='replace').replace('`', chr(39))}`",
        "",
    ]
    for e in entries:
        body = prompt.decode("utf-8", errors="replace") + e["sample"]
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", body)), default=0))
        lines += [f"### {e['model']}", "", fence + "text", body, fence, ""]
    return "\n".join(lines)


def write_results(out: Path, entries: list[dict[str, Any]], options: CompareOptions, prompt: bytes) -> None:
    """results.json, results.md, loss.png and scaling.png in `out` (for a task: accuracy.png instead of the two plots)."""
    from glactl.report.plots import plot_accuracy, plot_loss, plot_scaling

    write_json_atomic(out / RESULTS_JSON, entries)
    (out / RESULTS_MD).write_text(results_markdown(entries, options, prompt), encoding="utf-8")
    if options.is_task:
        plot_accuracy(entries, out / ACCURACY_PLOT, f"{options.task}; {options.preset}, {describe_budget(options)}")
        return
    title = f"{', '.join(options.data)}; {options.preset}, {describe_budget(options)}"
    plot_loss(entries, out / "loss.png", title)
    plot_scaling(entries, out / "scaling.png", title)

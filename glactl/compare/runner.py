"""`glactl compare`: train (or reuse) one run folder `OUT/<model>-seed<seed>` per model and seed, measure, report.

Each folder's `compare.json` records what it was trained and measured with, so a rerun knows what to redo;
`OUT/comparison.json` records what holds for every run: the training dtype, chosen once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glactl.compare.measure import default_prompt, measure_run, measure_task_run, reference_text
from glactl.compare.options import (
    DEFAULT_DATA,
    CompareOptions,
    check_options,
    context_label,
    default_out,
    resolve_task,
    task_settings,
    train_options,
)
from glactl.compare.report import ACCURACY_PLOT, RESULTS_JSON, RESULTS_MD, write_results
from glactl.compare.summary import summarize, summarize_task
from glactl.errors import InputError, RunFailure
from glactl.storage.atomic import write_json_atomic

RUN_FILE = "compare.json"
COMPARISON_FILE = "comparison.json"


def run_compare(options: CompareOptions, console: Any | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) every model and seed, measure them, write the four result files; returns the entries."""
    from glactl.data.tasks import TEST_SEQUENCES
    from glactl.data.training_data import load_training_data
    from glactl.report.progress import Reporter
    from glactl.runtime.threads import set_threads

    task = resolve_task(options)
    defaulted = task is None and not options.data
    if task is None:
        options.data = list(options.data) or [DEFAULT_DATA]
    if options.eval_every is None:
        options.eval_every = max(1, options.steps // 10) if options.steps is not None else 100
    check_options(options)
    out = Path(options.out) if options.out else default_out(options)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    say = Reporter(console)
    set_threads(options.threads)
    text, prompt = b"", b""  # a task has no text to measure generation on and no sample
    if task is None:
        from glactl.data.hub import DatasetUnavailable

        try:
            data = load_training_data(options.data, options.valid, options.seq_len, say.prepare)
        except DatasetUnavailable as e:
            if not defaulted:
                raise
            raise DatasetUnavailable(
                e.label,
                e.reason,
                f"compare trains on {DEFAULT_DATA} when no --data is given: "
                "pass --data PATH (local text) or --task mqar|selective-copy|sort (synthetic, "
                "no download)",
            ) from None
        finally:
            say.end_prepare()
        text = reference_text(data, max(options.contexts))
        prompt = options.prompt if options.prompt is not None else default_prompt(data)
    dtype, before = comparison_dtype(options, out, say)
    options.dtype = dtype["name"]  # every run trains in it, given explicitly (no run measures on its own)
    runs = [(model, seed) for model in options.models for seed in options.seeds]
    for model, seed in runs:  # a folder that cannot be reused as it is stops the comparison before any work
        reusable_record(options, model, seed, out / f"{model}-seed{seed}")
    say.line(f"dtype {dtype['name']} for every run ({dtype['chosen']}{'; chosen before' if before else ''})")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / COMPARISON_FILE, {"dtype": dtype})
    results: dict[str, list[dict[str, Any]]] = {}
    failures: list[str] = []
    for number, (model, seed) in enumerate(runs, 1):
        label = f"[{number}/{len(runs)}] {model} seed {seed}"
        try:
            result = run_one(options, model, seed, out / f"{model}-seed{seed}", text, prompt, say, label, task)
        except RunFailure as e:
            say.line(f"{label}: failed: {e}")
            failures.append(f"{model}-seed{seed} ({e})")
            continue
        results.setdefault(model, []).append(result)
    baselines = task.baselines(options.eval_windows or TEST_SEQUENCES) if task is not None else {}
    entries = [
        (
            summarize_task(model, results[model], options.spread, task, dtype, baselines)
            if task is not None
            else summarize(model, results[model], options.spread, dtype)
        )
        for model in options.models
        if model in results
    ]
    if entries:
        write_results(out, entries, options, prompt)
        plots = f"{out / ACCURACY_PLOT}" if task is not None else f"{out / 'loss.png'} and {out / 'scaling.png'}"
        say.line(f"wrote {out / RESULTS_JSON}, {out / RESULTS_MD}, {plots}")
    if failures:
        raise RunFailure(
            f"{len(failures)} of {len(runs)} runs failed: {'; '.join(failures)}; "
            "the others are in the results; rerun the command to retry (maybe with another --lr)"
        )
    return entries


def comparison_dtype(options: CompareOptions, out: Path, say: Any) -> tuple[dict[str, Any], bool]:
    """The one training dtype of every run of the comparison in `out` ({name, chosen, bfloat16_speedup}), and
    whether it was chosen before.

    Chosen before the first run and recorded in OUT/comparison.json: a rerun or a resumed comparison takes the
    recorded choice (a new `--dtype auto` measurement could come out the other way: docs/comparing.md), a
    --dtype that differs from it is refused, and --force chooses again.
    """
    recorded = None if options.force else _recorded_dtype(out / COMPARISON_FILE)
    if recorded is None:
        return choose_dtype(options, say), False
    if (options.dtype or "auto").lower() != "auto":
        from glactl.runtime.devices import select_device, select_precision

        asked = select_precision(options.dtype, select_device(options.device)).name
        if asked != recorded["name"]:
            raise InputError(
                f"--out {out}: this comparison trains every run in {recorded['name']} ({recorded['chosen']}); "
                f"pass --dtype {recorded['name']} or auto to continue it, or --force to redo its runs in {asked}"
            )
    return recorded, True


def choose_dtype(options: CompareOptions, say: Any) -> dict[str, Any]:
    """A new choice of the training dtype: the given --dtype, or auto's rule for the device.

    On a CPU with native bfloat16, auto times bfloat16 autocast against float32 on the first model (the
    calibration of `glactl train --dtype auto`), once for the whole comparison.
    """
    from glactl.runtime.devices import select_device, select_precision

    device = select_device(options.device)
    given = (options.dtype or "auto").lower()
    precision = select_precision(given, device)
    choice: dict[str, Any] = {"name": precision.name, "chosen": "", "bfloat16_speedup": None}
    if given != "auto":
        choice["chosen"] = f"given: --dtype {given}" + (f"; {precision.warning}" if precision.warning else "")
    elif device.type == "cpu" and precision.name == "bfloat16":
        from glactl.models import LanguageModel
        from glactl.runtime.cache import cache_root
        from glactl.runtime.devices import cpu_dtype_by_measurement
        from glactl.training.setup import new_model_config

        first = options.models[0]
        say.line(f"dtype auto: timing bfloat16 autocast against float32 on {first}")
        model = LanguageModel(new_model_config(train_options(options, first, options.seeds[0])))
        name, speedup, _ = cpu_dtype_by_measurement(model, options.seq_len, options.batch_size, cache_root())
        choice.update(
            name=name,
            chosen=f"auto: bfloat16 autocast measured {speedup:.2f}x float32 (on {first})",
            bfloat16_speedup=round(speedup, 3),
        )
    else:
        rule = "this CPU has no native bfloat16" if device.type == "cpu" else f"the rule on {device.type}"
        choice["chosen"] = f"auto: {precision.name} ({rule})"
    return choice


def _recorded_dtype(path: Path) -> dict[str, Any] | None:
    """The dtype choice in OUT/comparison.json, or None when it is missing or not one."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("dtype")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recorded, dict) or recorded.get("name") not in ("float32", "bfloat16", "float16"):
        return None
    if not isinstance(recorded.get("chosen"), str):
        return None
    return recorded


def training_settings(options: CompareOptions, model: str, seed: int) -> dict[str, Any]:
    """What a run was trained with: a change here means the run has to be redone."""
    from glactl.models.registry import default_lr
    from glactl.training.setup import new_model_config

    return {
        "model": model,
        "seed": seed,
        "preset": options.preset,
        "data": list(options.data),
        "valid": options.valid,
        "seq_len": options.seq_len,
        "batch_size": options.batch_size,
        "steps": options.steps,
        "time_budget": options.time_budget,
        "lr": options.lr if options.lr is not None else default_lr(model),
        "dtype": options.dtype,  # the comparison's, chosen once (comparison_dtype)
        "eval_every": options.eval_every,
        "eval_windows": options.eval_windows,
        "task": task_settings(options),
        # The full resolved architecture (new fields and their per-architecture defaults included):
        # a run made with another config, or by a glactl that did not record one, is not reused.
        "config": new_model_config(train_options(options, model, seed)).to_dict(),
    }


def measurement_settings(options: CompareOptions, prompt: bytes) -> dict[str, Any]:
    """What a run was measured with: a change here only re-measures."""
    if options.is_task:
        return {"state_after": options.seq_len}
    return {
        "contexts": list(options.contexts),
        "decode_steps": options.decode_steps,
        "sample_bytes": options.sample_bytes,
        "prompt": prompt.decode("utf-8", errors="replace"),
        "precision": options.precision,
        "compile": options.compile,
    }


def run_one(
    options: CompareOptions,
    model: str,
    seed: int,
    folder: Path,
    text: bytes,
    prompt: bytes,
    say: Any,
    label: str,
    task: Any = None,
) -> dict[str, Any]:
    """Train (or resume, or skip) one run and measure it; returns its measurements.

    The run is an ordinary run folder (loadable with `--model`) that also holds `compare.json`: the
    settings it was trained and measured with, and its measurements. A rerun skips a folder whose
    settings match, resumes an interrupted training, re-measures when only the measurement settings
    changed, and redoes everything with `--force`.
    """
    trained_with = training_settings(options, model, seed)
    measured_with = measurement_settings(options, prompt)
    record = reusable_record(options, model, seed, folder)
    if record is not None and record.get("status") == "done" and record.get("measurement") == measured_with:
        say.line(f"{label}: already finished in {folder}, skipping (--force redoes it)")
        return record["result"]
    if record is None or record.get("status") == "training":
        resume = record is not None and _has_checkpoint(folder)
        say.line(f"{label}: {'resuming' if resume else 'training'} in {folder}")
        write_record(folder, {"status": "training", "training": trained_with})
        train_run(options, model, seed, folder, resume, say.console)
        record = {"status": "trained", "training": trained_with}
        write_record(folder, record)
    else:
        say.line(f"{label}: trained in {folder}; measuring again with the new measurement settings")
    if task is not None:
        say.line(f"{label}: measuring the state after a {options.seq_len}-byte {options.task} sequence")
        result = measure_task_run(folder, options, task)
    else:
        say.line(
            f"{label}: measuring generation speed and state after "
            f"{', '.join(context_label(c) for c in options.contexts)} bytes of context, and a {options.sample_bytes}-byte sample"
        )
        result = measure_run(folder, options, text, prompt, seed)
    write_record(folder, {**record, "status": "done", "measurement": measured_with, "result": result})
    return result


def reusable_record(options: CompareOptions, model: str, seed: int, folder: Path) -> dict[str, Any] | None:
    """The folder's compare.json when its run may be reused (None: train it); InputError when it holds another run."""
    trained_with = training_settings(options, model, seed)
    record = None if options.force else read_record(folder)
    if record is None and not options.force and _holds_run(folder):
        raise InputError(
            f"{folder}: holds a run that compare did not make; pass --force to replace it or use another --out"
        )
    if record is not None and record.get("training") != trained_with:
        changed = sorted(k for k in trained_with if record.get("training", {}).get(k) != trained_with[k])
        raise InputError(
            f"{folder}: was trained with other settings ({', '.join(changed)}); "
            "pass --force to redo it or use another --out"
        )
    return record


def train_run(options: CompareOptions, model: str, seed: int, folder: Path, resume: bool, console: Any) -> None:
    """One ordinary training run through the training library (same loop as `glactl train`)."""
    from glactl.training.trainer import TrainingInterrupted, train

    try:
        train(train_options(options, model, seed, folder, resume), console)
    except TrainingInterrupted:
        raise TrainingInterrupted(
            f"interrupted while training {model} seed {seed}; its checkpoint is saved in "
            f"{folder}; rerun the same glactl compare command to continue"
        ) from None


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's compare.json, or None when it is missing or unreadable (then the run is redone)."""
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / RUN_FILE, record)


def _holds_run(folder: Path) -> bool:
    from glactl.training.run_folder import RUN_ENTRIES

    return folder.is_dir() and any((folder / name).exists() for name in RUN_ENTRIES)


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / name / "trainer.json").is_file() for name in ("checkpoint", "checkpoint.old"))

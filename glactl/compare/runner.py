"""`glactl compare`: train several architectures on the same data and budget, then measure them side by side.

Every (model, seed) pair is an ordinary run folder `OUT/<model>-seed<seed>` (loadable with `--model`)
that also holds `compare.json`: the settings it was trained and measured with, and its measurements.
A rerun skips folders whose settings match, resumes an interrupted training, re-measures when only
the measurement settings changed, and redoes everything with `--force`. The comparison itself goes
to `OUT/results.json`, `OUT/results.md`, `OUT/loss.png` and `OUT/scaling.png`.

With `--task mqar|selective-copy|sort` the runs train on a synthetic probe (glactl.data.tasks) instead
of text and are scored by accuracy on the task's fixed test set: `results.json`, `results.md` and
`OUT/accuracy.png`, with no bits per byte, generation speed or sample. Every run's settings (and
results.json) hold the full resolved ModelConfig and the task settings, so a run made with other
settings is never reused.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glactl.errors import InputError, RunFailure
from glactl.models.config import OPTION_MIXERS
from glactl.report.display import human_bytes  # noqa: F401 - one size convention (KiB, MiB) for every command

DEFAULT_DATA = "wikitext-103"
DEFAULT_CONTEXTS = (1024, 8192, 32768)
MAX_CONTEXT = 1 << 20
DECODE_STEPS = 64  # timed model.step calls per context length
# --compile auto for the speed columns: compile the step (tens of seconds on a 2-core CPU) when the run
# trained at least this long, so the compile adds at most about a tenth to the run's time
COMPILE_MIN_TRAINING_SECONDS = 300
WARMUP_STEPS = 2  # untimed steps before them
PREFILL_PIECE = 1024  # bytes per parallel-form call while reading a context
SAMPLE_BYTES = 200
SAMPLE_TEMPERATURE = 0.8
PROMPT_BYTES = 48
RUN_FILE = "compare.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULT_KEYS = (
    "model",
    "task",
    "parameters",
    "train_tokens_per_second",
    "val_bits_per_byte",
    "curve",
    "generate_tokens_per_second",
    "decode",
    "state_bytes",
    "sample",
    "config",
)
SPREAD_KEYS = ("val_bits_per_byte_std", "seeds")
# --task rows: accuracy on the task's test set; sequence_accuracy only for tasks scored per whole sequence.
TASK_RESULT_KEYS = (
    "model",
    "task",
    "parameters",
    "train_tokens_per_second",
    "accuracy",
    "sequence_accuracy",
    "val_loss",
    "curve",
    "state_bytes",
    "task_settings",
    "config",
)
TASK_SPREAD_KEYS = ("accuracy_std", "seeds")
ACCURACY_PLOT = "accuracy.png"


# ---- options -------------------------------------------------------------------------------
@dataclass
class CompareOptions:
    """What `glactl compare` takes; `spread` is True when --seeds was given (mean and spread are reported)."""

    models: list[str]
    data: list[str] = field(default_factory=list)
    valid: str | None = None
    preset: str = "small"
    steps: int | None = None
    time_budget: float | None = None  # seconds, per model and seed
    seq_len: int | None = None  # None: 512 for lm, the task's default for a task
    batch_size: int = 16
    seeds: list[int] = field(default_factory=lambda: [0])
    spread: bool = False
    lr: float | None = None
    contexts: list[int] = field(default_factory=lambda: list(DEFAULT_CONTEXTS))
    eval_every: int | None = None
    eval_windows: int | None = None
    prompt: bytes | None = None
    decode_steps: int = DECODE_STEPS
    sample_bytes: int = SAMPLE_BYTES
    out: str | None = None
    force: bool = False
    threads: int | None = None
    device: str = "auto"
    dtype: str | None = None
    command_line: list[str] | None = None
    task: str = "lm"  # lm (text from --data) or a probe of glactl.data.tasks
    pairs: int | None = None  # mqar
    sort_count: int | None = None  # sort
    sort_range: int | None = None  # sort
    short_conv: int | None = None  # ModelConfig.short_conv for every model (None: each architecture's default)
    performer_rope: bool | None = None  # ModelConfig.performer_rope (None: the architecture's default)
    precision: str = "auto"  # weights' format for the speed columns and the sample, as `glactl generate --precision`
    compile: str = "auto"  # compiled decode step for the speed columns (auto: COMPILE_MIN_TRAINING_SECONDS)

    @property
    def is_task(self) -> bool:
        return self.task != "lm"

    def task_options(self) -> dict[str, int]:
        """The task settings given on the command line (the others take the task's defaults)."""
        given = {"pairs": self.pairs, "sort_count": self.sort_count, "sort_range": self.sort_range}
        return {k: v for k, v in given.items() if v is not None}


def parse_models(text: str) -> list[str]:
    """'gla,transformer' -> ['gla', 'transformer']; InputError naming the valid models otherwise."""
    from glactl.models.registry import MIXERS

    names = [name.strip() for name in text.split(",") if name.strip()]
    valid = ", ".join(MIXERS)
    if not names:
        raise InputError(f"--models: name at least one model; valid models: {valid}")
    unknown = [name for name in names if name not in MIXERS]
    if unknown:
        raise InputError(
            f"--models: unknown model{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; valid models: {valid}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"--models: {', '.join(repeated)} named more than once")
    return names


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (whole numbers >= 0, no repeats)."""
    seeds = []
    for part in (p.strip() for p in text.split(",")):
        if not re.fullmatch(r"\d{1,18}", part):
            raise InputError(f"--seeds {text!r}: expected whole numbers >= 0 separated by commas, e.g. 0,1,2")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def parse_contexts(text: str) -> list[int]:
    """'1k,8k,32k' -> [1024, 8192, 32768] (k = 1024 bytes); sorted, without repeats."""
    lengths = set()
    for part in (p.strip().lower() for p in text.split(",")):
        match = re.fullmatch(r"(\d{1,9})(k?)", part)
        if not match:
            raise InputError(f"--contexts {text!r}: expected byte counts like 1k,8k,32k or 512,2048")
        value = int(match.group(1)) * (1024 if match.group(2) else 1)
        if not 1 <= value <= MAX_CONTEXT:
            raise InputError(f"--contexts: {part} is outside 1..{MAX_CONTEXT // 1024}k bytes")
        lengths.add(value)
    return sorted(lengths)


def context_label(length: int) -> str:
    """1024 -> '1k', 32768 -> '32k', 300 -> '300'."""
    return f"{length // 1024}k" if length % 1024 == 0 else str(length)


def default_out(options: CompareOptions) -> Path:
    """compare/<preset>-<budget>: stable, so rerunning the same command resumes it."""
    budget = f"{options.steps}steps" if options.steps is not None else ""
    if options.time_budget is not None:
        budget += ("-" if budget else "") + f"{options.time_budget / 60:g}min"
    return Path("compare") / ((f"{options.task}-" if options.is_task else "") + f"{options.preset}-{budget}")


def resolve_task(options: CompareOptions) -> Any:
    """The probe task (None for lm) with its settings checked; fills in the sequence length it implies."""
    from glactl.data.tasks import TASKS, make_task

    if options.task not in TASKS:
        raise InputError(f"--task {options.task!r}: choose one of {', '.join(TASKS)}")
    if not options.is_task:
        owners = {"pairs": "mqar", "sort_count": "sort", "sort_range": "sort"}
        for name in options.task_options():
            raise InputError(f"--{name.replace('_', '-')} is a setting of --task {owners[name]}, not of --task lm")
        if options.seq_len is None:
            options.seq_len = 512
        return None
    if options.data or options.valid:
        raise InputError(
            f"--data and --valid are not used with --task {options.task}: a task generates its own sequences"
        )
    task = make_task(options.task, options.seq_len, **options.task_options())
    options.seq_len = task.seq_len
    return task


def check_options(options: CompareOptions) -> None:
    """Reject bad settings before any training starts (one InputError line); lower-cases the choice flags."""
    from glactl.inference.precision import COMPILE_CHOICES, PRECISION_CHOICES, check_choice
    from glactl.training.trainer import new_model_config

    options.precision = check_choice("--precision", options.precision, PRECISION_CHOICES)
    options.compile = check_choice("--compile", options.compile, COMPILE_CHOICES)
    if options.steps is None and options.time_budget is None:
        raise InputError("give a budget: --steps N or --time DURATION (per model, e.g. --time 10m)")
    if options.steps is not None and options.steps < 1:
        raise InputError("--steps must be at least 1")
    for name in ("seq_len", "batch_size", "decode_steps", "sample_bytes"):
        if int(getattr(options, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("eval_every", "eval_windows"):
        if getattr(options, name) is not None and getattr(options, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if options.lr is not None and not (0 < options.lr < 10):
        raise InputError(f"--lr {options.lr}: must be in (0, 10)")
    if not options.contexts:
        raise InputError("--contexts: give at least one context length")
    if not options.seeds:
        raise InputError("--seeds: give at least one seed")
    for name, flag in (("short_conv", "--short-conv"), ("performer_rope", "--performer-rope")):
        if getattr(options, name) is not None and not any(m in OPTION_MIXERS[name] for m in options.models):
            raise InputError(
                f"{flag} applies to {', '.join(OPTION_MIXERS[name])} only, and --models names none of them"
            )
    for model in options.models:
        new_model_config(train_options(options, model, options.seeds[0]))


# ---- the comparison ------------------------------------------------------------------------------
def run_compare(options: CompareOptions, console: Any | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) every model and seed, measure them, write the four result files; returns the entries."""
    from glactl.data.training_data import load_training_data
    from glactl.runtime.devices import set_threads
    from glactl.training.trainer import Reporter

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
        from glactl.data.training_data import DatasetUnavailable

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
    out.mkdir(parents=True, exist_ok=True)
    runs = [(model, seed) for model in options.models for seed in options.seeds]
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
    entries = [
        (
            summarize_task(model, results[model], options.spread, task)
            if task is not None
            else summarize(model, results[model], options.spread)
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


def comparison_dtype(options: CompareOptions, say: Any) -> str | None:
    """One training dtype for every run of a comparison.

    `--dtype auto` on a CPU with native bfloat16 measures each model's speed, so a table could mix
    float32 and bfloat16 runs (two identical models once landed 0.23 apart that way: README, Probes);
    here the first model's measurement decides for all of them.
    """
    if (options.dtype or "auto") != "auto":
        return options.dtype
    from glactl.data.training_data import cache_root
    from glactl.models import LanguageModel
    from glactl.runtime.devices import cpu_dtype_by_measurement, select_device, select_precision
    from glactl.training.trainer import new_model_config

    device = select_device(options.device)
    if device.type != "cpu" or select_precision("auto", device).name != "bfloat16":
        return options.dtype  # a fixed rule elsewhere (bfloat16 on GPUs that have it, else float32)
    model = LanguageModel(new_model_config(train_options(options, options.models[0], options.seeds[0])))
    name, speedup, _ = cpu_dtype_by_measurement(model, options.seq_len, options.batch_size, cache_root())
    say.line(
        f"dtype auto: {name} for every model (measured on {options.models[0]}: bfloat16 autocast "
        f"{speedup:.2f}x the speed of float32)"
    )
    return name


def training_settings(options: CompareOptions, model: str, seed: int) -> dict[str, Any]:
    """What a run was trained with: a change here means the run has to be redone."""
    from glactl.models.registry import default_lr
    from glactl.training.trainer import new_model_config

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
        "eval_every": options.eval_every,
        "eval_windows": options.eval_windows,
        "task": task_settings(options),
        # The full resolved architecture (new fields and their per-architecture defaults included):
        # a run made with another config, or by a glactl that did not record one, is not reused.
        "config": new_model_config(train_options(options, model, seed)).to_dict(),
    }


def task_settings(options: CompareOptions) -> dict[str, Any]:
    """The task's defining settings ({"task": "lm"} for text)."""
    from glactl.data.tasks import make_task

    if not options.is_task:
        return {"task": "lm"}
    return make_task(options.task, options.seq_len, **options.task_options()).settings()


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
    """Train (or resume, or skip) one run and measure it; returns its measurements."""
    trained_with = training_settings(options, model, seed)
    measured_with = measurement_settings(options, prompt)
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
    if record is not None and record.get("status") == "done" and record.get("measurement") == measured_with:
        say.line(f"{label}: already finished in {folder}, skipping (--force redoes it)")
        return record["result"]
    if record is None or record.get("status") == "training":
        resume = record is not None and _has_checkpoint(folder)
        say.line(f"{label}: {'resuming' if resume else 'training'} in {folder}")
        write_record(folder, {"status": "training", "training": trained_with})
        options.dtype = comparison_dtype(options, say)  # decided at the first training, once for all
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


def train_options(
    options: CompareOptions, model: str, seed: int, folder: Path | None = None, resume: bool = False
) -> Any:
    """The TrainOptions of one run (also what its resolved ModelConfig is derived from)."""
    from glactl.training.trainer import TrainOptions

    return TrainOptions(
        data=list(options.data),
        valid=options.valid,
        model=model,
        preset=options.preset,
        seq_len=options.seq_len,
        batch_size=options.batch_size,
        steps=options.steps,
        time_budget=options.time_budget,
        lr=options.lr,
        eval_every=options.eval_every,
        eval_windows=options.eval_windows,
        out=str(folder) if folder is not None else None,
        resume=resume,
        force=not resume,
        seed=seed,
        device=options.device,
        dtype=options.dtype,
        threads=options.threads,
        command_line=options.command_line or ["glactl", "compare", "--models", model, "--seed", str(seed)],
        task=options.task if options.is_task else None,
        task_options=options.task_options() or None,
        # an architecture option reaches only the models that have it (--short-conv 0 with gla,transformer)
        short_conv=options.short_conv if model in OPTION_MIXERS["short_conv"] else None,
        performer_rope=options.performer_rope if model in OPTION_MIXERS["performer_rope"] else None,
    )


# ---- run records ------------------------------------------------------------------------------
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


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON beside `path`, then rename over it: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _holds_run(folder: Path) -> bool:
    from glactl.training.trainer import RUN_ENTRIES

    return folder.is_dir() and any((folder / name).exists() for name in RUN_ENTRIES)


def _has_checkpoint(folder: Path) -> bool:
    return any((folder / name / "trainer.json").is_file() for name in ("checkpoint", "checkpoint.old"))


# ---- measurements -----------------------------------------------------------------------------------
def measure_run(folder: Path, options: CompareOptions, text: bytes, prompt: bytes, seed: int) -> dict[str, Any]:
    """Parameters, training speed, validation curve (metrics.jsonl); generation speed, state, sample (checkpoint)."""
    from glactl.inference.precision import apply_precision, configure, resolve_precision
    from glactl.runtime.devices import select_device
    from glactl.storage.checkpoint import load_model

    device = select_device(options.device)
    model, _ = load_model(folder, device)
    records = read_metrics(folder)
    curve = validation_curve(records)
    if not curve:
        raise RunFailure(f"{folder}: metrics.jsonl holds no validation result")
    parameters = model.num_parameters()  # before the precision swap, which keeps int8 and transposed weights as buffers
    apply_precision(model, resolve_precision(options.precision, device))
    configure(model, measurement_compile(options.compile, records))
    speeds, sizes, compiled = measure_generation(model, text, options.contexts, options.decode_steps)
    return {
        "parameters": parameters,
        "train_tokens_per_second": round(training_speed(records), 1),
        "val_bits_per_byte": curve[-1]["val_bits_per_byte"],
        "curve": curve,
        "generate_tokens_per_second": speeds,
        "decode": {"precision": model.precision, "compiled": compiled},
        "state_bytes": sizes,
        "sample": draw_sample(model, prompt, options.sample_bytes, seed),
        "config": model.config.to_dict(),
        "run": str(folder),
    }


def measure_task_run(folder: Path, options: CompareOptions, task: Any) -> dict[str, Any]:
    """Parameters, training speed, test-set curve and last accuracy (metrics.jsonl); state after one task sequence."""
    from glactl.data.tasks import TaskBatches
    from glactl.runtime.devices import select_device
    from glactl.storage.checkpoint import load_model

    model, _ = load_model(folder, select_device(options.device))
    records = read_metrics(folder)
    curve = accuracy_curve(records)
    if not curve:
        raise RunFailure(f"{folder}: metrics.jsonl holds no test-set result")
    x, _, _ = TaskBatches(task, 0, test_size=1).test_set()
    with torch.inference_mode():
        _, state = model(x.to(model.device))
    last = curve[-1]
    return {
        "parameters": model.num_parameters(),
        "train_tokens_per_second": round(training_speed(records), 1),
        "accuracy": last["accuracy"],
        **({"sequence_accuracy": last["sequence_accuracy"]} if "sequence_accuracy" in last else {}),
        "val_loss": last["val_loss"],
        "curve": curve,
        "state_bytes": {str(task.seq_len): int(model.state_nbytes(state))},
        "config": model.config.to_dict(),
        "run": str(folder),
    }


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in file order (unreadable lines are left out)."""
    from glactl.training.trainer import METRICS_FILE

    records = []
    try:
        lines = (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        raise RunFailure(f"{folder}: no {METRICS_FILE} to read the training results from") from None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("wall_time"), (int, float)):
            records.append(record)
    return records


def validation_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{step, tokens, val_bits_per_byte}] by step; a step evaluated twice (after a resume) keeps the later value."""
    by_step = {}
    for r in records:
        if r.get("kind") == "eval" and isinstance(r.get("val_bpb"), (int, float)):
            by_step[int(r["step"])] = {
                "step": int(r["step"]),
                "tokens": int(r["tokens"]),
                "val_bits_per_byte": round(float(r["val_bpb"]), 6),
            }
    return [by_step[step] for step in sorted(by_step)]


def accuracy_curve(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{step, tokens, val_loss, accuracy[, sequence_accuracy]}] of a task run by step; a repeated step keeps the later."""
    by_step = {}
    for r in records:
        if r.get("kind") == "eval" and isinstance(r.get("accuracy"), (int, float)):
            point = {
                "step": int(r["step"]),
                "tokens": int(r["tokens"]),
                "val_loss": round(float(r["val_loss"]), 6),
                "accuracy": round(float(r["accuracy"]), 6),
            }
            if isinstance(r.get("sequence_accuracy"), (int, float)):
                point["sequence_accuracy"] = round(float(r["sequence_accuracy"]), 6)
            by_step[point["step"]] = point
    return [by_step[step] for step in sorted(by_step)]


def training_speed(records: list[dict[str, Any]]) -> float:
    """Training tokens per second with evaluation time left out.

    The time from any record to the next training record is training time (a training
    record closes a logging window; an evaluation record closes the evaluation after it), so
    evaluations do not count. The first window holds start-up and the step-0 evaluation and
    is dropped when there are others.
    """
    windows = []
    previous = None
    for r in records:
        if previous is not None and r.get("kind") == "train":
            seconds = float(r["wall_time"]) - float(previous["wall_time"])
            tokens = int(r.get("tokens", 0)) - int(previous.get("tokens", 0))
            if seconds > 0 and tokens > 0:
                windows.append((tokens, seconds))
        previous = r
    if len(windows) > 1:
        windows = windows[1:]
    seconds = sum(s for _, s in windows)
    return sum(t for t, _ in windows) / seconds if seconds > 0 else 0.0


def measurement_compile(choice: str, records: list[dict[str, Any]]) -> str:
    """--compile for the speed columns: on/off as given; auto is on when the run trained long enough to pay for it."""
    if choice != "auto":
        return choice
    trained = max((float(r.get("wall_time", 0.0)) for r in records), default=0.0)
    return "on" if trained >= COMPILE_MIN_TRAINING_SECONDS else "off"


def measure_generation(
    model: Any, text: bytes, contexts: list[int], decode_steps: int
) -> tuple[dict[str, float], dict[str, int], bool]:
    """Generation tokens/s and state bytes after each context length, and whether the step ran compiled.

    The context is read with the parallel form in pieces carrying the state; at each length
    the state's size is taken, then `decode_steps` greedy steps are timed on a copy of the state,
    so the reading goes on from exactly that many bytes. The step is the one `glactl generate`
    runs (`glactl.inference.precision.stepper`: compiled where the model's --compile choice says so).
    """
    from glactl.inference.precision import stepper
    from glactl.models.state import expand_state

    speeds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    device = model.device
    step = stepper(model, 1, decode_steps)
    with torch.inference_mode():
        state, logits, done = None, None, 0
        for length in contexts:
            while done < length:
                piece = text[done : min(length, done + PREFILL_PIECE)]
                out, state = model(torch.tensor([list(piece)], dtype=torch.long, device=device), state)
                logits = out[:, -1]
                done += len(piece)
            sizes[str(length)] = int(model.state_nbytes(state))
            speeds[str(length)] = round(decode_speed(step, device, expand_state(state, 1), logits, decode_steps), 1)
    return speeds, sizes, bool(getattr(step, "ran_compiled", False))


def decode_speed(step: Any, device: torch.device, state: Any, logits: torch.Tensor, steps: int) -> float:
    """Tokens per second of `steps` greedy decode steps (batch 1) after a short untimed warm-up (and compile)."""
    token = logits.argmax(-1)
    for _ in range(WARMUP_STEPS):
        logits, state = step(token, state)
        token = logits.argmax(-1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        logits, state = step(token, state)
        token = logits.argmax(-1)
    _synchronize(device)
    return steps / max(time.perf_counter() - start, 1e-9)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_sample(model: Any, prompt: bytes, length: int, seed: int) -> str:
    """`length` bytes sampled after the prompt (temperature 0.8, the run's seed): the same draw for every model."""
    from glactl.inference.sampling import SamplingParams, generate

    stats = generate(
        model, prompt, max_new_tokens=length, params=SamplingParams(temperature=SAMPLE_TEMPERATURE), seed=seed
    )
    return stats.samples[0]


def reference_text(data: Any, length: int) -> bytes:
    """`length` bytes of real text for the context measurements: validation text if long enough, else training text."""
    for stream in [*data.valid, *data.train]:
        if len(stream) >= length:
            return bytes(stream.tokens[:length])
    longest = max([*data.valid, *data.train], key=len)
    body = bytes(longest.tokens[:])
    return (body * (length // max(1, len(body)) + 1))[:length]  # a short text is repeated to reach the length


def default_prompt(data: Any) -> bytes:
    """The start of the first whole line of the validation text, cut at a space: the same prompt for every model."""
    head = bytes(data.valid[0].tokens[:4096])
    newline = head.find(b"\n")
    line = head[newline + 1 :] if 0 <= newline < len(head) - 1 else head
    line = line.split(b"\n")[0] if line.split(b"\n")[0].strip() else line.lstrip()
    piece = line[:PROMPT_BYTES]
    if len(line) > PROMPT_BYTES and b" " in piece.strip():
        piece = piece[: piece.rstrip().rfind(b" ") + 1]
    prompt = piece.decode("utf-8", errors="ignore").encode("utf-8")
    return prompt if prompt.strip() else b"The "


# ---- summary over seeds ------------------------------------------------------------------------
def summarize(model: str, results: list[dict[str, Any]], spread: bool) -> dict[str, Any]:
    """One results.json entry: means over seeds (with --seeds, also the spread and the seeds' values)."""
    first = results[0]
    bpbs = [r["val_bits_per_byte"] for r in results]
    entry = {
        "model": model,
        "task": "lm",
        "parameters": first["parameters"],
        "train_tokens_per_second": round(statistics.fmean(r["train_tokens_per_second"] for r in results), 1),
        "val_bits_per_byte": round(statistics.fmean(bpbs), 6),
        "curve": mean_curve([r["curve"] for r in results]),
        "generate_tokens_per_second": {
            k: round(statistics.fmean(r["generate_tokens_per_second"][k] for r in results), 1)
            for k in first["generate_tokens_per_second"]
        },
        "decode": dict(first["decode"]),
        "state_bytes": dict(first["state_bytes"]),
        "sample": first["sample"],
        "config": first.get("config"),
    }
    if spread:
        entry["val_bits_per_byte_std"] = round(statistics.stdev(bpbs), 6) if len(bpbs) > 1 else 0.0
        entry["seeds"] = [
            {"seed": _seed_of(r), "val_bits_per_byte": r["val_bits_per_byte"], "run": r.get("run")} for r in results
        ]
    return entry


def summarize_task(model: str, results: list[dict[str, Any]], spread: bool, task: Any) -> dict[str, Any]:
    """One results.json entry of a --task comparison: means over seeds (with --seeds, the spread of accuracy)."""
    first = results[0]
    accuracies = [r["accuracy"] for r in results]
    entry: dict[str, Any] = {
        "model": model,
        "task": task.name,
        "parameters": first["parameters"],
        "train_tokens_per_second": round(statistics.fmean(r["train_tokens_per_second"] for r in results), 1),
        "accuracy": round(statistics.fmean(accuracies), 6),
    }
    if task.whole_sequence:
        entry["sequence_accuracy"] = round(statistics.fmean(r["sequence_accuracy"] for r in results), 6)
    entry.update(
        {
            "val_loss": round(statistics.fmean(r["val_loss"] for r in results), 6),
            "curve": mean_curve([r["curve"] for r in results]),
            "state_bytes": dict(first["state_bytes"]),
            "task_settings": task.settings(),
            "config": first["config"],
        }
    )
    if spread:
        entry["accuracy_std"] = round(statistics.stdev(accuracies), 6) if len(accuracies) > 1 else 0.0
        entry["seeds"] = [
            {
                "seed": _seed_of(r),
                "accuracy": r["accuracy"],
                "run": r.get("run"),
                **({"sequence_accuracy": r["sequence_accuracy"]} if task.whole_sequence else {}),
            }
            for r in results
        ]
    return entry


def _seed_of(result: dict[str, Any]) -> int | None:
    match = re.search(r"-seed(\d+)$", str(result.get("run", "")))
    return int(match.group(1)) if match else None


def mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Point-by-point mean of several seeds' curves over the points they all have."""
    length = min(len(c) for c in curves)
    values = [k for k in curves[0][0] if k not in ("step", "tokens")] if length else []  # bpb, or a task's metrics
    return [
        {
            "step": round(statistics.fmean(c[i]["step"] for c in curves)),
            "tokens": round(statistics.fmean(c[i]["tokens"] for c in curves)),
            **{k: round(statistics.fmean(c[i][k] for c in curves), 6) for k in values},
        }
        for i in range(length)
    ]


# ---- reports ----------------------------------------------------------------------------------
def terminal_table(entries: list[dict[str, Any]], width: int) -> tuple[list[str], list[str], list[str]]:
    """The table for a terminal `width` columns wide: short headers, whole columns left out until it fits.

    Per-context columns go first (all but the longest context, shortest first), then the decode
    path, then the longest context's, then parameters and training speed; model and score columns
    always stay. Returns
    the header, the rows and the names of the columns left out.
    """
    from glactl.report.display import fit_columns

    header, rows = table(entries)
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
    order += [i for i, h in enumerate(header) if h in ("params", "train tok/s")]
    return fit_columns(short, rows, width, order)


def table(entries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table (shared by the terminal and results.md)."""
    if entries and entries[0].get("task", "lm") != "lm":
        return task_table(entries)
    contexts = list(entries[0]["state_bytes"]) if entries else []
    spread = any("val_bits_per_byte_std" in e for e in entries)
    header = ["model", "params", "train tok/s", "val bpb" + (" (± sd)" if spread else "")]
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


def task_table(entries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a --task comparison: accuracy on the test set, loss at the answers, state after a sequence."""
    spread = any("accuracy_std" in e for e in entries)
    whole = any("sequence_accuracy" in e for e in entries)
    length = next(iter(entries[0]["state_bytes"]))
    header = ["model", "params", "train tok/s", "accuracy" + (" (± sd)" if spread else "")]
    header += ["sequence accuracy"] if whole else []
    header += ["answer loss", f"state @{context_label(int(length))}"]
    rows = []
    for e in entries:
        accuracy = f"{e['accuracy']:.4f}" + (f" ± {e['accuracy_std']:.4f}" if "accuracy_std" in e else "")
        row = [e["model"], f"{e['parameters'] / 1e6:.2f}M", f"{e['train_tokens_per_second']:,.0f}", accuracy]
        row += [f"{e['sequence_accuracy']:.4f}"] if whole else []
        row += [f"{e['val_loss']:.4f}", human_bytes(e["state_bytes"][length])]
        rows.append(row)
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
            f"seed{'s' if len(options.seeds) > 1 else ''} {seeds}.",
            f"Accuracy is teacher-forced argmax at the answer positions of a fixed test set of {test} sequences "
            f"(disjoint from training), at the last evaluation"
            + (" (mean ± sample standard deviation over seeds)" if options.spread else "")
            + f"{whole}; answer loss is the cross-entropy there (nats); the state is measured after one {options.seq_len}-byte "
            "task sequence; training tokens/s leaves evaluation time out.",
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
        f"batch {options.batch_size}, budget {describe_budget(options)}, learning rate {lr}, seed{'s' if len(options.seeds) > 1 else ''} {seeds}.",
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

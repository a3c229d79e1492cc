"""What `glactl compare` takes: its options and their defaults, parsed and checked before any run starts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glactl.errors import InputError
from glactl.models.config import OPTION_MIXERS

DEFAULT_DATA = "wikitext-103"
DEFAULT_CONTEXTS = (1024, 8192, 32768)
MAX_CONTEXT = 1 << 20
DECODE_STEPS = 64  # timed model.step calls per context length
SAMPLE_BYTES = 200


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


def parse_models(text: str, flag: str = "--models") -> list[str]:
    """'gla,transformer' -> ['gla', 'transformer']; InputError (naming `flag` as typed) with the valid models otherwise."""
    from glactl.models.registry import MIXERS

    names = [name.strip() for name in text.split(",") if name.strip()]
    valid = ", ".join(MIXERS)
    if not names:
        raise InputError(f"{flag}: name at least one model; valid models: {valid}")
    unknown = [name for name in names if name not in MIXERS]
    if unknown:
        raise InputError(
            f"{flag}: unknown model{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; valid models: {valid}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"{flag}: {', '.join(repeated)} named more than once")
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
    """Reject bad settings before any training starts (one InputError line); lower-cases the choice flags.

    Each run's training settings go through the same `resolve` as `glactl train`; what is checked here is
    compare's own: the budget, the measurement and the options that must reach some model.
    """
    from glactl.inference.compiled_step import COMPILE_CHOICES
    from glactl.inference.precision import PRECISION_CHOICES, check_choice
    from glactl.training.options import resolve
    from glactl.training.setup import new_model_config

    options.precision = check_choice("--precision", options.precision, PRECISION_CHOICES)
    options.compile = check_choice("--compile", options.compile, COMPILE_CHOICES)
    if options.steps is None and options.time_budget is None:
        raise InputError("give a budget: --steps N or --time DURATION (per model, e.g. --time 10m)")
    for name in ("decode_steps", "sample_bytes"):
        if int(getattr(options, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
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
        run = train_options(options, model, options.seeds[0])
        resolve(run)
        new_model_config(run)


def train_options(
    options: CompareOptions, model: str, seed: int, folder: Path | None = None, resume: bool = False
) -> Any:
    """The TrainOptions of one run (also what its resolved ModelConfig is derived from)."""
    from glactl.training.options import TrainOptions

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


def task_settings(options: CompareOptions) -> dict[str, Any]:
    """The task's defining settings ({"task": "lm"} for text)."""
    from glactl.data.tasks import make_task

    if not options.is_task:
        return {"task": "lm"}
    return make_task(options.task, options.seq_len, **options.task_options()).settings()

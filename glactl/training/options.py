"""What `glactl train` takes (TrainOptions), its defaults, and `resolve`: the one place its settings are filled and checked.

`resolve` is a plain function, so other commands that train (`glactl compare`) can refuse bad settings the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from glactl.data.tasks import TEST_SEQUENCES, make_task
from glactl.errors import InputError


@dataclass
class TrainOptions:
    """Everything `glactl train` takes; None means 'not given' (default, or the saved value on --resume)."""

    data: list[str] = field(default_factory=list)
    valid: str | None = None
    model: str | None = None
    preset: str | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    steps: int | None = None
    time_budget: float | None = None  # seconds
    lr: float | None = None
    warmup: int | None = None
    schedule: str | None = None  # cosine | constant
    weight_decay: float | None = None
    decay_gates: bool | None = None  # False: GLA's forget-gate projection and short-convolution filters take no decay
    clip: float | None = None
    eval_every: int | None = None
    eval_windows: int | None = None
    save_every: int | None = None
    log_every: int | None = None
    out: str | None = None
    resume: bool = False
    force: bool = False
    init_from: str | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    kernels: str | None = None  # torch | fla (GLA chunk form through flash-linear-attention, CUDA only)
    allow_binary: bool | None = None
    command_line: list[str] | None = None
    task: str | None = None  # None or "lm": text from --data; else a probe of glactl.data.tasks (docs/design.md §3.9)
    task_options: dict[str, int] | None = None  # the task's settings given: pairs, sort_count, sort_range
    short_conv: int | None = None  # ModelConfig.short_conv for a new model (None: the architecture's default)
    performer_rope: bool | None = None  # ModelConfig.performer_rope for a new model (None: the default)
    model_options: dict[str, Any] | None = None  # further ModelConfig fields for a new model (library only: ablations)


# Architecture defaults (used only for a new model; a checkpoint brings its own).
MODEL_DEFAULTS: dict[str, str] = {"model": "gla", "preset": "small"}
DEFAULTS: dict[str, Any] = {
    "seq_len": 512,
    "batch_size": 16,
    "grad_accum": 1,
    "weight_decay": 0.1,
    "decay_gates": True,
    "clip": 1.0,
    "eval_every": 250,
    "eval_windows": 64,
    "save_every": 500,
    "log_every": 10,
    "seed": 0,
    "schedule": "cosine",
    "device": "auto",
    "dtype": "auto",
    "kernels": "torch",
    "allow_binary": False,
}
# Settings a resumed run takes from trainer.json unless given again.
RESUMED = (
    "seq_len",
    "batch_size",
    "grad_accum",
    "weight_decay",
    "decay_gates",
    "clip",
    "eval_every",
    "eval_windows",
    "save_every",
    "log_every",
    "seed",
    "schedule",
    "warmup",
    "lr",
    "valid",
    "steps",
    "time_budget",
    "device",
    "dtype",
    "threads",
    "kernels",
    "allow_binary",
    "task",
    "task_options",
)


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '1.5h' or plain seconds -> seconds; InputError otherwise."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smhd])", "", value).strip():
            raise InputError(f"--time {text!r}: expected a duration like 90s, 30m, 2h or 1h30m")
        seconds = sum(float(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)
    if not 0 < seconds < 1e9:
        raise InputError(f"--time {text!r}: must be a positive duration")
    return seconds


# A run with only a time budget warms up for 100 steps or 2% of the budget, whichever ends first, so a
# short budget on a slow machine (a 2-minute CPU run makes ~40 steps of the small preset) still trains.
TIME_WARMUP_FRACTION = 0.02


def default_warmup(total_steps: int | None, share: float = 0.02) -> int:
    """`share` of the steps (2% unless the architecture asks for more), clamped to [10, 1000] and at most a tenth
    of the run; 100 for a time budget."""
    if total_steps is None:
        return 100
    return max(1, min(max(10, min(1000, round(share * total_steps))), total_steps // 10))


def is_task_run(options: TrainOptions) -> bool:
    """Whether the run trains on a synthetic probe task rather than text."""
    return options.task not in (None, "lm")


def resolve(options: TrainOptions, saved: dict[str, Any] | None = None, world: int = 1) -> None:
    """Fill every unset option from the saved run (trainer.json on --resume) or the defaults, then check them all.

    `world`: the processes of a torchrun job, which split each batch evenly. InputError (one line) for a bad setting.
    """
    o = options
    saved = saved or {}
    saved_settings = saved.get("settings", {})
    if o.task is None and saved_settings.get("task") is not None:
        o.task, o.task_options = saved_settings["task"], o.task_options or saved_settings.get("task_options")
    if is_task_run(o):  # a task's own defaults: its sequence length, a test set of TEST_SEQUENCES
        if o.data:
            raise InputError(f"--data is not used with --task {o.task}: a task generates its own sequences")
        if o.seq_len is None and saved_settings.get("seq_len") is None:
            o.seq_len = make_task(str(o.task), None, **(o.task_options or {})).seq_len
        if o.eval_windows is None and saved_settings.get("eval_windows") is None:
            o.eval_windows = TEST_SEQUENCES
    for name in RESUMED + tuple(DEFAULTS):
        if getattr(o, name, None) is None and name in saved_settings:
            setattr(o, name, saved_settings[name])
        if getattr(o, name, None) is None and name in DEFAULTS:
            setattr(o, name, DEFAULTS[name])
    if o.data and saved.get("data") and list(o.data) != list(saved["data"]):
        raise InputError(
            f"--resume: the run trained on --data {' '.join(saved['data'])}, not {' '.join(o.data)}; "
            "a resumed run keeps its data (best/ compares scores on one validation text); "
            f"to train on other data start a new run from its weights: --init-from {o.out} --out NEW_FOLDER"
        )
    if o.valid is not None and saved_settings.get("valid") != o.valid and saved.get("data"):
        raise InputError(
            f"--resume: the run validated on {saved_settings.get('valid') or 'its default split'}, "
            f"not --valid {o.valid}; best/ compares scores on one validation text; "
            f"to change it start a new run: --init-from {o.out} --out NEW_FOLDER"
        )
    if not o.data and saved.get("data"):
        o.data = list(saved["data"])
    for name in ("seq_len", "batch_size", "grad_accum", "eval_windows", "eval_every", "save_every", "log_every"):
        if int(getattr(o, name)) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if o.steps is not None and o.steps < 1:
        raise InputError("--steps must be at least 1")
    if o.steps is None and o.time_budget is None:
        raise InputError("give --steps N or --time DURATION (e.g. --time 30m)")
    if o.lr is not None and not (0 < o.lr < 10):
        raise InputError(f"--lr {o.lr}: must be in (0, 10)")
    if o.weight_decay < 0 or o.clip < 0:
        raise InputError("--weight-decay and --clip must not be negative")
    if o.schedule not in ("cosine", "constant"):
        raise InputError(f"--schedule {o.schedule!r}: choose cosine or constant")
    if o.warmup is not None and o.warmup < 0:
        raise InputError("--warmup must not be negative")
    if o.batch_size % world:
        raise InputError(
            f"--batch-size {o.batch_size} (the global batch) must be divisible by the {world} "
            "processes, which split each micro-batch evenly"
        )

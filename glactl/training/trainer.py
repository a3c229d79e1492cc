"""The training loop behind `glactl train`: AdamW, warmup + cosine, evaluation, resumable checkpoints.

A run folder holds `metrics.jsonl`, `train.lock` while training, `checkpoint/` (latest, with
optimizer.safetensors + trainer.json) and `best/` (lowest validation bits per byte). Batches
are a pure function of (seed, step), so `--resume` continues exactly where a run stopped.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    import fcntl as _fcntl
except ImportError:  # Windows: the pid file alone
    _fcntl = None  # type: ignore[assignment]

from glactl import __version__
from glactl.data.tasks import TEST_SEQUENCES, Task, TaskBatches, TaskScore, make_task, masked_cross_entropy
from glactl.data.training_data import TextBatches, TrainingData, load_training_data
from glactl.errors import GlactlError, InputError, RunFailure
from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import default_lr
from glactl.report.display import clock
from glactl.runtime.devices import (
    Precision,
    plural,
    select_device,
    select_kernels,
    select_precision,
    set_threads,
    thread_line,
    use_kernels,
)
from glactl.runtime.distributed import Distributed
from glactl.storage.checkpoint import load_model, resolve_checkpoint_dir, save_model
from glactl.storage.trainer_state import load_optimizer, read_trainer, restore_rng, write_trainer_files

LOCK_FILE = "train.lock"
METRICS_FILE = "metrics.jsonl"
RUN_ENTRIES = ("checkpoint", "checkpoint.old", "best", "best.old", METRICS_FILE)
MIN_LR_RATIO = 0.1
LN2 = math.log(2.0)


class TrainingInterrupted(GlactlError):
    """Ctrl-C during training: a checkpoint was saved; exit 130."""

    exit_code = 130


# ---- options ---------------------------------------------------------------------------
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


# ---- schedule ----------------------------------------------------------------------------
@dataclass
class Schedule:
    """Linear warmup to `peak`, then cosine down to 10% of it (or constant) over steps or the time budget."""

    peak: float
    warmup: int
    total_steps: int | None
    time_budget: float | None
    kind: str = "cosine"
    warmup_seconds: float | None = None  # with a time budget: the warmup also ends once this much time has passed

    def lr(self, step: int, elapsed: float) -> float:
        """Learning rate for the update that makes step `step + 1`."""
        if step < self.warmup:
            ramp = (step + 1) / self.warmup
            if self.warmup_seconds:
                ramp = max(ramp, elapsed / self.warmup_seconds)
            if ramp < 1.0:
                return self.peak * ramp
        if self.kind == "constant":
            return self.peak
        progress = 0.0
        if self.total_steps is not None:
            progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        if self.time_budget is not None:
            progress = max(progress, elapsed / self.time_budget)
        progress = min(1.0, max(0.0, progress))
        return self.peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "peak_lr": self.peak,
            "warmup": self.warmup,
            "total_steps": self.total_steps,
            "time_budget_seconds": self.time_budget,
            "warmup_seconds": self.warmup_seconds,
            "min_lr_ratio": MIN_LR_RATIO,
        }


# A run with only a time budget warms up for 100 steps or 2% of the budget, whichever ends first, so a
# short budget on a slow machine (a 2-minute CPU run makes ~40 steps of the small preset) still trains.
TIME_WARMUP_FRACTION = 0.02


def default_warmup(total_steps: int | None) -> int:
    """2% of the steps, clamped to [10, 1000] and at most a tenth of the run; 100 for a time budget."""
    if total_steps is None:
        return 100
    return max(1, min(max(10, min(1000, round(0.02 * total_steps))), total_steps // 10))


# ---- model and task of a run -------------------------------------------------------------------
def is_task_run(options: TrainOptions) -> bool:
    """Whether the run trains on a synthetic probe task rather than text."""
    return options.task not in (None, "lm")


def run_task(options: TrainOptions) -> Task:
    """The probe task of a task run, its settings checked (InputError)."""
    return make_task(str(options.task), options.seq_len, **(options.task_options or {}))


def new_model_config(options: TrainOptions) -> ModelConfig:
    """The ModelConfig a fresh run builds: preset, size overrides, per-architecture options, window = --seq-len."""
    o = options
    overrides = {
        k: v
        for k, v in (
            ("d_model", o.d_model),
            ("n_layers", o.n_layers),
            ("n_heads", o.n_heads),
            ("short_conv", o.short_conv),
            ("performer_rope", o.performer_rope),
        )
        if v is not None
    }
    overrides.update(o.model_options or {})
    # The training window becomes the attention window W (docs/design.md §3.3); recurrent mixers ignore it.
    config = ModelConfig.preset(
        o.preset or MODEL_DEFAULTS["preset"],
        mixer=o.model or MODEL_DEFAULTS["model"],
        context=o.seq_len if o.seq_len is not None else DEFAULTS["seq_len"],
        **overrides,
    )
    return config.validate()


# ---- run folder and lock -------------------------------------------------------------------
class RunLock:
    """`train.lock` holding the pid: a live holder refuses a second run; a dead one's lock is taken over.

    Where the OS has flock (Linux, macOS) the holder also keeps an exclusive flock on the file:
    the kernel drops it when the process dies, so a lock is stale exactly when nobody holds the
    flock, and a lock whose pid is not written yet is not mistaken for a stale one.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        if _fcntl is not None:
            return self._acquire_flock()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise InputError(
                        f"{self.path.parent}: another glactl train (pid {pid}) is using this run folder"
                    ) from None
                try:
                    self.path.unlink()  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise InputError(f"{self.path}: could not take the run lock")

    def _acquire_flock(self) -> None:
        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid = None
                for _ in range(20):  # the holder may be between taking the lock and writing its pid
                    pid = _read_pid(self.path)
                    if pid is not None:
                        break
                    time.sleep(0.05)
                who = f"pid {pid}" if pid is not None else "pid not yet written"
                raise InputError(f"{self.path.parent}: another glactl train ({who}) is using this run folder") from None
            try:  # a holder that was releasing may have unlinked the file we locked: then lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)  # whatever pid a dead holder left
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            self.held = True
            return
        raise InputError(f"{self.path}: could not take the run lock")

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()  # while still holding the flock, so nobody takes a file about to vanish
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        elif self.held and _read_pid(self.path) == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run_folder(options: TrainOptions, mixer: str) -> Path:
    """The run folder: created, or checked for --resume / --force."""
    out = Path(options.out) if options.out else Path("runs") / f"{mixer}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _has_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_ENTRIES)


# ---- the reporter: rich on a terminal, plain lines otherwise -------------------------------------
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


# ---- the trainer ---------------------------------------------------------------------------
class Trainer:
    """One training run: set up from options (fresh, --init-from or --resume), then `run()`."""

    def __init__(
        self, options: TrainOptions, console: Any | None = None, on_step: Callable[[Trainer], None] | None = None
    ) -> None:
        self.options = options
        self.dist = Distributed.from_env()  # torchrun's RANK/WORLD_SIZE; one process without them
        self.report = Reporter(console if self.dist.is_main else None)  # rank 0 alone logs
        self.on_step = on_step
        self.stop_requested = False
        self.lock: RunLock | None = None
        self.notes: list[str] = []  # choices made for the user (threads, dtype), said once when training starts

    # -- setup --------------------------------------------------------------------------------
    def _resolve(self, saved: dict[str, Any]) -> None:
        """Fill every unset option from the saved run (on --resume) or the defaults."""
        o = self.options
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
        if o.batch_size % self.dist.world:
            raise InputError(
                f"--batch-size {o.batch_size} (the global batch) must be divisible by the {self.dist.world} "
                "processes, which split each micro-batch evenly"
            )

    def _build_model(self, resume_dir: Path | None) -> tuple[LanguageModel, dict[str, Any]]:
        o = self.options
        if resume_dir is not None or o.init_from:
            model, document = load_model(resume_dir if resume_dir is not None else o.init_from, "cpu")
            model.train()
            self._check_architecture(model.config, "--resume" if resume_dir is not None else "--init-from")
            return model, ({} if resume_dir is not None else {"init_from": document.get("path")})
        return LanguageModel(new_model_config(o)), {}

    def _check_architecture(self, config: ModelConfig, flag: str) -> None:
        """Architecture flags given with --resume/--init-from must agree with the checkpoint's."""
        o = self.options
        asked = {
            "mixer": o.model,
            "d_model": o.d_model,
            "n_layers": o.n_layers,
            "n_heads": o.n_heads,
            "short_conv": o.short_conv,
            "performer_rope": o.performer_rope,
        }
        if o.preset is not None:
            preset = ModelConfig.preset(o.preset)
            for name in ("d_model", "n_layers", "n_heads"):
                asked[name] = asked[name] if asked[name] is not None else getattr(preset, name)
        wrong = [
            f"{k} {v} (checkpoint: {getattr(config, k)})"
            for k, v in asked.items()
            if v is not None and v != getattr(config, k)
        ]
        if wrong:
            raise InputError(
                f"{flag}: the checkpoint's architecture differs from the flags: {', '.join(wrong)}; "
                "drop the architecture flags to use the checkpoint's"
            )

    def setup(self) -> None:
        """Lock the run folder, load data and model, build optimizer and schedule."""
        o = self.options
        if o.resume and not o.out:
            raise InputError("--resume needs --out RUN_FOLDER: the run to continue")
        mixer = o.model or MODEL_DEFAULTS["model"]
        out = Path(o.out) if o.out else None
        created = out is None or not out.exists()
        self.out = prepare_run_folder(o, mixer)
        self.lock = RunLock(self.out)
        if self.dist.is_main:  # one lock for the whole job
            self.lock.acquire()
        try:
            self._setup_locked()
        except BaseException:
            self.lock.release()
            self.dist.close()
            if created:  # leave no empty run folder behind a failed start
                try:
                    self.out.rmdir()
                except OSError:
                    pass
            raise

    def _setup_locked(self) -> None:
        o = self.options
        saved: dict[str, Any] = {}
        resume_dir: Path | None = None
        if o.resume and o.force:
            raise InputError("--resume and --force contradict each other: --resume continues, --force starts over")
        if o.resume:
            if o.init_from:
                raise InputError("--resume continues a run; --init-from starts a new one from other weights: pick one")
            try:
                resume_dir = resolve_checkpoint_dir(self.out / "checkpoint")
            except InputError:
                raise InputError(f"--resume: {self.out} has no checkpoint to resume from") from None
            saved = read_trainer(resume_dir)
        elif _has_run(self.out):
            if not o.force:
                raise InputError(
                    f"--out {self.out}: already holds a run; pass --resume to continue it or --force to start over"
                )
            for name in RUN_ENTRIES if self.dist.is_main else ():
                target = self.out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self._resolve(saved)
        current = " ".join(o.command_line) if o.command_line else None
        self.commands: list[str] = [c for c in [*saved.get("commands", []), current] if c]  # first: how it started
        self.device = self.dist.start(select_device(o.device))  # torchrun: join the group; cuda:LOCAL_RANK
        self.precision: Precision = select_precision(o.dtype, self.device)
        if self.precision.warning:
            sys.stderr.write(f"glactl: warning: {self.precision.warning}\n")
        self.kernels = select_kernels(o.kernels, self.device)
        threads, why = thread_line("training", o.threads)
        self.threads = set_threads(threads)
        if why:
            self.notes.append(why)
        torch.manual_seed(o.seed)
        model, info = self._build_model(resume_dir)
        if resume_dir is not None or o.init_from:
            o.model = model.config.mixer
        self.model = use_kernels(model.to(self.device), self.kernels)
        self.model.train()
        self.train_model = self.dist.wrap(self.model)  # DDP in a torchrun job; checkpoints save self.model
        self.config = model.config
        self.init_from = info.get("init_from")
        # data: text windows, or a probe task's generated sequences (the same loop trains on either)
        self.task: Task | None = run_task(o) if is_task_run(o) else None
        self.data: TrainingData | None = None
        if self.task is not None:
            self.source: TextBatches | TaskBatches = TaskBatches(self.task, o.seed, o.eval_windows)
        else:
            try:
                with self.dist.main_first():  # rank 0 fills the data cache, the others then read it
                    data = load_training_data(o.data, o.valid, o.seq_len, self.report.prepare, o.allow_binary)
            finally:
                self.report.end_prepare()
            self.notes.extend(data.messages)  # said when training starts: a refusal before it stays one line
            self.data = data
            self.data_fingerprint = data.fingerprint()
            self._check_same_data(saved)
            self.source = TextBatches(data, o.seq_len, o.seed, o.eval_windows)
        # optimizer and schedule
        decay = [p for _, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for _, p in self.model.named_parameters() if p.dim() < 2]
        peak = o.lr if o.lr is not None else default_lr(self.config.mixer)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=peak,
            betas=(0.9, 0.95),
            eps=1e-8,
        )
        warmup = o.warmup if o.warmup is not None else default_warmup(o.steps)
        timed_warmup = o.warmup is None and o.steps is None and o.time_budget is not None
        self.schedule = Schedule(
            peak,
            warmup,
            o.steps,
            o.time_budget,
            o.schedule,
            TIME_WARMUP_FRACTION * o.time_budget if timed_warmup else None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision.use_scaler else None
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0
        # The validation score, lower is better: bits per byte for text; for a task the masked loss
        # (nats per answer), which also picks best/. last_metrics: the last evaluation's metrics.
        self.score_key = "val_loss" if self.task is not None else "val_bpb"
        self.best_bpb: float | None = None
        self.last_bpb: float | None = None
        self.start_bpb: float | None = None
        self.last_metrics: dict[str, float] = {}
        if resume_dir is not None:
            load_optimizer(resume_dir, self.optimizer, saved)
            restore_rng(saved, str(resume_dir / "trainer.json"))
            self.step = saved["step"]
            self.tokens_seen = saved["tokens_seen"]
            self.elapsed_before = float(saved["elapsed_seconds"])
            self.best_bpb = saved.get(f"best_{self.score_key}")
            self.last_bpb = saved.get(f"last_{self.score_key}")
            self.start_bpb = saved.get(f"start_{self.score_key}")
            self.last_metrics = dict(saved.get("last_eval") or {})
            if self.scaler is not None and saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
            self.report.line(
                f"resuming {self.out} from step {self.step} ({self.tokens_seen:,} tokens, "
                f"{clock(self.elapsed_before)} trained)"
            )
        self.resume_dir = resume_dir
        self._measure_auto_dtype()  # last: bad data or flags are refused before any timing

    # -- saving ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        o = self.options
        return {name: getattr(o, name) for name in RESUMED}

    def summary(self) -> dict[str, Any]:
        """The training summary stored in config.json."""
        o = self.options
        if self.task is not None:
            scores = {
                "task": self.task.settings(),
                "val_bits_per_byte": None,
                "best_val_bits_per_byte": None,
                "val_loss": self.last_bpb,
                "best_val_loss": self.best_bpb,
                **{k: v for k, v in self.last_metrics.items() if k != "val_loss"},
            }
        else:
            scores = {"val_bits_per_byte": self.last_bpb, "best_val_bits_per_byte": self.best_bpb}
        return {
            "steps": self.step,
            "tokens_seen": self.tokens_seen,
            "data": [{k: v for k, v in s.items() if k != "cache"} for s in self.data.sources] if self.data else [],
            "valid": o.valid,
            **scores,
            "wall_time_seconds": round(self.elapsed(), 3),
            "glactl_version": __version__,
            "command": self.commands[0] if self.commands else None,  # the command that started the run
            **({"resumed_with": self.commands[1:]} if len(self.commands) > 1 else {}),
            "steps_planned": o.steps,
            "time_budget_seconds": o.time_budget,
            "seq_len": o.seq_len,
            "batch_size": o.batch_size,
            "grad_accum": o.grad_accum,
            "lr": self.schedule.peak,
            "seed": o.seed,
            "device": self.device.type,
            "dtype": self.precision.name,
            "threads": self.threads,
            "init_from": self.init_from,
        }

    def _measure_auto_dtype(self) -> None:
        """--dtype auto on a CPU with native bfloat16: the faster of float32 and bfloat16 for this model, measured here."""
        o = self.options
        if (o.dtype or "auto") != "auto" or self.device.type != "cpu" or self.precision.name != "bfloat16":
            return
        from glactl.data.training_data import cache_root
        from glactl.runtime.devices import cpu_dtype_by_measurement

        _, speedup, cached = cpu_dtype_by_measurement(self.model, o.seq_len, o.batch_size, cache_root())
        speedup = self.dist.from_main(speedup)  # every rank trains in rank 0's choice
        name = "bfloat16" if speedup > 1.0 else "float32"
        self.precision = select_precision(name, self.device)
        self.notes.append(
            f"dtype auto: {name} (bfloat16 autocast measured {speedup:.2f}x the speed of float32 "
            f"for this model on this CPU{'; measured before' if cached else ''})"
        )

    def _check_same_data(self, saved: dict[str, Any]) -> None:
        """On --resume, the same text by content as before (a run from before fingerprints is taken on trust)."""
        before = saved.get("data_fingerprint")
        if not before or not self.options.resume:
            return
        now = self.data_fingerprint
        changed = [name for name, sha in now["train"].items() if before.get("train", {}).get(name) not in (None, sha)]
        what = (
            f"the content of {', '.join(changed)}"
            if changed
            else "the validation text"
            if before.get("valid") != now["valid"]
            else None
        )
        if what:
            raise InputError(
                f"--resume: {what} changed since the run started; a resumed run keeps its data "
                "(best/ compares scores on one validation text); to train on the new text start a new run "
                f"from its weights: --init-from {self.out} --out NEW_FOLDER"
            )

    def trainer_document(self) -> dict[str, Any]:
        return {
            **({"data_fingerprint": self.data_fingerprint} if getattr(self, "data_fingerprint", None) else {}),
            "commands": self.commands,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed_seconds": self.elapsed(),
            f"best_{self.score_key}": self.best_bpb,
            f"last_{self.score_key}": self.last_bpb,
            f"start_{self.score_key}": self.start_bpb,
            **({"last_eval": self.last_metrics} if self.task else {}),
            "schedule": self.schedule.to_dict(),
            "settings": self.settings(),
            "data": list(self.options.data),
            "data_position": {
                "sampler": "task-v1" if self.task else "random-windows-v1",
                "seed": self.options.seed,
                "next_step": self.step,
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def save_checkpoint(self) -> None:
        """Save `checkpoint/` (weights, optimizer, trainer state) by a whole-folder swap."""
        if not self.dist.is_main:  # every rank holds the same weights; rank 0 writes them
            return
        trainer = self.trainer_document()
        save_model(
            self.out / "checkpoint",
            self.model,
            training=self.summary(),
            extra_files=lambda folder: write_trainer_files(folder, self.optimizer, trainer),
        )

    def save_best(self) -> None:
        if not self.dist.is_main:
            return
        save_model(self.out / "best", self.model, training=self.summary())

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """The validation score on the fixed set: bits per byte (text) or masked loss (task; see last_metrics)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        score = TaskScore()
        o = self.options
        # Ranks score their share of the windows; the sums are then the same on every rank.
        for x, y, mask in self.source.eval_batches(
            self.dist.rank, self.dist.world, max(1, o.batch_size // self.dist.world)
        ):
            x, y = x.to(self.device), y.to(self.device)
            with self.precision.autocast(self.device):
                logits, _ = self.model(x)
            if mask is not None:
                score.add(logits.float(), y, mask.to(self.device))
                continue
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total += loss.item()
            count += y.numel()
        self.model.train(was_training)
        if self.task is not None:
            score = TaskScore.from_totals(self.dist.sum(*score.totals()))
            self.last_metrics = {k: round(v, 6) for k, v in score.metrics(self.task.whole_sequence).items()}
            return self.last_metrics["val_loss"]
        total, count = self.dist.sum(total, count)
        self.last_metrics = {"val_bpb": total / count / LN2}
        return total / count / LN2

    # -- the loop -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._t0 if hasattr(self, "_t0") else 0.0)

    def done(self) -> bool:
        o = self.options
        if o.steps is not None and self.step >= o.steps:
            return True
        return o.time_budget is not None and self.dist.from_main(self.elapsed()) >= o.time_budget  # rank 0's clock

    def request_stop(self) -> None:
        """Ask the loop to save and stop after the current step (what Ctrl-C does)."""
        self.stop_requested = True

    def train_step(self) -> float:
        """One optimizer update over grad_accum micro-batches; returns the mean loss (nats per byte)."""
        o = self.options
        lr = self.schedule.lr(self.step, self.dist.from_main(self.elapsed()) if o.time_budget else self.elapsed())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.current_lr = lr
        batch = self.source.train_batch(self.step, o.batch_size * o.grad_accum)  # (x, y, answer mask or None)
        total = 0.0
        for micro in range(o.grad_accum):
            rows = slice(
                micro * o.batch_size + self.dist.rank, (micro + 1) * o.batch_size, self.dist.world
            )  # this rank's part
            x, y, mask = (t[rows] if t is not None else None for t in batch)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.dist.no_sync(self.train_model, micro == o.grad_accum - 1):  # all-reduce once per step
                with self.precision.autocast(self.device):
                    logits, _ = self.train_model(x)
                if mask is not None:  # a task: only the answer positions count
                    loss = masked_cross_entropy(logits, y, mask.to(self.device))
                else:
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
                value = self.dist.mean(loss)  # the global micro-batch's loss, the same on every rank
                if not math.isfinite(value):
                    raise self._non_finite(f"loss is {value}")
                scaled = loss / o.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += value
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, o.clip if o.clip > 0 else float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if not torch.isfinite(norm):
                raise self._non_finite("the gradient norm is not finite")
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / o.grad_accum

    def _non_finite(self, what: str) -> RunFailure:
        try:
            last: Path | None = resolve_checkpoint_dir(self.out / "checkpoint")
        except InputError:
            last = None
        kept = f"the last good checkpoint stays in {last}" if last else "no checkpoint was saved"
        return RunFailure(f"{what} at step {self.step + 1}; stopped without saving ({kept}); try a lower --lr")

    def write_metrics(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def run(self) -> dict[str, Any]:
        """Train until --steps or --time is reached; returns the final summary."""
        self._t0 = time.monotonic()
        previous = self._install_sigint()
        try:
            summary = self._loop()
            self.dist.barrier()  # the other ranks wait until rank 0 has written the last checkpoint
            return summary
        except KeyboardInterrupt:  # a second Ctrl-C: stop now; a save it cut short left the previous checkpoint whole
            raise TrainingInterrupted(self._interrupted_again()) from None
        finally:
            self.report.stop()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.lock is not None:
                self.lock.release()
            self.dist.close()

    def _interrupted_again(self) -> str:
        try:
            kept = resolve_checkpoint_dir(self.out / "checkpoint")
            step = json.loads((kept / "trainer.json").read_text())["step"]
            where = f"the last saved checkpoint (step {step}) stays in {kept}; resume with: glactl train --out {self.out} --resume"
        except (InputError, OSError, ValueError, KeyError, TypeError):
            where = "no checkpoint was saved"
        return f"interrupted again at step {self.step}, without waiting for a save; {where}"

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        return signal.signal(signal.SIGINT, handler)

    def _loop(self) -> dict[str, Any]:
        o = self.options
        for note in self.notes:
            self.report.line(note)
        n_params = self.model.num_parameters()
        target = f"{o.steps} steps" if o.steps is not None else ""
        if o.time_budget is not None:
            target += (" or " if target else "") + f"{clock(o.time_budget)} of training"
        self.report.line(
            f"training {self.config.mixer} ({n_params / 1e6:.2f}M parameters, d {self.config.d_model}, "
            f"{plural(self.config.n_layers, 'layer')}) on {self.device.type}/{self.precision.name}, {plural(self.threads, 'thread')}, "
            f"seq {o.seq_len} x batch {o.batch_size}"
            + (f" x {o.grad_accum} accum" if o.grad_accum > 1 else "")
            + (f" over {self.dist.world} processes ({self.dist.backend})" if self.dist.enabled else "")
            + f", lr {self.schedule.peak:g}, until {target}; run folder {self.out}"
        )
        if self.step == 0 and self.start_bpb is None:
            self.start_bpb = self.last_bpb = self.evaluate()
            self.write_metrics(
                {
                    "kind": "eval",
                    "step": 0,
                    "tokens": 0,
                    **({"val_bpb": self.start_bpb} if self.task is None else self.last_metrics),
                    "wall_time": 0.0,
                }
            )
            self.report.line(f"step 0 | {self._eval_text()}")
        use_steps = o.steps is not None
        self.report.start(o.steps if use_steps else o.time_budget, self.step if use_steps else self.elapsed(), "step")
        tokens_per_step = o.seq_len * o.batch_size * o.grad_accum
        window_t, window_tokens = time.monotonic(), 0
        loss_sum, loss_n = 0.0, 0
        last_eval_step = self.step if self.resume_dir is not None else 0
        last_save_step = self.step if self.resume_dir is not None else None
        self.current_lr = self.schedule.lr(self.step, self.elapsed())
        if self.resume_dir is not None and self.done():
            reached = (
                f"step {self.step} of --steps {o.steps}"
                if o.steps is not None and self.step >= o.steps
                else f"its --time budget ({clock(self.elapsed())} trained)"
            )
            self.report.line(
                f"nothing to train: the run already reached {reached}; "
                "pass a larger --steps or --time with --resume to train further"
            )
        while not self.done() and not self._stop_agreed():
            loss = self.train_step()
            self.step += 1
            self.tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            loss_sum += loss
            loss_n += 1
            now = time.monotonic()
            finished = self.done()
            self._stop_agreed()
            if self.step % o.log_every == 0 or finished or self.stop_requested:
                rate = window_tokens / max(now - window_t, 1e-9)
                mean = loss_sum / loss_n
                record = {
                    "kind": "train",
                    "step": self.step,
                    "tokens": self.tokens_seen,
                    "loss": round(mean, 6),
                    "bpb": round(mean / LN2, 6),
                    "lr": self.current_lr,
                    "tokens_per_s": round(rate, 1),
                    "wall_time": round(self.elapsed(), 3),
                }
                if self.task is not None:  # a task's loss is per answer, not per byte of text
                    del record["bpb"]
                self.write_metrics(record)
                parts = [
                    f"step {self.step}" + (f"/{o.steps}" if use_steps else ""),
                    f"loss {mean:.4f}",
                    f"bpb {mean / LN2:.3f}",
                    f"lr {self.current_lr:.2e}",
                    f"{rate:,.0f} tok/s",
                ]
                if self.task is not None:
                    del parts[2]
                # A permanent line every --log-every steps (above the live bar on a terminal), as nanoGPT prints.
                self.report.line(
                    " | ".join(parts + [f"elapsed {clock(self.elapsed())}", f"ETA {clock(self._eta(rate))}"])
                )
                self.report.update(self.step if use_steps else self.elapsed(), parts[0].replace("step ", ""))
                window_t, window_tokens, loss_sum, loss_n = now, 0, 0.0, 0
            if self.step % o.eval_every == 0 or finished:
                self._evaluate_and_keep_best()
                last_eval_step = self.step
            if self.step % o.save_every == 0 or finished:
                self.save_checkpoint()
                last_save_step = self.step
            if self.on_step is not None:
                self.on_step(self)
        if self.stop_requested:
            if last_save_step != self.step:
                self.save_checkpoint()
            self.dist.barrier()  # no rank exits (and makes torchrun stop the job) before rank 0 has saved
            self.report.stop()
            command = f"glactl train --out {self.out} --resume"
            raise TrainingInterrupted(
                f"interrupted at step {self.step}; checkpoint saved in {self.out / 'checkpoint'}; "
                f"resume with: {command}"
            )
        if last_eval_step != self.step:
            self._evaluate_and_keep_best()
        if last_save_step != self.step:
            self.save_checkpoint()
        self.report.stop()
        summary = self.summary()
        summary["start_val_bits_per_byte"] = self.start_bpb
        summary["run_folder"] = str(self.out)
        if self.task is not None:
            summary["start_val_bits_per_byte"] = None
            summary["start_val_loss"] = self.start_bpb
        self.report.line(
            f"done: step {self.step}, {self.tokens_seen:,} tokens, {self._eval_text()} "
            f"(best {self.best_bpb:.4f}), {clock(self.elapsed())}; checkpoint in {self.out / 'checkpoint'}"
        )
        return summary

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: under torchrun all ranks must stop after the same step."""
        self.stop_requested = self.dist.any(self.stop_requested)
        return self.stop_requested

    def _eta(self, rate: float) -> float:
        o = self.options
        left = []
        if o.steps is not None and rate > 0:
            left.append((o.steps - self.step) * o.seq_len * o.batch_size * o.grad_accum / rate)
        if o.time_budget is not None:
            left.append(o.time_budget - self.elapsed())
        return max(0.0, min(left)) if left else 0.0

    def _eval_fields(self) -> dict[str, float]:
        """The last evaluation as metrics.jsonl fields: val_bpb (text), or val_loss, accuracy[, sequence_accuracy] (task)."""
        if self.task is None:
            return {"val_bpb": round(self.last_bpb, 6)}
        return dict(self.last_metrics)

    def _eval_text(self) -> str:
        if self.task is None:
            return f"val bpb {self.last_bpb:.4f}"
        m = self.last_metrics
        return f"val loss {m['val_loss']:.4f} | accuracy {m['accuracy']:.4f}" + (
            f" | sequences {m['sequence_accuracy']:.4f}" if "sequence_accuracy" in m else ""
        )

    def _evaluate_and_keep_best(self) -> None:
        bpb = self.evaluate()
        self.last_bpb = bpb
        improved = self.best_bpb is None or bpb < self.best_bpb
        if improved:
            self.best_bpb = bpb
            self.save_best()
        self.write_metrics(
            {
                "kind": "eval",
                "step": self.step,
                "tokens": self.tokens_seen,
                **self._eval_fields(),
                "lr": self.current_lr,
                "wall_time": round(self.elapsed(), 3),
            }
        )
        line = f"eval step {self.step} | {self._eval_text()} | best {self.best_bpb:.4f}" + (
            " (saved best/)" if improved else ""
        )
        self.report.line(line)  # permanent, above the live bar on a terminal


def train(
    options: TrainOptions, console: Any | None = None, on_step: Callable[[Trainer], None] | None = None
) -> dict[str, Any]:
    """Run `glactl train` with these options; returns the training summary."""
    trainer = Trainer(options, console, on_step)
    trainer.setup()
    return trainer.run()

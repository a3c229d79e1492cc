"""Set-up of a training run: device, model (new, --init-from or --resume), text or task batches, optimizer, schedule.

One function, `set_up`, builds them in a fixed order, so bad data or flags are refused before anything is timed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glactl.data.tasks import Task, TaskBatches, make_task
from glactl.data.training_data import TextBatches, TrainingData, load_training_data
from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import default_lr, default_warmup_share
from glactl.report.display import clock
from glactl.report.progress import Reporter
from glactl.runtime.devices import Precision, select_device, select_kernels, select_precision, use_kernels
from glactl.runtime.distributed import Distributed
from glactl.runtime.threads import set_threads, thread_line
from glactl.storage.checkpoint import load_model
from glactl.storage.trainer_state import load_optimizer, restore_rng
from glactl.training.options import (
    DEFAULTS,
    MODEL_DEFAULTS,
    TIME_WARMUP_FRACTION,
    TrainOptions,
    default_warmup,
    is_task_run,
    resolve,
)
from glactl.training.run_folder import claim_run_folder
from glactl.training.schedule import MIN_LR_RATIO, Schedule, continue_schedule
from glactl.training.state import Progress


@dataclass
class RunParts:
    """What a run trains with; `model` is what checkpoints save, `train_model` what steps (DDP under torchrun)."""

    commands: list[str]  # the command lines of the run, first the one that started it
    notes: list[str]  # choices made for the user (threads, dtype), said once when training starts
    device: torch.device
    precision: Precision
    threads: int
    model: LanguageModel
    train_model: torch.nn.Module
    config: ModelConfig
    init_from: str | None
    task: Task | None
    data: TrainingData | None
    data_fingerprint: dict[str, Any] | None
    source: TextBatches | TaskBatches
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    resume_dir: Path | None


def run_task(options: TrainOptions) -> Task:
    """The probe task of a task run, its settings checked (InputError)."""
    return make_task(str(options.task), options.seq_len, **(options.task_options or {}))


# Parameters that `decay_gates=False` also keeps out of weight decay: GLA's forget-gate projection (W2 and its
# bias; W1 is fused into in_proj and decays with it) and the short convolution's filters.
GATE_PARAMETERS = ("gate_proj.weight", "conv_weight")


def decays(name: str, parameter: torch.Tensor, decay_gates: bool = True) -> bool:
    """nanoGPT's rule: matrices (embeddings included) take weight decay, norms and biases do not; with
    decay_gates False neither do GATE_PARAMETERS."""
    if parameter.dim() < 2:
        return False
    return decay_gates or not name.endswith(GATE_PARAMETERS)


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


def set_up(options: TrainOptions, dist: Distributed, report: Reporter, out: Path) -> tuple[RunParts, Progress]:
    """Everything a run in the (locked) folder `out` trains with, and where it starts: step 0 or the checkpoint's."""
    o = options
    resume_dir, saved = claim_run_folder(o, out, dist.is_main)
    resolve(o, saved, dist.world)
    current = " ".join(o.command_line) if o.command_line else None
    commands = [c for c in [*saved.get("commands", []), current] if c]
    notes: list[str] = []
    device = dist.start(select_device(o.device))  # torchrun: join the group; cuda:LOCAL_RANK
    precision = select_precision(o.dtype, device)
    if precision.warning:
        sys.stderr.write(f"glactl: warning: {precision.warning}\n")
    kernels = select_kernels(o.kernels, device)
    threads, why = thread_line("training", o.threads)
    threads = set_threads(threads)
    if why:
        notes.append(why)
    torch.manual_seed(o.seed)
    built, info = _build_model(o, resume_dir)
    if resume_dir is not None or o.init_from:
        o.model = built.config.mixer
    model = use_kernels(built.to(device), kernels)
    model.train()
    train_model = dist.wrap(model)  # DDP in a torchrun job; checkpoints save model
    # data: text windows, or a probe task's generated sequences (the same loop trains on either)
    task = run_task(o) if is_task_run(o) else None
    data: TrainingData | None = None
    data_fingerprint: dict[str, Any] | None = None
    if task is not None:
        source: TextBatches | TaskBatches = TaskBatches(task, o.seed, o.eval_windows)
    else:
        try:
            with dist.main_first():  # rank 0 fills the data cache, the others then read it
                data = load_training_data(o.data, o.valid, o.seq_len, report.prepare, o.allow_binary)
        finally:
            report.end_prepare()
        notes.extend(data.messages)  # said when training starts: a refusal before it stays one line
        data_fingerprint = data.fingerprint()
        _check_same_data(o, saved, data_fingerprint, out)
        source = TextBatches(data, o.seq_len, o.seed, o.eval_windows)
    # optimizer and schedule
    decay = [p for name, p in model.named_parameters() if decays(name, p, o.decay_gates)]
    no_decay = [p for name, p in model.named_parameters() if not decays(name, p, o.decay_gates)]
    peak = o.lr if o.lr is not None else default_lr(built.config.mixer)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    warmup = o.warmup if o.warmup is not None else default_warmup(o.steps, default_warmup_share(built.config.mixer))
    timed_warmup = o.warmup is None and o.steps is None and o.time_budget is not None
    warmup_seconds = TIME_WARMUP_FRACTION * o.time_budget if timed_warmup else None
    before = None  # a resumed run's schedule so far, from trainer.json
    if resume_dir is not None and saved.get("schedule"):
        before = Schedule.from_dict(saved["schedule"], str(resume_dir / "trainer.json"))
        if o.warmup is None:  # keep the warmup the run started with (a default one follows --steps, which may change)
            warmup, warmup_seconds = before.warmup, before.warmup_seconds
    schedule = Schedule(peak, warmup, o.steps, o.time_budget, o.schedule, warmup_seconds)
    scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
    progress = Progress("val_loss" if task is not None else "val_bpb")
    if resume_dir is not None:
        load_optimizer(resume_dir, optimizer, saved)
        restore_rng(saved, str(resume_dir / "trainer.json"))
        progress.restore(saved)
        if before is not None:  # the same end: the saved curve; a new one: on from the current rate (§6)
            schedule = continue_schedule(before, schedule, progress.step, progress.elapsed_before)
            if schedule.extended_at is not None and schedule.extended_at != before.extended_at:
                notes.append(
                    f"a new end ({_end(o)}): the learning rate continues from {schedule.extended_at['lr']:.2e} "
                    f"down to {MIN_LR_RATIO * schedule.peak:.2e} at the new end (cosine), not back from the peak"
                )
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        report.line(
            f"resuming {out} from step {progress.step} ({progress.tokens_seen:,} tokens, "
            f"{clock(progress.elapsed_before)} trained)"
        )
    # last: bad data or flags are refused before any timing
    precision = _measure_auto_dtype(o, model, device, precision, dist, notes)
    parts = RunParts(
        commands,
        notes,
        device,
        precision,
        threads,
        model,
        train_model,
        built.config,
        info.get("init_from"),
        task,
        data,
        data_fingerprint,
        source,
        optimizer,
        schedule,
        scaler,
        resume_dir,
    )
    return parts, progress


def _end(options: TrainOptions) -> str:
    """The run's end as its flags say it: "--steps 80", "--time 600s" or both."""
    ends = [f"--steps {options.steps}"] if options.steps is not None else []
    ends += [f"--time {options.time_budget:g}s"] if options.time_budget is not None else []
    return " and ".join(ends)


def _build_model(options: TrainOptions, resume_dir: Path | None) -> tuple[LanguageModel, dict[str, Any]]:
    o = options
    if resume_dir is not None or o.init_from:
        model, document = load_model(resume_dir if resume_dir is not None else o.init_from, "cpu")
        model.train()
        _check_architecture(o, model.config, "--resume" if resume_dir is not None else "--init-from")
        return model, ({} if resume_dir is not None else {"init_from": document.get("path")})
    return LanguageModel(new_model_config(o)), {}


def _check_architecture(options: TrainOptions, config: ModelConfig, flag: str) -> None:
    """Architecture flags given with --resume/--init-from must agree with the checkpoint's."""
    o = options
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


def _check_same_data(options: TrainOptions, saved: dict[str, Any], now: dict[str, Any], out: Path) -> None:
    """On --resume, the same text by content as before (a run from before fingerprints is taken on trust)."""
    before = saved.get("data_fingerprint")
    if not before or not options.resume:
        return
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
            f"from its weights: --init-from {out} --out NEW_FOLDER"
        )


def _measure_auto_dtype(
    options: TrainOptions,
    model: LanguageModel,
    device: torch.device,
    precision: Precision,
    dist: Distributed,
    notes: list[str],
) -> Precision:
    """--dtype auto on a CPU with native bfloat16: the faster of float32 and bfloat16 for this model, measured here."""
    o = options
    if (o.dtype or "auto") != "auto" or device.type != "cpu" or precision.name != "bfloat16":
        return precision
    from glactl.runtime.cache import cache_root
    from glactl.runtime.devices import cpu_dtype_by_measurement

    _, speedup, cached = cpu_dtype_by_measurement(model, o.seq_len, o.batch_size, cache_root())
    speedup = dist.from_main(speedup)  # every rank trains in rank 0's choice
    name = "bfloat16" if speedup > 1.0 else "float32"
    precision = select_precision(name, device)
    notes.append(
        f"dtype auto: {name} (bfloat16 autocast measured {speedup:.2f}x the speed of float32 "
        f"for this model on this CPU{'; measured before' if cached else ''})"
    )
    return precision

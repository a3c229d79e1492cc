"""`glactl train`: train a model on local text or a Hugging Face dataset (the options, then glactl.training)."""

from __future__ import annotations

import typer

from glactl.cli.options import (
    ARCHITECTURES,
    DeviceOption,
    DtypeOption,
    KernelsOption,
    PerformerRopeOption,
    ShortConvOption,
    ThreadsOption,
    choices,
    one_spelling,
)


def train(
    ctx: typer.Context,
    arch: str | None = typer.Option(
        None, "--arch", metavar="ARCH", help=f"Architecture of a new model: {ARCHITECTURES} (default gla)."
    ),
    model: str | None = typer.Option(None, "--model", "-m", metavar="ARCH", hidden=True),  # --arch's old spelling
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    threads: ThreadsOption = None,
    kernels: KernelsOption = None,
    data: list[str] = typer.Option(
        [],
        "--data",
        help="Training text: FILE, folder, glob, wikitext-103, wikitext-2, hf:REPO[:CONFIG] or PATH:CONFIG; repeat to mix, SOURCE@WEIGHT to weigh.",
    ),
    valid: str | None = typer.Option(
        None,
        "--valid",
        help="Validation text (default: each source's validation split, or the last 1% of a local file).",
    ),
    preset: str | None = typer.Option(
        None, "--preset", metavar=choices("tiny", "small", "base"), help="Model size (default small)."
    ),
    d_model: int | None = typer.Option(None, "--d-model", help="Override the preset's width."),
    n_layers: int | None = typer.Option(None, "--n-layers", help="Override the preset's depth."),
    n_heads: int | None = typer.Option(None, "--n-heads", help="Override the preset's head count."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Training window in bytes (default 512)."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Windows per micro-batch (default 16); under torchrun the global micro-batch, split across the processes.",
    ),
    grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step (default 1)."),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="Total optimizer steps (counting steps done before --resume). A new total (or --time) on --resume "
        "continues the cosine from the current learning rate down to 10% of the peak at the new end, never back up.",
    ),
    time_budget: str | None = typer.Option(
        None, "--time", help="Wall-clock budget, e.g. 30m or 2h (counts across resumes)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: tuned per architecture)."),
    warmup: int | None = typer.Option(
        None,
        "--warmup",
        help="Warmup steps (default: 2% of --steps, 10% for GLA, kept within 10..1000 and at most a tenth of --steps; "
        "100 with --time alone).",
    ),
    schedule: str | None = typer.Option(
        None,
        "--schedule",
        metavar=choices("cosine", "constant"),
        help="After warmup: cosine down to 10% of the peak, or constant (default cosine).",
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help="AdamW weight decay on matrices (default 0.1)."
    ),
    clip: float | None = typer.Option(None, "--clip", help="Gradient norm clip (default 1.0; 0 = off)."),
    eval_every: int | None = typer.Option(None, "--eval-every", help="Evaluate every N steps (default 250)."),
    eval_windows: int | None = typer.Option(None, "--eval-windows", help="Fixed validation windows (default 64)."),
    save_every: int | None = typer.Option(None, "--save-every", help="Save checkpoint/ every N steps (default 500)."),
    log_every: int | None = typer.Option(None, "--log-every", help="Log every N steps (default 10)."),
    out: str | None = typer.Option(
        None, "--out", "-o", metavar="FOLDER", help="Run folder (default runs/<model>-<timestamp>)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its checkpoint (same data; --init-from starts a new run from its weights).",
    ),
    force: bool = typer.Option(False, "--force", help="Start over in an existing run folder."),
    init_from: str | None = typer.Option(
        None, "--init-from", help="Start from these weights with a fresh optimizer (fine-tuning)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0)."),
    allow_binary: bool | None = typer.Option(None, "--allow-binary", help="Train on files that look binary."),
    short_conv: ShortConvOption = None,
    performer_rope: PerformerRopeOption = None,
) -> None:
    """Train a model on local text or a Hugging Face dataset; Ctrl-C saves and stops."""
    from rich.console import Console

    from glactl.storage.atomic import check_output_folder
    from glactl.training.options import TrainOptions, parse_duration
    from glactl.training.trainer import train as run_training

    check_output_folder(out or "runs", f"--out {out}" if out else "the default run folder runs/ (--out to choose)")
    options = TrainOptions(
        data=list(data),
        valid=valid,
        model=one_spelling(arch, model, "--arch", "--model"),
        preset=preset,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        seq_len=seq_len,
        batch_size=batch_size,
        grad_accum=grad_accum,
        steps=steps,
        time_budget=parse_duration(time_budget) if time_budget else None,
        lr=lr,
        warmup=warmup,
        schedule=schedule,
        weight_decay=weight_decay,
        clip=clip,
        eval_every=eval_every,
        eval_windows=eval_windows,
        save_every=save_every,
        log_every=log_every,
        out=out,
        resume=resume,
        force=force,
        init_from=init_from,
        seed=seed,
        device=device,
        dtype=dtype,
        threads=threads,
        kernels=kernels,
        allow_binary=allow_binary,
        command_line=_train_command_line(ctx),
        short_conv=short_conv,
        performer_rope=performer_rope,
    )
    run_training(options, Console(stderr=True))  # logs and progress on stderr; a closed reader never stops the run


def _train_command_line(ctx: typer.Context) -> list[str]:
    """The train command as given (options set on the command line), for the checkpoint's summary."""
    words = ["glactl", "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            words.append(flag if value else (param.secondary_opts or [f"--no-{flag[2:]}"])[0])
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return words

"""The command-line interface: a thin Typer layer that parses, calls the library and prints with rich.

Errors are one line on stderr (`--debug` shows the traceback): exit 2 for bad usage or input,
1 for runtime failures, 130 for Ctrl-C. Heavy imports happen inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import typer

from glactl.errors import GlactlError
from glactl.report.display import clock, human_bytes

app = typer.Typer(
    name="glactl",
    help="Train, sample and evaluate small byte-level language models (Gated Linear Attention and friends).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps long words instead of cutting them, "--dtype [a|b]" labels
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

_debug = {"on": bool(os.environ.get("GLACTL_DEBUG"))}


# ---- help conventions (click's): TEXT/INTEGER/FLOAT labels, [a|b|c] choices, UPPER arguments, one default ----
# Applied to every parameter of every command, so options added later follow them without doing anything:
# a flag shows no label; `metavar=choices("a", "b")` lists the choices; an option whose help text names its
# default ("default ...") does not get typer's "[default: ...]" as well.
_LABELS = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", Path: "PATH"}


def choices(*names: str) -> str:
    """The help label of an option that takes one of `names`: [a|b|c], as click writes it."""
    return "[" + "|".join(names) + "]"


def _click_label(self, ctx=None) -> str | None:  # noqa: ANN001 - replaces typer's "<list[str]>" style labels
    if getattr(self, "is_flag", False):
        return None
    if self.metavar is not None:
        return self.metavar
    from typing import get_args

    annotation = getattr(getattr(self, "type_descriptor", None), "annotation", str)
    for _ in range(3):  # list[str] -> str, Optional[int] -> int
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if not inner:
            break
        annotation = inner[0]
    return _LABELS.get(annotation, "TEXT")


def _one_default(self, ctx):  # noqa: ANN001, ANN202
    """Typer's default for the help, unless the help text already states the default (or it is an off flag)."""
    if "default" in (self.help or "").lower() or (getattr(self, "is_flag", False) and not self.default):
        return None
    return _typer_default(self, ctx=ctx)


def _usage_name(self) -> str:
    name = self.display_name_raw
    name = name if self.required else f"[{name}]"
    return name + "..." if self.nargs != 1 else name


try:
    from typer import core as _typer_core

    _typer_core._TyperParameter.display_type = _click_label
    _typer_core.TyperOption.display_type_rich = _click_label
    _typer_core._TyperParameter.display_name_raw = property(lambda self: self.metavar or self.name.upper())
    _typer_core.TyperArgument._usage_display_name = _usage_name
    _typer_default = _typer_core._extract_default_help_str
    _typer_core.TyperOption._extract_default_help_str = _one_default
    _typer_core.TyperArgument._extract_default_help_str = _one_default
except (ImportError, AttributeError):  # another typer: its own labels, nothing breaks
    pass


def _print_version(value: bool) -> None:
    """--version: eager, so it answers before click asks for a command."""
    if value:
        from glactl import __version__

        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """glactl: byte-level language models that stream in constant memory."""
    if debug:
        _debug["on"] = True


def fail(message: str, code: int = 1) -> None:
    """Print one error line to stderr and exit with `code`."""
    if code == 130 and _process["on"]:
        _ignore_sigint()  # exiting after Ctrl-C: a further Ctrl-C must not turn the exit into a traceback
    try:
        sys.stderr.write(f"glactl: error: {message}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError, ValueError):  # nobody reads stderr any more: the exit code still tells
        pass
    raise SystemExit(code)


_process = {"on": False}  # main() runs as the process itself (console script, python -m glactl), not called in-process


def _ignore_sigint() -> None:
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


# Newer typer releases carry their own copy of click, whose exceptions are not click's: catch both.
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # typer that uses click itself
    _typer_click = click.exceptions
_USAGE_ERRORS = (click.exceptions.UsageError, _typer_click.UsageError)
_ABORTS = (click.exceptions.Abort, getattr(_typer_click, "Abort", click.exceptions.Abort), typer.Abort)
_CLICK_ERRORS = (click.ClickException, _typer_click.ClickException)
_NO_ARGS_IS_HELP = getattr(_typer_click, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn every failure into one line + exit code."""
    _process["on"] = argv is None
    if _process["on"]:  # our own process: keep freed memory for the next window (glactl/runtime/process_memory.py)
        from glactl.runtime.process_memory import keep_freed_memory

        keep_freed_memory()
    try:
        code = app(args=argv, prog_name="glactl", standalone_mode=False)
    except _NO_ARGS_IS_HELP as e:  # `glactl` alone: the help (rich has printed it already), exit 2 as click does
        if e.format_message().strip():
            sys.stderr.write(e.format_message().rstrip("\n") + "\n")
        raise SystemExit(e.exit_code) from None
    except _USAGE_ERRORS as e:
        hint = (
            f" (see 'glactl {e.ctx.command_path.split(' ', 1)[-1]} --help')"
            if e.ctx and " " in e.ctx.command_path
            else ""
        )
        fail(e.format_message().replace("\n", " ") + hint, 2)
    except _ABORTS:
        fail("interrupted", 130)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except GlactlError as e:
        if _debug["on"]:
            traceback.print_exc()
        fail(str(e).replace("\n", " "), e.exit_code)
    except _CLICK_ERRORS as e:
        fail(e.format_message().replace("\n", " "), e.exit_code)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other Unix tools.
        try:
            sys.stdout = open(os.devnull, "w")
        finally:
            raise SystemExit(0)
    except MemoryError:
        fail("out of memory", 1)
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback
        if _debug["on"]:
            traceback.print_exc()
        fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run with --debug for the traceback)", 1)
    if code == 130:  # a Ctrl-C that typer caught itself: still one line
        fail("interrupted", 130)
    raise SystemExit(code if isinstance(code, int) else 0)


# ---- commands ----------------------------------------------------------------------------
# Each command lives below in its own section; the library does the work.


# Help shared by several commands (labels and choices as click writes them; see "help conventions" above).
_ARCHITECTURES = "gla, transformer, performer, infinite, reflex, mingru, minlstm, lstm, gru"
_MODEL_HELP = "Run folder, checkpoint folder or shipped model name (default: the shipped gla-enwiki)."
_DEVICE_CHOICES = choices("auto", "cpu", "cuda", "mps")
_DEVICE_HELP = "Where to run; auto takes cuda, then mps, then cpu; cuda:N picks a GPU (default auto)."
_DTYPE_CHOICES = choices("auto", "float32", "bfloat16", "float16")
_DTYPE_HELP = (
    "Training precision (default auto: bfloat16 on GPUs that have it, else float16; on a CPU with native "
    "bfloat16 the faster of bfloat16 and float32 for this model, timed over a few passes once and "
    "cached, else float32; the log says which)."
)
_THREADS_HELP = (
    "CPU threads for torch (default: OMP_NUM_THREADS where set, else 1 for decoding and for scoring and "
    "training the idle cores, i.e. cores minus those other work keeps busy, said on stderr)."
)
_TRAIN_THREADS_HELP = _THREADS_HELP
_KERNEL_CHOICES = choices("torch", "fla")
_KERNELS_HELP = "GLA kernels: torch, or fla (flash-linear-attention; CUDA only, needs the fla package) (default torch)."
_UNTIL = ("word", "line", "sentence")  # glactl.inference.sampling.UNTIL_MODES (a test keeps them equal)
_CONTEXT_HELP = "Attention window in tokens (default: the model's training length); no effect on recurrent models."
_PRECISION_CHOICES = choices("auto", "float32", "bfloat16", "int8")
_PRECISION_HELP = (
    "Weights' format at run time (default auto: int8 on x86 CPUs with AVX2 or AVX512, where it costs < 0.01 "
    "bits per byte; else float32). States stay float32."
)
_COMPILE_CHOICES = choices("auto", "on", "off")
_COMPILE_HELP = (
    "Compile the decoding step ahead of time with AOTInductor, cached for later runs (default auto: for runs "
    "of 1000 or more steps of GLA, minGRU, minLSTM or Performer on CPU; falls back to eager with a note "
    "where it cannot)."
)


# ---- train ---------------------------------------------------------------------
_SHORT_CONV_HELP = (
    "Kernel size of GLA's short causal convolution on q, k, v for a new model: 0 = off, or 2..64 "
    "(default: the architecture's; models without one refuse a value above 0)."
)
_PERFORMER_ROPE_HELP = "Rotary positions on the Performer's q and k for a new model (default: the architecture's)."


@app.command()
def train(
    ctx: typer.Context,
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
    model: str | None = typer.Option(
        None, "--model", "-m", metavar="ARCH", help=f"Architecture: {_ARCHITECTURES} (default gla)."
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
        None, "--steps", help="Total optimizer steps (counting steps done before --resume)."
    ),
    time_budget: str | None = typer.Option(
        None, "--time", help="Wall-clock budget, e.g. 30m or 2h (counts across resumes)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: tuned per architecture)."),
    warmup: int | None = typer.Option(
        None,
        "--warmup",
        help="Warmup steps (default: 2% of --steps, kept within 10..1000 and at most a tenth of --steps; 100 with --time alone).",
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
    device: str | None = typer.Option(None, "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", metavar=_DTYPE_CHOICES, help=_DTYPE_HELP),
    threads: int | None = typer.Option(None, "--threads", help=_TRAIN_THREADS_HELP),
    kernels: str | None = typer.Option(None, "--kernels", metavar=_KERNEL_CHOICES, help=_KERNELS_HELP),
    allow_binary: bool | None = typer.Option(None, "--allow-binary", help="Train on files that look binary."),
    short_conv: int | None = typer.Option(None, "--short-conv", help=_SHORT_CONV_HELP),
    performer_rope: bool | None = typer.Option(None, "--performer-rope/--no-performer-rope", help=_PERFORMER_ROPE_HELP),
) -> None:
    """Train a model on local text or a Hugging Face dataset; Ctrl-C saves and stops."""
    from rich.console import Console

    from glactl.training.trainer import TrainOptions, parse_duration
    from glactl.training.trainer import train as run_training

    options = TrainOptions(
        data=list(data),
        valid=valid,
        model=model,
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


# ---- inference: generate, complete, perplexity, info -------------------------------


def _load_model(
    model: str | None,
    device: str | None,
    threads: int | None,
    context: int | None = None,
    kernels: str | None = None,
    precision: str | None = None,
    compile: str | None = None,
):  # noqa: ANN202
    """Load through the Python API, so the CLI and `glactl.load` behave alike (the CLI defaults to auto precision/compile)."""
    import time

    from glactl.api.model import load

    start = time.perf_counter()
    lm = load(
        model,
        device=device or "auto",
        threads=threads,
        context=context,
        kernels=kernels,
        precision=precision or "auto",
        compile=compile or "auto",
    )
    lm.load_seconds = time.perf_counter() - start
    _note_still_training(lm.path, lm.document)
    return lm


def _note_still_training(path: str, document: dict) -> None:
    """A run that is still training: say on stderr which step's checkpoint was loaded (it will change)."""
    from glactl.storage.model_paths import training_pid

    folder = Path(path)
    run = folder.parent if folder.name.removesuffix(".old") in ("checkpoint", "best") else folder
    pid = training_pid(run)
    if pid is not None:
        step = (document.get("training") or {}).get("steps")
        sys.stderr.write(
            f"note: {run} is still training (pid {pid}, train.lock); loaded {folder.name}/ "
            f"from step {step if step is not None else '?'}\n"
        )


def _unescape(text: str) -> str:
    r"""Turn the escapes \n, \t, \r and \\ of a command-line string into characters (like llama.cpp -e)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "ntr\\":
            out.append({"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _write(stream, text: str) -> None:  # noqa: ANN001
    """Write text and flush, falling back to UTF-8 bytes where the terminal encoding cannot hold it."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        stream.flush()
        stream.buffer.write(text.encode("utf-8", errors="replace"))
    stream.flush()


_STATE_HELP = 'Continue from a state file (written by --save-state) instead of the usual "\\n" start: the input is read after the text the state holds.'
_SAVE_STATE_HELP = {
    "generate": "Save the state after the prompt and the generated text to FILE (also when interrupted), to continue with --state.",
    "complete": "Save the state after the prefix to FILE, to continue with --state.",
    "perplexity": "Save the state after the scored text to FILE (one FILE or --data only), to continue with --state.",
}


def _check_save_state(path: str | None) -> None:
    """Refuse an unwritable --save-state FILE before any work is done."""
    if path is not None:
        from glactl.storage.state_file import check_writable

        check_writable(path)


def _saved_state_note(path: str, state) -> None:  # noqa: ANN001
    """One line on stderr (terminals only) saying where the state went."""
    if sys.stderr.isatty():
        sys.stderr.write(f"state after {state.bytes_read:,} bytes saved to {path}\n")


@contextmanager
def _saving_generation(lm, run, path: str | None) -> Iterator[None]:  # noqa: ANN001
    """Save the generation's state at the end, and after Ctrl-C or a closed pipe (what was generated so far)."""
    try:
        yield
    except (KeyboardInterrupt, BrokenPipeError):
        if path is not None:
            lm.state_of(run).save(path)  # atomic: a second Ctrl-C leaves the old file or none, never half of one
        raise
    else:
        if path is not None:
            state = lm.state_of(run)
            state.save(path)
            _saved_state_note(path, state)


@app.command()
def generate(
    prompt: str = typer.Argument("", help='Prompt text, "-" to read stdin, or @FILE (UTF-8). Empty: start from "\\n".'),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help=_MODEL_HELP),
    device: str | None = typer.Option(None, "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP),
    kernels: str | None = typer.Option(None, "--kernels", metavar=_KERNEL_CHOICES, help=_KERNELS_HELP),
    precision: str | None = typer.Option(None, "--precision", metavar=_PRECISION_CHOICES, help=_PRECISION_HELP),
    compile: str | None = typer.Option(None, "--compile", metavar=_COMPILE_CHOICES, help=_COMPILE_HELP),
    max_new_tokens: int = typer.Option(
        500, "--max-new-tokens", "-n", help="Bytes to generate per sample (no upper limit for recurrent models)."
    ),
    temperature: float = typer.Option(0.8, "--temperature", "--temp", help="Softmax temperature; 0 = greedy."),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample only among the K most probable bytes."),
    top_p: float | None = typer.Option(
        None, "--top-p", help="Nucleus sampling: smallest set of bytes with probability >= P, in (0, 1]."
    ),
    repetition_penalty: float = typer.Option(
        1.0, "--repetition-penalty", help="Penalty (>1) on bytes seen in the last 64 bytes (CTRL/HF rule)."
    ),
    num_samples: int = typer.Option(1, "--num-samples", help="Independent samples, generated as one batch."),
    seed: int | None = typer.Option(
        None, "--seed", help="Random seed: the same seed gives the same text on the same machine."
    ),
    stop: list[str] = typer.Option(
        [], "--stop", help="Stop a sample when this string appears (not printed); repeatable; \\n and \\t understood."
    ),
    no_stream: bool = typer.Option(
        False, "--no-stream", help="Print the text when generation ends instead of byte by byte."
    ),
    no_echo: bool = typer.Option(False, "--no-echo", help="Print only the generated text, not the prompt before it."),
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON document: prompt, samples, tokens, tokens_per_second, model, seed."
    ),
    context: int | None = typer.Option(None, "--context", help=_CONTEXT_HELP),
    state_file: str | None = typer.Option(None, "--state", metavar="FILE", help=_STATE_HELP),
    save_state: str | None = typer.Option(None, "--save-state", metavar="FILE", help=_SAVE_STATE_HELP["generate"]),
) -> None:
    """Generate text after a prompt, streamed as it is produced (constant memory for recurrent models)."""
    from glactl.api.model import read_prompt
    from glactl.inference.sampling import SamplingParams, check_positive

    SamplingParams(temperature, top_k, top_p, repetition_penalty).validate()
    check_positive("--max-new-tokens", max_new_tokens)
    check_positive("--num-samples", num_samples, 1024)
    _check_save_state(save_state)
    if save_state is not None and num_samples != 1:
        from glactl.errors import InputError

        raise InputError("--save-state needs --num-samples 1 (it saves one text to continue)")
    prompt_bytes = read_prompt(prompt)
    from glactl.runtime.devices import thread_line

    threads = thread_line("decoding", threads)[0]  # 1 unless --threads: byte steps are too small to share
    lm = _load_model(model, device, threads, context, kernels, precision, compile)
    start_state = lm.load_state(state_file) if state_file is not None else None
    run = lm.stream(
        prompt_bytes,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        num_samples=num_samples,
        seed=seed,
        stop=[_unescape(s) for s in stop],
        keep_text=json_out or no_stream or num_samples > 1,
        state=start_state,
        keep_state=save_state is not None,
    )
    with _saving_generation(lm, run, save_state):
        _print_generation(run, prompt_bytes, lm, num_samples, no_stream, no_echo, json_out)


def _print_generation(
    run, prompt_bytes: bytes, lm, num_samples: int, no_stream: bool, no_echo: bool, json_out: bool
) -> None:  # noqa: ANN001
    """Print a generation as it runs: streamed, all at the end, or as one JSON document."""
    import json

    prompt_text = prompt_bytes.decode("utf-8", errors="replace")
    out, tty = sys.stdout, sys.stdout.isatty()
    if json_out:
        for _ in run:
            pass
        stats = run.stats
        document = {
            "prompt": prompt_text,
            "samples": stats.samples,
            "tokens": stats.tokens,
            "tokens_per_second": stats.tokens_per_second,
            "model": lm.path,
            "seed": stats.seed,
        }
        _write(out, json.dumps(document) + "\n")
        return
    # Prompt + continuation, as HF and nanoGPT print it (--no-echo: the continuation alone); every sample
    # ends with a newline. On a terminal the prompt is bold.
    shown = "" if no_echo else (f"\x1b[1m{prompt_text}\x1b[0m" if tty else prompt_text)
    if num_samples == 1 and not no_stream:
        _write(out, shown)
        last = prompt_text[-1:] if shown else ""
        for _, piece in run:
            _write(out, piece)
            last = piece[-1:] or last
        _write(out, "" if last == "\n" else "\n")
    else:
        for _ in run:
            pass
        for i, text in enumerate(run.stats.samples):
            if num_samples > 1:
                _write(out, f"--- sample {i + 1}/{num_samples} ---\n")
            plain = (prompt_text if shown else "") + text
            _write(out, shown + text + ("" if plain.endswith("\n") else "\n"))
    if tty:
        stats = run.stats
        from glactl.runtime.devices import plural

        sys.stderr.write(
            f"load {getattr(lm, 'load_seconds', 0.0):.2f} s ({lm.precision}); "
            f"{stats.tokens} tokens in {stats.seconds:.2f} s ({stats.tokens_per_second:.1f} tokens/s, "
            f"{plural(lm.threads or 1, 'thread')}), state {human_bytes(stats.state_bytes)}, seed {stats.seed}\n"
        )


@app.command()
def complete(
    prefix: str = typer.Argument(..., help='Text to continue, "-" to read stdin, or @FILE (UTF-8).'),
    n: int = typer.Option(5, "--n", "-n", help="How many completions."),
    beam: int | None = typer.Option(None, "--beam", help="Beam width (default 4 x N)."),
    until: str = typer.Option(
        "word",
        "--until",
        metavar=choices(*_UNTIL),
        help="Where a completion ends: at the end of a word, of a line (newline), or of a sentence (. ! ? then a space or newline; a line without them ends at its newline, shown as \\n).",
    ),
    max_chars: int = typer.Option(40, "--max-chars", help="Longest completion in characters."),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help=_MODEL_HELP),
    device: str | None = typer.Option(None, "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP),
    precision: str | None = typer.Option(None, "--precision", metavar=_PRECISION_CHOICES, help=_PRECISION_HELP),
    compile: str | None = typer.Option(None, "--compile", metavar=_COMPILE_CHOICES, help=_COMPILE_HELP),
    json_out: bool = typer.Option(
        False,
        "--json",
        help='Print JSON: {"prefix", "completions": [{"text", "probability", "logprob"}], "until", "model", "seconds"}.',
    ),
    state_file: str | None = typer.Option(None, "--state", metavar="FILE", help=_STATE_HELP),
    save_state: str | None = typer.Option(None, "--save-state", metavar="FILE", help=_SAVE_STATE_HELP["complete"]),
) -> None:
    """The N most probable continuations of a prefix (beam search over bytes), with their probabilities.

    Ranked by total probability, the byte that ends the word/line/sentence included and no
    length normalisation; leading whitespace does not end a word; completions are distinct.
    """
    import json
    import time

    from glactl.api.model import read_prompt
    from glactl.errors import InputError
    from glactl.inference.sampling import UNTIL_MODES, check_positive

    check_positive("--n", n, 1000)
    if beam is not None:
        check_positive("--beam", beam, 4096)
    check_positive("--max-chars", max_chars, 100_000)
    if until not in UNTIL_MODES:
        raise InputError(f"--until must be one of {', '.join(UNTIL_MODES)}, got {until!r}")
    _check_save_state(save_state)
    prefix_bytes = read_prompt(prefix)
    if prefix == "-" and prefix_bytes.endswith(b"\n"):  # `echo text | glactl complete -`: echo's newline is not typed
        prefix_bytes = prefix_bytes[:-2] if prefix_bytes.endswith(b"\r\n") else prefix_bytes[:-1]
    from glactl.runtime.devices import thread_line

    lm = _load_model(model, device, thread_line("decoding", threads)[0], precision=precision, compile=compile)
    start_state = lm.load_state(state_file) if state_file is not None else None
    start = time.perf_counter()
    if save_state is not None:  # read the prefix once: complete from its state, and save that state
        after_prefix = lm.read(prefix_bytes, state=start_state)
        completions = lm.complete(b"", n=n, beam=beam, until=until, max_chars=max_chars, state=after_prefix)
        after_prefix.save(save_state)
        _saved_state_note(save_state, after_prefix)
    else:
        completions = lm.complete(prefix_bytes, n=n, beam=beam, until=until, max_chars=max_chars, state=start_state)
    seconds = time.perf_counter() - start
    prefix_text = prefix_bytes.decode("utf-8", errors="replace")
    if json_out:
        rows = [{"text": c.text, "probability": c.probability, "logprob": c.logprob} for c in completions]
        document = {"prefix": prefix_text, "completions": rows, "until": until, "model": lm.path, "seconds": seconds}
        _write(sys.stdout, json.dumps(document) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"completions of {json.dumps(prefix_text[-60:], ensure_ascii=False)} (until {until})")
    table.add_column("#", justify="right")
    table.add_column("completion")
    table.add_column("probability", justify="right")
    table.add_column("log-prob", justify="right")
    for i, c in enumerate(completions, 1):
        table.add_row(
            str(i), Text(json.dumps(c.text, ensure_ascii=False)), f"{100 * c.probability:.2f}%", f"{c.logprob:.3f}"
        )
    console = Console()
    console.print(table)
    if not completions:
        console.print("no completion found within --max-chars", style="yellow")


_PERPLEXITY_HELP = """Score files (or a dataset split) with the model: bits per byte and char, byte and word perplexity.

Each file streams through the model in --window byte pieces with the state carried, so every byte is conditioned on the whole file before it (attention models: a sliding --context window); the first byte is conditioned on "\\n". Word perplexity follows lm-evaluation-harness: words = len(re.split(r"\\s+", text)). Non-UTF-8 bytes are scored as bytes; characters are counted on the text decoded with replacement (a note says so).

--json prints one document: {"model": PATH, "window": N, "context": N or null, "files": {NAME: METRICS, ...}, "total": METRICS, "notes": [TEXT, ...]}

NAME is the file path (or DATA:SPLIT); METRICS has exactly the keys bits_per_byte, bits_per_char, byte_perplexity, word_perplexity, bytes, chars, words, tokens_per_second (a perplexity too large for a float is null).
"""


@app.command(help=_PERPLEXITY_HELP)
def perplexity(
    files: list[str] = typer.Argument(None, metavar="FILES", help='Text files to score ("-" reads stdin).'),
    data: str | None = typer.Option(
        None, "--data", help="Score a split of a dataset instead (same names as train --data)."
    ),
    split: str = typer.Option(
        "test", "--split", metavar=choices("train", "validation", "test"), help="Split of --data."
    ),
    window: int = typer.Option(4096, "--window", help="Bytes read and scored per forward call."),
    context: int | None = typer.Option(None, "--context", help=_CONTEXT_HELP),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help=_MODEL_HELP),
    device: str | None = typer.Option(None, "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP),
    kernels: str | None = typer.Option(None, "--kernels", metavar=_KERNEL_CHOICES, help=_KERNELS_HELP),
    precision: str | None = typer.Option(None, "--precision", metavar=_PRECISION_CHOICES, help=_PRECISION_HELP),
    compile: str | None = typer.Option(None, "--compile", metavar=_COMPILE_CHOICES, help=_COMPILE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document (shape above)."),
    state_file: str | None = typer.Option(
        None,
        "--state",
        metavar="FILE",
        help="Score every FILE as the continuation of this state file's text (its first byte too, from the stored logits).",
    ),
    save_state: str | None = typer.Option(None, "--save-state", metavar="FILE", help=_SAVE_STATE_HELP["perplexity"]),
) -> None:
    import json
    import math

    from glactl.errors import InputError
    from glactl.inference.sampling import check_positive
    from glactl.inference.scoring import Score, check_file, score_file, score_split, state_growth

    check_positive("--window", window)
    paths = list(dict.fromkeys(files or []))
    paths = ["/dev/stdin" if p == "-" and os.path.exists("/dev/stdin") else p for p in paths]  # "-": score stdin
    if not paths and data is None:
        raise InputError("give one or more FILES or --data NAME (see 'glactl perplexity --help')")
    for path in paths:
        check_file(path)
    _check_save_state(save_state)
    if save_state is not None and len(paths) + (data is not None) != 1:
        raise InputError("--save-state needs exactly one FILE or --data (it saves the state after that text)")
    from glactl.runtime.devices import thread_line

    threads, thread_note = thread_line("scoring", threads)
    lm = _load_model(model, device, threads, context, kernels, precision, compile)
    if (compile or "auto").lower() == "on":
        from glactl.inference.precision import note

        note("--compile on: perplexity reads whole windows, whose time is matrix products; it runs eager")
    start_state = lm.load_state(state_file) if state_file is not None else None
    continuation = {
        "start_reading": start_state.reading if start_state is not None else None,
        "keep_state": save_state is not None,
    }
    notes: list[str] = []
    short, long = state_growth(lm.model, 10, 100)
    if long > short:
        if lm.config.context is None:
            notes.append(
                f"{lm.config.mixer}: attention over the whole file (no --context): memory grows with file length"
            )
        else:
            notes.append(f"{lm.config.mixer}: sliding context of {lm.config.context} tokens")
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    err = Console(stderr=True)
    show = err.is_terminal and not json_out
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not show,
    )
    scores = {}
    import time

    def advance(task: int, started: float):  # noqa: ANN202
        """Progress by time: a bar appears once scoring has taken about a second, whatever the size."""

        def step(k: int) -> None:
            progress.advance(task, k)
            if time.monotonic() - started > 1.0:
                progress.update(task, visible=True)

        return step

    with progress:
        for path in paths:
            size = os.path.getsize(path)
            task = progress.add_task(Path(path).name, total=size or None, visible=False)
            scores[path] = score_file(lm.model, path, window, advance(task, time.monotonic()), **continuation)
        if data is not None:
            task = progress.add_task(f"{data}:{split}", total=None, visible=False)
            scores[f"{data}:{split}"] = score_split(
                lm.model, data, split, window, advance(task, time.monotonic()), **continuation
            )
    if save_state is not None:
        from glactl.storage.state_file import State

        final = State(next(iter(scores.values())).final, lm.state_owner())
        final.save(save_state)
        _saved_state_note(save_state, final)
    for name, score in scores.items():
        notes.extend(f"{name}: {note}" for note in score.notes)
    if thread_note:  # said once, after the work (so an error before it stays one line)
        err.print(thread_note, highlight=False, soft_wrap=True)
    total = sum(scores.values(), Score())

    def clean(metrics: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}

    if json_out:
        document = {
            "model": lm.path,
            "window": window,
            "context": lm.config.context,
            "files": {name: clean(s.metrics()) for name, s in scores.items()},
            "total": clean(total.metrics()),
            "notes": notes,
        }
        _write(sys.stdout, json.dumps(document) + "\n")
        return
    from glactl.report.display import fit_columns, print_table, run_name

    # One row per file (names fold, numbers never do); four decimals on every score; counts and speed as integers.
    def score_text(value: float) -> str:  # four decimals, in e-notation once a perplexity passes a million
        return f"{value:.4e}" if abs(value) >= 1e6 else f"{value:,.4f}"

    columns = {
        "bits_per_byte": ("bits/byte", score_text),
        "bits_per_char": ("bits/char", score_text),
        "byte_perplexity": ("byte ppl", score_text),
        "word_perplexity": ("word ppl", score_text),
        "bytes": ("bytes", "{:,}".format),
        "words": ("words", "{:,}".format),
        "tokens_per_second": ("bytes/s", "{:,.0f}".format),
    }
    named = list(scores.items()) + ([("total", total)] if len(scores) > 1 else [])
    header = ["file"] + [label for label, _ in columns.values()]
    rows = [[name] + [fmt(score.metrics()[key]) for key, (_, fmt) in columns.items()] for name, score in named]
    screen = Console()
    header, rows, dropped = fit_columns(header, rows, screen.width, drop_order=(7, 6, 2, 5), flexible=0)
    print_table(screen, f"perplexity of {run_name(lm.path)} (window {window})", header, rows, flexible=0)
    if dropped:
        notes.append(f"left out at this width: {', '.join(dropped)} (all metrics with --json)")
    for note in notes:
        err.print(
            f"note: {note}", style="yellow", highlight=False, soft_wrap=True
        )  # one line per note, even when piped


@app.command()
def info(
    model_arg: str | None = typer.Argument(None, metavar="MODEL", help=_MODEL_HELP),
    model: str | None = typer.Option(None, "--model", "-m", metavar="MODEL", help="Same as MODEL."),
    device: str | None = typer.Option(None, "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the description as one JSON document."),
) -> None:
    """Describe a model: architecture, parameters, state size per token of context, training summary, files."""
    import json

    from glactl.errors import InputError

    if model_arg and model and model_arg != model:
        raise InputError("give the model once: MODEL or --model, not both")
    if _names_state_file(model_arg or model):
        _describe_state_file(model_arg or model, json_out)
        return
    lm = _load_model(model_arg or model, device, threads)
    described = lm.info()
    if json_out:
        _write(sys.stdout, json.dumps(described, default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    arch, state = described["architecture"], described["state"]
    table = Table(title=f"{described['model']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    from glactl.runtime.devices import plural

    table.add_row(
        "architecture",
        f"{arch['mixer']}: d_model {arch['d_model']}, {plural(arch['n_layers'], 'layer')}, "
        f"{plural(arch['n_heads'], 'head')}, "
        f"context {arch['context'] if arch['context'] is not None else 'unlimited'}",
    )
    table.add_row("parameters", f"{described['parameters']:,}")
    if state["growth"] == "constant":
        growth = f"constant: {human_bytes(state['bytes_after_100_tokens'])} whatever the context length"
    else:
        growth = (
            f"growing: {state['bytes_per_token']:,.0f} bytes per token of context "
            f"({human_bytes(state['bytes_after_10_tokens'])} at 10 tokens, {human_bytes(state['bytes_after_100_tokens'])} at 100)"
        )
        if state["context"] is not None:
            growth += f", up to the {state['context']}-token window"
    table.add_row("state", growth)
    table.add_row("weights", f"{described.get('weights_dtype', 'float32')}")
    for what, value in _training_rows(described["training"], described["model"]):
        table.add_row(what, value)
    for name, size in described["files"].items():
        table.add_row(f"file {name}", human_bytes(size))
    Console().print(table)


def _training_rows(training: dict, path: str) -> list[tuple[str, str]]:
    """The training summary of config.json as one fact per row, numbers rounded (info's text view)."""
    from glactl.storage.model_paths import training_pid

    if not training:
        return [("training", "no training summary in config.json")]
    folder = Path(path)
    run = folder.parent if folder.name.removesuffix(".old") in ("checkpoint", "best") else folder

    rows: list[tuple[str, str]] = []
    steps, planned, budget = training.get("steps"), training.get("steps_planned"), training.get("time_budget_seconds")
    done = f"{steps:,} steps" if isinstance(steps, int) else "?"
    if isinstance(planned, int) and isinstance(steps, int):
        done = f"{steps:,} of {planned:,} steps"
    if budget:
        done += f", {clock(training.get('wall_time_seconds', 0))} of a {clock(budget)} budget"
    elif training.get("wall_time_seconds") is not None:
        done += f" in {clock(training['wall_time_seconds'])}"
    pid = training_pid(run)
    unfinished = (
        isinstance(planned, int)
        and isinstance(steps, int)
        and steps < planned
        and not (budget and training.get("wall_time_seconds", 0) >= budget)
    )
    if pid is not None:
        done += f" (training in progress, pid {pid})"
    elif unfinished:
        done += f" (unfinished; continue with: glactl train --out {run} --resume)"
    rows.append(("trained", done))
    if training.get("tokens_seen") is not None:
        rows.append(("tokens seen", f"{training['tokens_seen']:,}"))
    sources = training.get("data") or []
    sources = [sources] if isinstance(sources, (str, dict)) else sources if isinstance(sources, list) else []
    # config.json is user data: a source may be a bare name rather than train's {"source": ..., "weight": ...}
    sources = [s if isinstance(s, dict) else {"source": s} for s in sources]
    total = sum(s["weight"] for s in sources if isinstance(s.get("weight"), (int, float))) or 1.0
    for source in sources:
        size = source.get("train_bytes")
        facts = [human_bytes(size) + " of training text"] if isinstance(size, (int, float)) else []
        if len(sources) > 1 and isinstance(source.get("weight"), (int, float)):
            facts.append(f"{100 * source['weight'] / total:.1f}% of the batches")
        rows.append(("data", f"{source.get('source')}" + (f" ({', '.join(facts)})" if facts else "")))
    if training.get("task"):
        task = training["task"]
        rows.append(("task", ", ".join(f"{k} {v}" for k, v in task.items()) if isinstance(task, dict) else str(task)))
    elif training.get("data"):
        rows.append(
            ("validation", training.get("valid") or "each source's validation split (or the last 1% of a local file)")
        )
    for key, label in (("val_bits_per_byte", "val bits per byte"), ("val_loss", "val loss")):
        if isinstance(training.get(key), (int, float)):
            best = training.get(f"best_{key}")
            rows.append(
                (label, f"{training[key]:.4f}" + (f" (best {best:.4f})" if isinstance(best, (int, float)) else ""))
            )
    if isinstance(training.get("accuracy"), (int, float)):
        rows.append(("accuracy", f"{100 * training['accuracy']:.2f}%"))
    if training.get("seq_len") is not None:
        accum = f" x {training['grad_accum']} accumulated" if (training.get("grad_accum") or 1) > 1 else ""
        rows.append(("batch", f"{training.get('batch_size')} windows of {training['seq_len']} bytes{accum}"))
    if isinstance(training.get("lr"), (int, float)):
        rows.append(("peak lr", f"{training['lr']:g}"))
    if training.get("seed") is not None:
        rows.append(("seed", str(training["seed"])))
    if training.get("device"):
        from glactl.runtime.devices import plural

        threads = f", {plural(training['threads'], 'thread')}" if isinstance(training.get("threads"), int) else ""
        rows.append(("trained on", f"{training['device']}, {training.get('dtype', '?')}{threads}"))
    if training.get("init_from"):
        rows.append(("init from", str(training["init_from"])))
    if training.get("command"):
        rows.append(("command", str(training["command"])))
    for command in training.get("resumed_with") or []:
        rows.append(("resumed with", str(command)))
    if training.get("glactl_version"):
        rows.append(("glactl version", str(training["glactl_version"])))
    return rows


def _names_state_file(target: str | None) -> bool:
    """A file that is not a checkpoint's own file nor a pickle: `info` describes it as a saved state (or says why not)."""
    if not target or not Path(target).is_file():
        return False
    from glactl.storage.state_file import is_state_file

    name = Path(target).name
    return is_state_file(target) or (
        name not in ("model.safetensors", "config.json")
        and Path(target).suffix.lower() not in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")
    )


def _describe_state_file(path: str, json_out: bool) -> None:
    """`glactl info STATE_FILE`: what the file holds and which model it belongs to, read from its header."""
    import json

    from glactl.storage.state_file import describe

    described = describe(path)
    if json_out:
        _write(sys.stdout, json.dumps(described) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path} (glactl saved state)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    model = described["model"]
    table.add_row(
        "model",
        f"{model['mixer']}: config.json sha256 {model['config_sha256'][:16]}, "
        f"model.safetensors sha256 {model['weights_sha256'][:16]}",
    )
    if described["windowed"]:
        window = (
            "unlimited"
            if described["context"] is None
            else f"{described['context']} tokens ({described['sink_tokens']} sinks)"
        )
        table.add_row("attention window", window)
    table.add_row("bytes read", f'{described["bytes_read"]:,} (after the "\\n" start)')
    table.add_row("text ends with", json.dumps(described["text_ends_with"], ensure_ascii=False))
    table.add_row("precision", described["precision"])
    table.add_row(
        "size", f"{human_bytes(described['file_bytes'])} file, {human_bytes(described['state_bytes'])} of state"
    )
    table.add_row("format", f"version {described['format_version']}, written by glactl {described['glactl_version']}")
    Console().print(table)


# ---- compare ---------------------------------------------------------------------
@app.command()
def compare(
    models: str = typer.Option(
        ...,
        "--models",
        "-m",
        metavar="LIST",
        help=f"Comma-separated architectures, e.g. gla,transformer; any of: {_ARCHITECTURES}.",
    ),
    data: list[str] = typer.Option([], "--data", help="Training text as for train (repeatable); default wikitext-103."),
    valid: str | None = typer.Option(
        None, "--valid", help="Validation text (default: each source's validation split)."
    ),
    preset: str = typer.Option(
        "small", "--preset", metavar=choices("tiny", "small", "base"), help="Model size for every model."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps per model."),
    time_budget: str | None = typer.Option(None, "--time", help="Wall-clock budget per model, e.g. 10m."),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        help="Training window in bytes (default 512; with --task: mqar 64, selective-copy 256, sort twice --sort-count).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Windows per optimizer step."),
    task: str = typer.Option(
        "lm",
        "--task",
        metavar=choices("lm", "mqar", "selective-copy", "sort"),
        help="What to train and score: lm (language modelling on --data; default lm), or a synthetic probe scored by accuracy: mqar (associative recall), selective-copy, sort.",
    ),
    pairs: int | None = typer.Option(None, "--pairs", help="--task mqar: key-value pairs per sequence (default 8)."),
    sort_count: int | None = typer.Option(
        None, "--sort-count", help="--task sort: how many values to sort (default 100)."
    ),
    sort_range: int | None = typer.Option(
        None,
        "--sort-range",
        help="--task sort: how many distinct values they are drawn from, with repeats (default 16).",
    ),
    short_conv: int | None = typer.Option(None, "--short-conv", help=_SHORT_CONV_HELP),
    performer_rope: bool | None = typer.Option(None, "--performer-rope/--no-performer-rope", help=_PERFORMER_ROPE_HELP),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for every run (default 0)."),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Repeat every run with these seeds (e.g. 0,1,2) and report mean and spread."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate for all models (default: each architecture's tuned one)."
    ),
    contexts: str = typer.Option(
        "1k,8k,32k", "--contexts", help="Context lengths in bytes for the generation speed and state measurements."
    ),
    eval_every: int | None = typer.Option(
        None, "--eval-every", help="Evaluate every N steps (default: a tenth of --steps, or 100)."
    ),
    eval_windows: int | None = typer.Option(
        None,
        "--eval-windows",
        help="Fixed validation windows (default 64); with --task, the size of the fixed test set (default 256).",
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Prompt for the samples (a string, - or @path; default: a line of the validation text)."
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        metavar="FOLDER",
        help="Output folder (default compare/<preset>-<budget>, or compare/<task>-<preset>-<budget>).",
    ),
    force: bool = typer.Option(False, "--force", help="Redo runs that are already finished."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the results (results.json's entries) as one JSON document."
    ),
    threads: int | None = typer.Option(None, "--threads", help=_TRAIN_THREADS_HELP),
    device: str = typer.Option("auto", "--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP),
    dtype: str | None = typer.Option(None, "--dtype", metavar=_DTYPE_CHOICES, help=_DTYPE_HELP),
    precision: str | None = typer.Option(
        None,
        "--precision",
        metavar=_PRECISION_CHOICES,
        help="Weights' format for the generation speed columns and the samples, as for generate (default auto).",
    ),
    compile: str | None = typer.Option(
        None,
        "--compile",
        metavar=_COMPILE_CHOICES,
        help="Compiled decoding step for the generation speed columns, as for generate (default auto: for runs that trained 5 minutes or more).",
    ),
) -> None:
    """Train several architectures on the same data and budget, then compare speed, memory and bits per byte."""
    from rich.console import Console

    from glactl.api.model import read_prompt
    from glactl.compare.runner import (
        CompareOptions,
        markdown_table,
        parse_contexts,
        parse_models,
        parse_seeds,
        run_compare,
    )
    from glactl.errors import InputError
    from glactl.training.trainer import parse_duration

    if seed is not None and seeds is not None:
        raise InputError("give --seed or --seeds, not both")
    options = CompareOptions(
        models=parse_models(models),
        data=list(data),
        valid=valid,
        preset=preset,
        steps=steps,
        time_budget=parse_duration(time_budget) if time_budget else None,
        seq_len=seq_len,
        batch_size=batch_size,
        task=task,
        pairs=pairs,
        sort_count=sort_count,
        sort_range=sort_range,
        short_conv=short_conv,
        performer_rope=performer_rope,
        seeds=parse_seeds(seeds) if seeds is not None else [seed if seed is not None else 0],
        spread=seeds is not None,
        lr=lr,
        contexts=parse_contexts(contexts),
        eval_every=eval_every,
        eval_windows=eval_windows,
        prompt=read_prompt(prompt) if prompt is not None else None,
        out=out,
        force=force,
        threads=threads,
        device=device,
        dtype=dtype,
        precision=precision or "auto",
        compile=compile or "auto",
        command_line=["glactl", *sys.argv[1:]],
    )
    entries = run_compare(options, Console(stderr=True))  # progress and logs on stderr, results on stdout
    screen = Console()
    if json_out:
        import json

        _write(sys.stdout, json.dumps(entries) + "\n")
    elif screen.is_terminal:
        from glactl.compare.runner import terminal_table
        from glactl.report.display import print_table

        header, rows, dropped = terminal_table(entries, screen.width)
        print_table(screen, "glactl compare", header, rows)
        if dropped:
            Console(stderr=True).print(
                f"left out at this width: {', '.join(dropped)} (all columns in results.md, or --json)",
                highlight=False,
                soft_wrap=True,
            )
    else:
        typer.echo(markdown_table(entries))

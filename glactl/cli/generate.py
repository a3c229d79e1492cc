"""`glactl generate`: sample text after a prompt, streamed, all at the end or as JSON; --state/--save-state continue it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from glactl.cli.common import check_save_state, load_model, saved_state_note, write
from glactl.cli.options import (
    CompileOption,
    ContextOption,
    DeviceOption,
    KernelsOption,
    ModelOption,
    PrecisionOption,
    StateOption,
    ThreadsOption,
)
from glactl.report.display import human_bytes


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


@contextmanager
def _saving_generation(lm, run, path: str | None) -> Iterator[None]:  # noqa: ANN001
    """Save the generation's state at the end, and after Ctrl-C or a closed pipe (what was generated so far)."""
    try:
        yield
    except (KeyboardInterrupt, BrokenPipeError):
        if path is not None:
            state = lm.state_of(run)
            state.save(path)  # atomic: a second Ctrl-C leaves the old file or none, never half of one
            saved_state_note(path, state, "interrupted: ")
        raise
    else:
        if path is not None:
            state = lm.state_of(run)
            state.save(path)
            saved_state_note(path, state)


def generate(
    prompt: str = typer.Argument("", help='Prompt text, "-" to read stdin, or @FILE (UTF-8). Empty: start from "\\n".'),
    model: ModelOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
    kernels: KernelsOption = None,
    precision: PrecisionOption = None,
    compile: CompileOption = None,
    context: ContextOption = None,
    state_file: StateOption = None,
    save_state: str | None = typer.Option(
        None,
        "--save-state",
        metavar="FILE",
        help="Save the state after the prompt and the generated text to FILE (also when interrupted), to continue with --state.",
    ),
    max_new_tokens: int = typer.Option(
        500,
        "--max-new-tokens",
        "-n",
        help="How many bytes to generate per sample (a token is one byte; no upper limit for recurrent models).",
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
        False,
        "--json",
        help="Print one JSON document: prompt, samples, tokens, tokens_per_second, compile_seconds, model, "
        "precision, compile (compiled or eager), seed.",
    ),
) -> None:
    """Generate text after a prompt, streamed as it is produced (constant memory for recurrent models)."""
    from glactl.api.prompts import read_prompt
    from glactl.inference.sampling import SamplingParams, check_positive

    SamplingParams(temperature, top_k, top_p, repetition_penalty).validate()
    check_positive("--max-new-tokens", max_new_tokens)
    check_positive("--num-samples", num_samples, 1024)
    check_save_state(save_state)
    if save_state is not None and num_samples != 1:
        from glactl.errors import InputError

        raise InputError("--save-state needs --num-samples 1 (it saves one text to continue)")
    prompt_bytes = read_prompt(prompt)
    from glactl.runtime.threads import thread_choices

    # 1 and every core for auto to time (one count where --threads gives it); 1 where auto does not measure
    lm = load_model(model, device, thread_choices("decoding", threads)[0], context, kernels, precision, compile)
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
            "compile_seconds": stats.compile_seconds,
            "model": lm.path,
            "precision": lm.precision,
            "compile": _decode_path(stats),
            "seed": stats.seed,
        }
        write(out, json.dumps(document) + "\n")
        return
    # Prompt + continuation, as HF and nanoGPT print it (--no-echo: the continuation alone); every sample
    # ends with a newline. On a terminal the prompt is bold. The prompt is echoed with the first piece, so
    # what the start prints on stderr (a compile note) comes on its own line before it.
    shown = "" if no_echo else (f"\x1b[1m{prompt_text}\x1b[0m" if tty else prompt_text)
    if num_samples == 1 and not no_stream:
        from contextlib import closing
        from itertools import chain

        last = prompt_text[-1:] if shown else ""
        with closing(iter(run)) as pieces:  # closed also on an error: it holds torch's inference mode while open
            first = next(pieces, None)  # reads the prompt and readies the decode step
            write(out, shown)
            for _, piece in chain([first] if first is not None else [], pieces):
                write(out, piece)
                last = piece[-1:] or last
        write(out, "" if last == "\n" else "\n")
    else:
        for _ in run:
            pass
        for i, text in enumerate(run.stats.samples):
            if num_samples > 1:
                write(out, f"--- sample {i + 1}/{num_samples} ---\n")
            plain = (prompt_text if shown else "") + text
            write(out, shown + text + ("" if plain.endswith("\n") else "\n"))
    if tty:
        sys.stderr.write(_stats_line(run.stats, lm) + "\n")


def _decode_path(stats) -> str:  # noqa: ANN001
    """How the decode steps ran: "compiled" (--compile) or "eager"."""
    return "compiled" if stats.compiled else "eager"


def _stats_line(stats, lm) -> str:  # noqa: ANN001
    """The summary a terminal gets on stderr: load, precision and decode path, compile time, speed, state, seed."""
    from glactl.runtime.threads import plural

    compiled = f"; compile {stats.compile_seconds:.2f} s" if stats.compile_seconds > 0 else ""
    return (
        f"load {getattr(lm, 'load_seconds', 0.0):.2f} s ({lm.precision}, {_decode_path(stats)}){compiled}; "
        f"{stats.tokens} tokens in {stats.seconds:.2f} s ({stats.tokens_per_second:.1f} tokens/s, "
        f"{plural(lm.threads or 1, 'thread')}), state {human_bytes(stats.state_bytes)}, seed {stats.seed}"
    )

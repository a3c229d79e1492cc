"""The glactl Typer app: click-style help labels, the root options, main()'s exit codes and the commands' registration.

Errors are one line on stderr (`--debug` shows the traceback): exit 2 for bad usage or input, 1 for runtime failures, 130 for Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click
import typer

from glactl.cli.common import PROCESS
from glactl.cli.compare import compare
from glactl.cli.complete import complete
from glactl.cli.generate import generate
from glactl.cli.info import info
from glactl.cli.perplexity import PERPLEXITY_HELP, perplexity
from glactl.cli.serve import serve
from glactl.cli.train import train
from glactl.errors import GlactlError

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
# a flag shows no label; `metavar=choices("a", "b")` (glactl/cli/options.py) lists the choices; an option whose
# help text names its default ("default ...") does not get typer's "[default: ...]" as well.
_LABELS = {int: "INTEGER", float: "FLOAT", str: "TEXT", bool: "BOOLEAN", Path: "PATH"}


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
        from glactl.version import __version__

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
    if code == 130 and PROCESS["on"]:
        _ignore_sigint()  # exiting after Ctrl-C: a further Ctrl-C must not turn the exit into a traceback
    try:
        sys.stderr.write(f"glactl: error: {message}\n")
        sys.stderr.flush()
    except (BrokenPipeError, OSError, ValueError):  # nobody reads stderr any more: the exit code still tells
        pass
    raise SystemExit(code)


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
    PROCESS["on"] = argv is None
    if PROCESS["on"]:  # our own process: keep freed memory for the next window (glactl/runtime/process_memory.py)
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


# ---- commands: one module each (glactl/cli/<command>.py), listed in --help in this order ----
app.command()(train)
app.command()(generate)
app.command()(complete)
app.command(help=PERPLEXITY_HELP)(perplexity)
app.command()(info)
app.command()(compare)
app.command()(serve)

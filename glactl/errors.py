"""The tool's own error types: the CLI turns them into one line on stderr and an exit code."""


class GlactlError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(GlactlError):
    """Bad usage or bad input (a file, a flag value, a checkpoint): exit 2."""

    exit_code = 2


class RunFailure(GlactlError):
    """A runtime failure that is not the user's input (disk full, NaN loss): exit 1."""

    exit_code = 1

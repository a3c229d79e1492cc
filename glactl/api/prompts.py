"""Text arguments as bytes: a prompt's syntax (the text, `-` for stdin, `@path`), and a str that names a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

from glactl.errors import InputError

MAX_PROMPT_BYTES = 64 << 20


def read_prompt(argument: str, stdin: BinaryIO | None = None) -> bytes:
    """A prompt argument as bytes: the string itself, `-` for stdin, or `@path` for a file (must be UTF-8)."""
    if argument == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read(MAX_PROMPT_BYTES + 1)
        where = "stdin"
    elif argument.startswith("@") and len(argument) > 1:
        path = Path(argument[1:]).expanduser()
        where = str(path)
        if not path.exists():
            raise InputError(f"{path}: no such prompt file")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, not a prompt file")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
        except OSError as e:
            raise InputError(f"{path}: cannot read prompt file ({e.strerror or type(e).__name__})") from None
    else:
        data = argument.encode("utf-8", errors="surrogateescape")
        where = "prompt"
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(f"{where}: prompt larger than {MAX_PROMPT_BYTES >> 20} MiB")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: prompt is not valid UTF-8 (byte {e.start})") from None
    return data


def _as_bytes(text: str | bytes) -> bytes:
    return bytes(text) if isinstance(text, (bytes, bytearray)) else str(text).encode("utf-8")


def _names_file(value: Any) -> bool:
    """A str (no newline, short) that names an existing regular file is taken as a path."""
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return False
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):
        return False

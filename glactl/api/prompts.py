"""Text arguments as bytes: a prompt's syntax (the text, `-` for stdin, `@path`), and the API's text or file."""

from __future__ import annotations

import os
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


def text_source(text: Any, path: str | os.PathLike | None = None) -> bytes | Path:
    """What an API call reads: the text (a str or bytes, never taken as a file name), or a file (Path).

    A file is `path=` (str or os.PathLike) or an os.PathLike given as the text; a missing file or a
    folder is an InputError, so a mistyped name fails instead of being read as a short text.
    """
    if path is None and isinstance(text, os.PathLike):
        text, path = None, text
    if path is None:
        return _as_bytes("" if text is None else text)
    if text not in (None, "", b""):
        raise InputError("give the text or path=, not both")
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path= takes a str or os.PathLike, not {type(path).__name__}")
    file = Path(path).expanduser()
    if not file.exists():
        raise InputError(f"{file}: no such file")
    if file.is_dir():
        raise InputError(f"{file}: is a directory, not a file")
    return file


def read_text(text: Any, path: str | os.PathLike | None = None) -> bytes:
    """The bytes an API call reads (see text_source): the text's UTF-8, or the file's bytes."""
    source = text_source(text, path)
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as e:
        raise InputError(f"{source}: cannot read ({e.strerror or type(e).__name__})") from None

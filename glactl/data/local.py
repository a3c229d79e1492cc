"""Local text files encoded into a cache split file, streaming; a file that looks binary is refused."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glactl.errors import InputError

BINARY_LIMIT = 0.30
CHUNK_BYTES = 8 << 20

Progress = Callable[[str, int, int | None], None]  # (description, bytes done, total or None)


class _SplitWriter:
    """Append bytes to one split file, hashing and counting as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self.sha.update(data)
            self.size += len(data)

    def close(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.size == 0:
            self.path.unlink()


def _open_bytes(path: Path) -> Any:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _encode_local(
    files: list[Path], folder: Path, progress: Progress | None, allow_binary: bool
) -> tuple[dict, dict, dict]:
    """Copy local text files (gz decompressed) into train.bin, checking that they are text."""
    total = sum(f.stat().st_size for f in files)
    writer = _SplitWriter(folder / "train.bin")
    done = 0
    try:
        for path in files:
            counter = _TextCounter()
            last = b""
            try:
                with _open_bytes(path) as f:
                    _refuse_binary_start(path, f, allow_binary)  # before a byte goes into the cache
                    while chunk := f.read(CHUNK_BYTES):
                        counter.feed(chunk)
                        writer.write(chunk)
                        last = chunk[-1:]
                        done += len(chunk) if path.suffix.lower() != ".gz" else 0
                        if progress:
                            progress(f"encoding {path.name}", min(done, total), total)
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                raise InputError(f"--data {path}: unreadable ({type(e).__name__}: {str(e)[:80]})") from None
            if path.suffix.lower() == ".gz":
                done += path.stat().st_size
            counter.finish()
            if counter.total == 0:
                raise InputError(f"--data {path}: the file is empty")
            if counter.binary_fraction > BINARY_LIMIT and not allow_binary:
                raise InputError(
                    f"--data {path}: looks binary ({100 * counter.binary_fraction:.0f}% of bytes are NUL or not UTF-8); "
                    "pass --allow-binary to train on it anyway"
                )
            if len(files) > 1 and last != b"\n":
                writer.write(b"\n")
    finally:
        writer.close()
    return {"train": writer.size}, {"train": writer.sha.hexdigest()}, {"files": [str(f) for f in files]}


SNIFF_BYTES = 64 << 10


def _refuse_binary_start(path: Path, f: Any, allow_binary: bool) -> None:
    """Refuse a file whose first 64 KiB look binary before encoding any of it (the whole file is checked after)."""
    if allow_binary:
        return
    head = f.read(SNIFF_BYTES)
    f.seek(0)
    counter = _TextCounter()
    counter.feed(head)
    if len(head) < SNIFF_BYTES:
        counter.finish()
    if counter.binary_fraction > BINARY_LIMIT:
        raise InputError(
            f"--data {path}: looks binary ({100 * counter.binary_fraction:.0f}% of its first bytes are NUL "
            "or not UTF-8); pass --allow-binary to train on it anyway"
        )


class _TextCounter:
    """Counts bytes that are NUL or not valid UTF-8, streaming."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.total = 0
        self.valid = 0
        self.nul = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.nul += chunk.count(b"\0")
        self.valid += len(self.decoder.decode(chunk).encode("utf-8", "ignore"))

    def finish(self) -> None:
        self.valid += len(self.decoder.decode(b"", final=True).encode("utf-8", "ignore"))

    @property
    def binary_fraction(self) -> float:
        return (self.total - self.valid + self.nul) / self.total if self.total else 0.0

"""One session on disk: its record and its state file (the --save-state bytes), packed losslessly in one file.

Layout: 8 magic bytes, the JSON head's length (8 bytes, little-endian), the JSON head ({"record": ...,
"state_file_bytes": n, "packing": ...}), then the state file's bytes split into four planes by their
position modulo 4 (for float32 tensors: the sign and exponent bytes together, the noisy mantissa bytes
apart) and deflated at level 1. A model state's float32 numbers pack to about 0.87 of their size in about
10 ms for the shipped model (docs/serve.md), so a session costs less disk than its state; unpacking gives
back the exact bytes. Reading never trusts the head: the length is bounded, and inflating stops one byte
past the recorded size, so a hostile file cannot make the server allocate more than that.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from glactl.errors import RunFailure

MAGIC = b"glactlS1"
PACKING = "planes4+deflate1"
MAX_HEAD_BYTES = 1 << 16
MAX_STATE_FILE_BYTES = 1 << 34  # 16 GiB: far above any state this server makes; a bound for a damaged head


def _deflated_planes(data: bytes) -> bytes:
    """`data`'s bytes regrouped by their position modulo 4 (a last partial group as it is), deflated at level 1;
    one plane is copied at a time."""
    whole = len(data) // 4 * 4
    groups = np.frombuffer(data, np.uint8, whole).reshape(-1, 4)
    deflate = zlib.compressobj(1)
    parts = [deflate.compress(np.ascontiguousarray(groups[:, plane])) for plane in range(4)]
    return b"".join([*parts, deflate.compress(data[whole:]), deflate.flush()])


def _unplanes(data: bytes) -> bytes:
    """The inverse of the regrouping in _deflated_planes."""
    whole = len(data) // 4 * 4
    return np.frombuffer(data, np.uint8, whole).reshape(4, -1).T.tobytes() + data[whole:]


def pack(record: dict[str, Any], state_file: bytes) -> bytes:
    """The session file's bytes for `record` (a JSON object) and `state_file` (a --save-state file's bytes)."""
    head = json.dumps({"record": record, "state_file_bytes": len(state_file), "packing": PACKING}).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(head)), head, _deflated_planes(state_file)])


def _read_head(f: BinaryIO, path: Path) -> dict[str, Any]:
    start = f.read(16)
    if len(start) < 16 or start[:8] != MAGIC:
        raise RunFailure(f"{path}: not a glactl session file")
    (length,) = struct.unpack("<Q", start[8:])
    if length > MAX_HEAD_BYTES:
        raise RunFailure(f"{path}: session file head claims {length} bytes")
    try:
        head = json.loads(f.read(length))
    except (ValueError, RecursionError):
        raise RunFailure(f"{path}: unreadable session file head") from None
    size = head.get("state_file_bytes") if isinstance(head, dict) else None
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("record"), dict)
        or head.get("packing") != PACKING
        or not isinstance(size, int)
        or not 0 < size <= MAX_STATE_FILE_BYTES
    ):
        raise RunFailure(f"{path}: malformed session file head")
    return head


def read_record(path: Path) -> dict[str, Any]:
    """The record stored in a session file (only its head is read); FileNotFoundError if there is none."""
    with open(path, "rb") as f:
        return _read_head(f, path)["record"]


def read_state_file(path: Path) -> bytes:
    """The --save-state bytes stored in a session file, exactly as they were packed."""
    with open(path, "rb") as f:
        size = _read_head(f, path)["state_file_bytes"]
        inflate = zlib.decompressobj()
        try:
            data = inflate.decompress(f.read(), size + 1)
        except zlib.error as e:
            raise RunFailure(f"{path}: damaged session file ({e})") from None
    if len(data) != size or not inflate.eof or inflate.unused_data:
        raise RunFailure(f"{path}: damaged session file (its state is not {size} bytes)")
    return _unplanes(data)

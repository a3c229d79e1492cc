"""Reading files that may be hostile: small JSON documents and safetensors headers, bounded and checked against
the file's size before anything is allocated; nothing is ever unpickled."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch

from glactl.errors import InputError

MAX_JSON_BYTES = 1 << 20  # a config.json larger than 1 MB is not one of ours


MAX_HEADER_BYTES = 100 << 20


DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


# ---- loading -----------------------------------------------------------------------------
def read_json(path: Path, what: str) -> Any:
    """Parse a small JSON file; InputError (one line) if missing, too large or malformed."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise InputError(f"{path}: {what} is {size} bytes, larger than any glactl {what}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{path}: unreadable {what} ({type(e).__name__})") from None


def read_safetensors_header(
    path: Path, dtypes: dict[str, torch.dtype] = DTYPES, max_header: int = MAX_HEADER_BYTES
) -> dict[str, Any]:
    """Parse and check a safetensors file's header (safetensors_header) before reading any tensor."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            return safetensors_header(f, size, str(path), dtypes, max_header)
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except OSError as e:
        raise InputError(f"{path}: not a safetensors file ({type(e).__name__})") from None


def safetensors_header(
    f: BinaryIO, size: int, label: str, dtypes: dict[str, torch.dtype] = DTYPES, max_header: int = MAX_HEADER_BYTES
) -> dict[str, Any]:
    """The header of the safetensors bytes `f` (a file, or io.BytesIO) of `size` bytes, checked against that size.

    Every entry needs a dtype from `dtypes`, a shape whose size matches its span, and a span inside
    the file that overlaps no other; `__metadata__` is kept as it is for the caller to read. Errors name `label`.
    """
    try:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{label}: truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(max_header, size - 8):
            raise InputError(f"{label}: safetensors header claims {header_len} bytes, more than the file holds")
        header = json.loads(f.read(header_len).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"{label}: not a safetensors file ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise InputError(f"{label}: not a safetensors file (header is not an object)")
    data_size = size - 8 - header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("data_offsets"), list)
            or len(info["data_offsets"]) != 2
        ):
            raise InputError(f"{label}: malformed entry for tensor {name!r}")
        begin, end = info["data_offsets"]
        if (
            not all(isinstance(x, int) and not isinstance(x, bool) for x in (begin, end))
            or not 0 <= begin <= end <= data_size
        ):
            raise InputError(f"{label}: tensor {name!r} lies outside the file (truncated or corrupt)")
        if not isinstance(info.get("dtype"), str) or info["dtype"] not in dtypes:
            raise InputError(f"{label}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape
        ):
            raise InputError(f"{label}: tensor {name!r} has a malformed shape")
        nbytes = math.prod(shape) * dtypes[info["dtype"]].itemsize
        if nbytes != end - begin:
            raise InputError(f"{label}: tensor {name!r} claims {nbytes} bytes but spans {end - begin}")
        spans.append((begin, end))
    spans.sort()
    if any(b < a_end for (_, a_end), (b, _) in zip(spans, spans[1:])):
        raise InputError(f"{label}: tensors overlap (corrupt file)")
    return header

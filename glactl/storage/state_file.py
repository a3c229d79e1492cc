"""Saved states (docs/design.md §5): the model state after a text and the next-byte logits, in one safetensors file.

A file holds one tensor per tensor of the nested model state (named `state.<layer>.<key>...`), the
logits for the next byte (`logits`, as llama.cpp's session files keep the last logits) and the last
bytes read (`tail`, for the repetition penalty). Its header's metadata holds one JSON document: format
and glactl versions, sha256 of the checkpoint's config.json and model.safetensors, the attention window
and sinks, bytes read, precision, and the structure of the state (containers, tensor names, Python
ints/floats/None). Loading parses and bounds the header itself, checks the model's hashes and window,
then every tensor's name, shape and dtype against the loading model's `init_state` and the stored
structure, before reading any tensor data; it never unpickles. Every failure is one-line InputError.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glactl.errors import InputError, RunFailure
from glactl.inference.reading import TAIL_BYTES, Reading
from glactl.storage.state_format import (
    DTYPE_CODES,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    StateOwner,
    TensorPlan,
    build_state,
    check_owner,
    header_of_bytes,
    read_header,
    tensor_name,
)
from glactl.version import __version__


# ---- what a state belongs to ---------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def owner_of(model: torch.nn.Module, folder: str | os.PathLike, precision: str, name: str | None = None) -> StateOwner:
    """The owner record of a model loaded from checkpoint `folder` as `name` (hashes its config.json and model.safetensors)."""
    from glactl.storage.checkpoint import CONFIG_FILE, MODEL_FILE

    folder = Path(folder)
    try:
        config_hash, weights_hash = file_sha256(folder / CONFIG_FILE), file_sha256(folder / MODEL_FILE)
    except OSError as e:
        raise InputError(
            f"{folder}: cannot hash the checkpoint for a saved state ({e.strerror or type(e).__name__})"
        ) from None
    config = model.config
    windowed = any(hasattr(block.mixer, "window") for block in model.blocks)
    return StateOwner(
        config_hash, weights_hash, config.mixer, config.context, config.sink_tokens, windowed, precision, name
    )


# ---- the in-memory state -------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class State:
    """A text read by a model: `glactl.Model.read` makes one, `.save(path)` writes it, `Model.load_state` reads it back."""

    reading: Reading
    owner: StateOwner

    @property
    def bytes_read(self) -> int:
        """Bytes of text read after the START byte."""
        return self.reading.bytes_read

    @property
    def logits(self) -> torch.Tensor:
        """The logits [vocab] for the next byte."""
        return self.reading.logits

    @property
    def tail(self) -> bytes:
        """The last bytes read (up to 64)."""
        return self.reading.tail

    @property
    def nbytes(self) -> int:
        """Bytes held by the model state's tensors."""
        from glactl.models.layers import tensor_nbytes

        return int(tensor_nbytes(self.reading.state))

    def __repr__(self) -> str:
        return f"glactl.State(mixer={self.owner.mixer!r}, bytes_read={self.bytes_read}, nbytes={self.nbytes})"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the state to `path` atomically (a file beside it, then a rename); returns the path."""
        return save_state(self, path)


# ---- flattening a nested state -------------------------------------------------------------------
def _flatten(state: Any, path: tuple, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON structure of a nested state; its tensors go to `tensors` under their path names."""
    if isinstance(state, torch.Tensor):
        name = tensor_name(path)
        if name in tensors:
            raise RunFailure(f"state holds two tensors named {name!r}; cannot save it")
        tensors[name] = state
        return {"tensor": name}
    if isinstance(state, bool):
        return {"bool": state}
    if isinstance(state, int):
        return {"int": int(state)}
    if isinstance(state, float):
        return {"float": float(state).hex()}
    if state is None:
        return {"none": None}
    if isinstance(state, dict):
        return {"dict": [[str(key), _flatten(value, path + (key,), tensors)] for key, value in state.items()]}
    if isinstance(state, (list, tuple)):
        kind = "tuple" if isinstance(state, tuple) else "list"
        return {kind: [_flatten(value, path + (i,), tensors) for i, value in enumerate(state)]}
    raise RunFailure(f"cannot save a state holding a {type(state).__name__}")


# ---- saving --------------------------------------------------------------------------------------
def state_file_bytes(state: State) -> bytes:
    """The bytes of `state`'s file: safetensors tensors + JSON metadata (what save_state writes)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state.reading.state, (), tensors)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    tensors["logits"] = state.reading.logits.detach().to("cpu").contiguous()
    tensors["tail"] = torch.tensor(list(state.reading.tail[-TAIL_BYTES:]), dtype=torch.uint8)
    owner = state.owner
    model = {"config_sha256": owner.config_sha256, "weights_sha256": owner.weights_sha256, "mixer": owner.mixer}
    if owner.name is not None:  # optional: files written before it was recorded load without it
        model["name"] = owner.name
    document = {
        "format_version": FORMAT_VERSION,
        "glactl_version": __version__,
        "model": model,
        "context": owner.context,
        "sink_tokens": owner.sink_tokens,
        "windowed": owner.windowed,
        "precision": owner.precision,
        "bytes_read": int(state.reading.bytes_read),
        "structure": structure,
    }
    return save(tensors, metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})


def save_state(state: State, path: str | os.PathLike) -> Path:
    """Write `state` as safetensors + JSON metadata: to a temporary file beside `path`, fsynced, then renamed."""
    from glactl.storage.atomic import write_bytes_whole

    path = Path(path)
    check_writable(path)
    try:
        write_bytes_whole(path, state_file_bytes(state))
    except OSError as e:  # a full disk, a lost permission
        raise InputError(f"{path}: could not save the state ({e.strerror or type(e).__name__})") from None
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """InputError unless a state file can be written at `path` (its folder exists and is writable; it is not a folder)."""
    from glactl.storage.atomic import check_output_folder

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; --save-state needs a file name")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    check_output_folder(path.parent, str(path))
    return path


def load_state(path: str | os.PathLike, model: torch.nn.Module, owner: StateOwner) -> State:
    """Read a state file for `model` (whose checkpoint is described by `owner`); InputError (one line) when it does not fit."""
    from safetensors import safe_open

    path = Path(path)
    header, document = read_header(path)

    def tensors() -> dict[str, torch.Tensor]:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in header}

    return _checked_state(header, document, tensors, path, model, owner)


def state_from_bytes(data: bytes, label: str, model: torch.nn.Module, owner: StateOwner) -> State:
    """load_state for a state file's bytes in memory (an upload, a stored session), checked alike; errors name `label`."""
    from safetensors.torch import load

    header, document = header_of_bytes(data, label)
    return _checked_state(header, document, lambda: load(bytes(data)), label, model, owner)


def _checked_state(
    header: dict[str, Any],
    document: dict[str, Any],
    read_tensors: Callable[[], dict[str, torch.Tensor]],
    path: str | os.PathLike,
    model: torch.nn.Module,
    owner: StateOwner,
) -> State:
    """The State a checked header describes: its owner and every tensor's name, shape and dtype checked against
    `model` before `read_tensors` reads any data, then the values (no NaN, finite logits); errors name `path`."""
    check_owner(path, document, owner)
    tokens_read = document["bytes_read"] + 1
    template = model.init_state(1, torch.device("cpu"), model.dtype)
    plan = TensorPlan(path, header, tokens_read)
    plan.walk(template, document["structure"], ())
    vocab = model.config.vocab_size
    extras = {"logits": ([vocab], True), "tail": ([min(TAIL_BYTES, tokens_read)], False)}
    for name, (shape, floating) in extras.items():
        info = header.get(name)
        if (
            info is None
            or info["shape"] != shape
            or DTYPE_CODES[info["dtype"]].is_floating_point != floating
            or (not floating and info["dtype"] != "U8")
        ):
            raise InputError(f"{path}: state file has a missing or malformed {name!r} tensor")
    unexpected = sorted(set(header) - set(plan.expected) - set(extras))
    if unexpected:
        raise InputError(f"{path}: state file holds unexpected tensors {', '.join(unexpected[:3])}")
    try:
        tensors = read_tensors()
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise InputError(
            f"{path}: unreadable state file ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and torch.isnan(tensor).any():
            raise InputError(f"{path}: tensor {name!r} holds NaN values")
    device = model.device if hasattr(model, "device") else torch.device("cpu")
    state_tensors = {name: tensors[name].to(device, dtype) for name, dtype in plan.expected.items()}
    logits = tensors["logits"]
    logits = logits.to(device, torch.float64 if model.dtype == torch.float64 else torch.float32)
    if not torch.isfinite(logits).all():
        raise InputError(f"{path}: the stored logits are not finite")
    reading = Reading(
        build_state(template, document["structure"], state_tensors),
        logits,
        document["bytes_read"],
        bytes(tensors["tail"].tolist()),
    )
    return State(reading, owner)


# ---- description ---------------------------------------------------------------------------------
def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What a state file holds, from its header alone (no model needed): for `glactl info STATE_FILE`."""
    path = Path(path)
    header, document = read_header(path)
    state_bytes = sum(
        info["data_offsets"][1] - info["data_offsets"][0] for name, info in header.items() if name.startswith("state.")
    )
    tail = b""
    if "tail" in header and header["tail"].get("dtype") == "U8":
        begin, end = header["tail"]["data_offsets"]
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + header_len + begin)
            tail = f.read(min(end - begin, TAIL_BYTES))
    return {
        "state_file": str(path),
        "format_version": document["format_version"],
        "glactl_version": document["glactl_version"],
        "model": document["model"],
        "context": document["context"],
        "sink_tokens": document["sink_tokens"],
        "windowed": document["windowed"],
        "precision": document["precision"],
        "bytes_read": document["bytes_read"],
        "tensors": len(header),
        "state_bytes": state_bytes,
        "file_bytes": path.stat().st_size,
        "text_ends_with": tail.decode("utf-8", errors="replace"),
    }


def is_state_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file that starts like a glactl state file (a safetensors header with our metadata)."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES:
                return False
            return f'"{METADATA_KEY}"'.encode() in f.read(header_len)
    except OSError:
        return False

"""The state file's format and the checks every file passes before any tensor is read: size, header, metadata
document, the owner model and window, and the plan of tensors the loading model's state must hold."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glactl.errors import InputError
from glactl.storage.safe_read import read_safetensors_header, safetensors_header

FORMAT_VERSION = 1


@dataclass(frozen=True)
class StateOwner:
    """The model a state belongs to: checkpoint hashes, mixer, attention window and sinks, precision."""

    config_sha256: str
    weights_sha256: str
    mixer: str
    context: int | None
    sink_tokens: int | None
    windowed: bool  # whether the window and sinks change what the model computes (attention mixers)
    precision: str
    name: str | None = None  # the model as loaded: a shipped name or the folder as given (what -m takes)


METADATA_KEY = "glactl_state"


MAX_HEADER_BYTES = 16 << 20  # the header of a state of 256 layers is a few hundred KB


MAX_INT = 1 << 62


DTYPE_CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_NAMES = {dtype: code for code, dtype in DTYPE_CODES.items()}


_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save's zip archive


# ---- reading the header --------------------------------------------------------------------------
def _check_file(path: Path) -> int:
    """The file's size; InputError for a missing file, a folder, an empty file or a pickle."""
    if not path.exists():
        raise InputError(f"{path}: no such state file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a state file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise InputError(f"{path}: cannot read state file ({e.strerror or type(e).__name__})") from None
    _check_start(head, size, path)
    return size


def _check_start(head: bytes, size: int, label: str | os.PathLike) -> None:
    """InputError for an empty file, a pickle, or bytes that do not start like a safetensors file."""
    if size == 0:
        raise InputError(f"{label}: empty file, not a state file")
    if head.startswith(_PICKLE_MAGIC):
        raise InputError(f"{label}: a pickle or torch.save file; glactl reads only its own safetensors state files")
    if head[8:9] != b"{":  # safetensors: the header's length in 8 bytes, then its JSON object
        raise InputError(f"{label}: not a glactl state file (those are written by --save-state or State.save)")


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor entries, metadata document) of a state file, checked against the file size; nothing else is read."""
    path = Path(path)
    _check_file(path)
    return _split_metadata(read_safetensors_header(path, DTYPE_CODES, MAX_HEADER_BYTES), path)


def header_of_bytes(data: bytes, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """read_header for a state file's bytes in memory (an upload, a stored session); errors name `label`."""
    _check_start(data[:9], len(data), label)
    header = safetensors_header(io.BytesIO(data), len(data), label, DTYPE_CODES, MAX_HEADER_BYTES)
    return _split_metadata(header, label)


def _split_metadata(header: dict[str, Any], label: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the tensor entries, glactl's checked metadata document) of a parsed safetensors header."""
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise InputError(f"{label}: a safetensors file but not a glactl state file (no {METADATA_KEY} metadata)")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise InputError(f"{label}: unreadable state metadata ({type(e).__name__})") from None
    _check_document(label, document)
    return header, document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_document(path: str | os.PathLike, document: Any) -> None:
    """The metadata document has every field, with the right types."""
    if not isinstance(document, dict):
        raise InputError(f"{path}: state metadata is not an object")
    version = document.get("format_version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(
            f"{path}: unsupported state format_version {version!r} (this glactl reads 1..{FORMAT_VERSION})"
        )
    model = document.get("model")
    if not isinstance(model, dict) or not all(
        isinstance(model.get(k), str) for k in ("config_sha256", "weights_sha256", "mixer")
    ):
        raise InputError(f"{path}: state metadata lacks the model's hashes")
    if not isinstance(model.get("name", ""), str):  # optional: files saved before names were recorded lack it
        raise InputError(f"{path}: state metadata has a malformed model name")
    checks = {
        "bytes_read": _is_int(document.get("bytes_read")) and 0 <= document["bytes_read"] <= MAX_INT,
        "context": document.get("context") is None or _is_int(document.get("context")),
        "sink_tokens": document.get("sink_tokens") is None or _is_int(document.get("sink_tokens")),
        "windowed": isinstance(document.get("windowed"), bool),
        "precision": isinstance(document.get("precision"), str),
        "structure": isinstance(document.get("structure"), dict),
        "glactl_version": isinstance(document.get("glactl_version"), str),
    }
    bad = [key for key, ok in checks.items() if not ok]
    if bad:
        raise InputError(f"{path}: state metadata has a missing or malformed {', '.join(bad)}")


# ---- checking against the loading model ----------------------------------------------------------
def check_owner(path: str | os.PathLike, document: dict[str, Any], owner: StateOwner) -> None:
    """The state was read by this checkpoint, with this window: one line saying what differs (and which -m to pass)."""
    model = document["model"]
    if model["config_sha256"] != owner.config_sha256 or model["mixer"] != owner.mixer:
        raise InputError(
            f"{path}: state was saved with {_saved_with(model, owner, 'another model')} ({model['mixer']}, config.json "
            f"sha256 {model['config_sha256'][:12]}; this model: {owner.mixer}, {owner.config_sha256[:12]})"
            + _load_hint(model, owner)
        )
    if model["weights_sha256"] != owner.weights_sha256:
        raise InputError(
            f"{path}: state was saved with {_saved_with(model, owner, 'other weights')} (model.safetensors sha256 "
            f"{model['weights_sha256'][:12]}; this model's: {owner.weights_sha256[:12]})" + _load_hint(model, owner)
        )
    if owner.windowed and (document["context"], document["sink_tokens"]) != (owner.context, owner.sink_tokens):
        raise InputError(
            f"{path}: state was read with attention window {_window(document['context'], document['sink_tokens'])}; "
            f"this model runs with {_window(owner.context, owner.sink_tokens)} (use --context {document['context']})"
            if document["context"] is not None
            else f"{path}: state was read with no attention window; this model runs with "
            f"{_window(owner.context, owner.sink_tokens)} (load it without --context)"
        )


def _saved_with(model: dict[str, Any], owner: StateOwner, unnamed: str) -> str:
    """`unnamed` ("another model", "other weights"), then the model the state names, if it names one."""
    name = model.get("name")
    if name is None:  # saved before names were recorded
        return unnamed
    return f"{unnamed}, {name} as it was then" if name == owner.name else f"{unnamed}, {name}"  # then: it changed


def _load_hint(model: dict[str, Any], owner: StateOwner) -> str:
    """The end of a wrong-model error: which -m loads the model the state names (when it names another one)."""
    import shlex

    name = model.get("name")
    return f"; pass -m {shlex.quote(name)}" if name is not None and name != owner.name else ""


def _window(context: int | None, sinks: int | None) -> str:
    return "unlimited" if context is None else f"{context} tokens ({sinks} sinks)"


class TensorPlan:
    """What the stored structure must hold, derived from the model's init_state: tensors expected, values read."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any], tokens_read: int) -> None:
        self.path, self.header, self.tokens_read = path, header, tokens_read
        self.expected: dict[str, torch.dtype] = {}

    def fail(self, where: tuple, what: str) -> None:
        raise InputError(f"{self.path}: state does not fit this model at {tensor_name(where)}: {what}")

    def walk(self, template: Any, node: Any, where: tuple) -> None:
        """Check `node` (stored structure) against `template` (the model's fresh state) and the tensor entries."""
        if not isinstance(node, dict) or len(node) != 1:
            self.fail(where, "malformed structure")
        kind, value = next(iter(node.items()))
        if isinstance(template, torch.Tensor):
            if kind != "tensor" or value != tensor_name(where):
                self.fail(where, f"expected tensor {tensor_name(where)!r}")
            self._check_tensor(value, template, where)
        elif isinstance(template, bool):
            if kind != "bool" or not isinstance(value, bool):
                self.fail(where, "expected a bool")
        elif isinstance(template, int):
            if kind != "int" or not _is_int(value) or not 0 <= value <= self.tokens_read:
                self.fail(where, f"expected a count between 0 and {self.tokens_read}")
        elif isinstance(template, float):
            if kind != "float" or not isinstance(value, str):
                self.fail(where, "expected a float")
            try:
                float.fromhex(value)
            except (ValueError, OverflowError):
                self.fail(where, "malformed float")
        elif template is None:
            if kind != "none":
                self.fail(where, "expected None")
        elif isinstance(template, dict):
            if (
                kind != "dict"
                or not isinstance(value, list)
                or not all(isinstance(p, list) and len(p) == 2 for p in value)
            ):
                self.fail(where, "expected a dict")
            stored = {key: child for key, child in value}
            if len(stored) != len(value) or set(stored) != {str(k) for k in template}:
                self.fail(where, f"expected keys {sorted(str(k) for k in template)}")
            for key, child in template.items():
                self.walk(child, stored[str(key)], where + (key,))
        elif isinstance(template, (list, tuple)):
            want = "tuple" if isinstance(template, tuple) else "list"
            if kind != want or not isinstance(value, list) or len(value) != len(template):
                self.fail(where, f"expected a {want} of {len(template)}")
            for i, (child, stored_child) in enumerate(zip(template, value)):
                self.walk(child, stored_child, where + (i,))
        else:
            self.fail(where, f"this model's state holds a {type(template).__name__}")

    def _check_tensor(self, name: str, template: torch.Tensor, where: tuple) -> None:
        info = self.header.get(name)
        if info is None:
            self.fail(where, "tensor missing from the file")
        stored = DTYPE_CODES[info["dtype"]]
        if template.is_floating_point() != stored.is_floating_point or (
            not stored.is_floating_point and stored != template.dtype
        ):
            self.fail(where, f"dtype {info['dtype']}, expected {_NAMES.get(template.dtype, template.dtype)}")
        shape, want = info["shape"], list(template.shape)
        fits = len(shape) == len(want) and all(s == w if w else s <= self.tokens_read for s, w in zip(shape, want))
        if not fits:
            wanted = ", ".join(f"<={self.tokens_read}" if w == 0 else str(w) for w in want)
            self.fail(where, f"shape {shape}, expected [{wanted}]")
        self.expected[name] = template.dtype


def build_state(template: Any, node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """The state rebuilt with the template's container types, stored values and loaded tensors."""
    kind, value = next(iter(node.items()))
    if isinstance(template, torch.Tensor):
        return tensors[value]
    if kind == "float":
        return float.fromhex(value)
    if kind in ("int", "bool"):
        return value
    if kind == "none":
        return None
    if isinstance(template, dict):
        stored = {key: child for key, child in value}
        return {key: build_state(child, stored[str(key)], tensors) for key, child in template.items()}
    items = [build_state(child, stored_child, tensors) for child, stored_child in zip(template, value)]
    if isinstance(template, tuple):
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    return items


def tensor_name(path: tuple) -> str:
    return ".".join(["state", *(str(p) for p in path)])

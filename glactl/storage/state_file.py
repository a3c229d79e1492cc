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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glactl import __version__
from glactl.errors import InputError, RunFailure
from glactl.inference.reading import TAIL_BYTES, Reading
from glactl.storage.checkpoint import read_safetensors_header

FORMAT_VERSION = 1
METADATA_KEY = "glactl_state"
MAX_HEADER_BYTES = 16 << 20  # the header of a state of 256 layers is a few hundred KB
MAX_INT = 1 << 62
_CODES = {
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
_NAMES = {dtype: code for code, dtype in _CODES.items()}
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save's zip archive


# ---- what a state belongs to ---------------------------------------------------------------------
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


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def owner_of(model: torch.nn.Module, folder: str | os.PathLike, precision: str) -> StateOwner:
    """The owner record of a model loaded from checkpoint `folder` (hashes its config.json and model.safetensors)."""
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
    return StateOwner(config_hash, weights_hash, config.mixer, config.context, config.sink_tokens, windowed, precision)


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
        name = _tensor_name(path)
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


def _tensor_name(path: tuple) -> str:
    return ".".join(["state", *(str(p) for p in path)])


# ---- saving --------------------------------------------------------------------------------------
def save_state(state: State, path: str | os.PathLike) -> Path:
    """Write `state` as safetensors + JSON metadata: to a temporary file beside `path`, fsynced, then renamed."""
    from safetensors.torch import save_file

    path = Path(path)
    check_writable(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state.reading.state, (), tensors)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    tensors["logits"] = state.reading.logits.detach().to("cpu").contiguous()
    tensors["tail"] = torch.tensor(list(state.reading.tail[-TAIL_BYTES:]), dtype=torch.uint8)
    owner = state.owner
    document = {
        "format_version": FORMAT_VERSION,
        "glactl_version": __version__,
        "model": {"config_sha256": owner.config_sha256, "weights_sha256": owner.weights_sha256, "mixer": owner.mixer},
        "context": owner.context,
        "sink_tokens": owner.sink_tokens,
        "windowed": owner.windowed,
        "precision": owner.precision,
        "bytes_read": int(state.reading.bytes_read),
        "structure": structure,
    }
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)  # safetensors writes 0600; give the file the permissions `open` would
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException as e:
        try:
            temporary.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise RunFailure(f"could not save the state to {path}: {e.strerror or e}") from None
        raise
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """InputError unless a state file can be written at `path` (its folder exists; it is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; --save-state needs a file name")
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    return path


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
            head = f.read(8)
    except OSError as e:
        raise InputError(f"{path}: cannot read state file ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise InputError(f"{path}: empty file, not a state file")
    if head.startswith(_PICKLE_MAGIC):
        raise InputError(f"{path}: a pickle or torch.save file; glactl reads only its own safetensors state files")
    return size


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor entries, metadata document) of a state file, checked against the file size; nothing else is read."""
    path = Path(path)
    _check_file(path)
    header = read_safetensors_header(path, _CODES, MAX_HEADER_BYTES)
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get(METADATA_KEY), str):
        raise InputError(f"{path}: a safetensors file but not a glactl state file (no {METADATA_KEY} metadata)")
    try:
        document = json.loads(metadata[METADATA_KEY])
    except (ValueError, RecursionError) as e:
        raise InputError(f"{path}: unreadable state metadata ({type(e).__name__})") from None
    _check_document(path, document)
    return header, document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_document(path: Path, document: Any) -> None:
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
def _check_owner(path: Path, document: dict[str, Any], owner: StateOwner) -> None:
    """The state was read by this checkpoint, with this window: one line saying what differs."""
    model = document["model"]
    if model["config_sha256"] != owner.config_sha256 or model["mixer"] != owner.mixer:
        raise InputError(
            f"{path}: state was saved with another model ({model['mixer']}, config.json sha256 "
            f"{model['config_sha256'][:12]}; this model: {owner.mixer}, {owner.config_sha256[:12]})"
        )
    if model["weights_sha256"] != owner.weights_sha256:
        raise InputError(
            f"{path}: state was saved with other weights (model.safetensors sha256 "
            f"{model['weights_sha256'][:12]}; this model's: {owner.weights_sha256[:12]})"
        )
    if owner.windowed and (document["context"], document["sink_tokens"]) != (owner.context, owner.sink_tokens):
        raise InputError(
            f"{path}: state was read with attention window {_window(document['context'], document['sink_tokens'])}; "
            f"this model runs with {_window(owner.context, owner.sink_tokens)} (use --context {document['context']})"
            if document["context"] is not None
            else f"{path}: state was read with no attention window; this model runs with "
            f"{_window(owner.context, owner.sink_tokens)} (load it without --context)"
        )


def _window(context: int | None, sinks: int | None) -> str:
    return "unlimited" if context is None else f"{context} tokens ({sinks} sinks)"


class _Plan:
    """What the stored structure must hold, derived from the model's init_state: tensors expected, values read."""

    def __init__(self, path: Path, header: dict[str, Any], tokens_read: int) -> None:
        self.path, self.header, self.tokens_read = path, header, tokens_read
        self.expected: dict[str, torch.dtype] = {}

    def fail(self, where: tuple, what: str) -> None:
        raise InputError(f"{self.path}: state does not fit this model at {_tensor_name(where)}: {what}")

    def walk(self, template: Any, node: Any, where: tuple) -> None:
        """Check `node` (stored structure) against `template` (the model's fresh state) and the tensor entries."""
        if not isinstance(node, dict) or len(node) != 1:
            self.fail(where, "malformed structure")
        kind, value = next(iter(node.items()))
        if isinstance(template, torch.Tensor):
            if kind != "tensor" or value != _tensor_name(where):
                self.fail(where, f"expected tensor {_tensor_name(where)!r}")
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
        stored = _CODES[info["dtype"]]
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


def _build(template: Any, node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
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
        return {key: _build(child, stored[str(key)], tensors) for key, child in template.items()}
    items = [_build(child, stored_child, tensors) for child, stored_child in zip(template, value)]
    if isinstance(template, tuple):
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    return items


def load_state(path: str | os.PathLike, model: torch.nn.Module, owner: StateOwner) -> State:
    """Read a state file for `model` (whose checkpoint is described by `owner`); InputError (one line) when it does not fit."""
    from safetensors import safe_open

    path = Path(path)
    header, document = read_header(path)
    _check_owner(path, document, owner)
    tokens_read = document["bytes_read"] + 1
    template = model.init_state(1, torch.device("cpu"), model.dtype)
    plan = _Plan(path, header, tokens_read)
    plan.walk(template, document["structure"], ())
    vocab = model.config.vocab_size
    extras = {"logits": ([vocab], True), "tail": ([min(TAIL_BYTES, tokens_read)], False)}
    for name, (shape, floating) in extras.items():
        info = header.get(name)
        if (
            info is None
            or info["shape"] != shape
            or _CODES[info["dtype"]].is_floating_point != floating
            or (not floating and info["dtype"] != "U8")
        ):
            raise InputError(f"{path}: state file has a missing or malformed {name!r} tensor")
    unexpected = sorted(set(header) - set(plan.expected) - set(extras))
    if unexpected:
        raise InputError(f"{path}: state file holds unexpected tensors {', '.join(unexpected[:3])}")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in header:
                tensors[name] = f.get_tensor(name)
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
        _build(template, document["structure"], state_tensors),
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

"""Resumable trainer state without pickle: optimizer tensors in safetensors, everything else in JSON.

`optimizer.safetensors` holds each optimizer state tensor as `state.<param index>.<key>`;
`trainer.json` holds step counters, the schedule, the optimizer's param groups, non-tensor
state values and the RNG states (hex strings of torch's byte states).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glactl.errors import InputError
from glactl.storage.atomic import write_json
from glactl.storage.checkpoint import OPTIMIZER_FILE, TRAINER_FILE
from glactl.storage.safe_read import read_json, read_safetensors_header

TRAINER_FORMAT = 1


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer state dict: tensors by flat name, the rest as a JSON-able document."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def rng_states() -> dict[str, str]:
    """Torch RNG states (CPU and every initialised CUDA device) as hex strings."""
    out = {"cpu": bytes(torch.get_rng_state().tolist()).hex()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = bytes(s.tolist()).hex()
    return out


def write_trainer_files(folder: Path, optimizer: torch.optim.Optimizer, trainer: dict[str, Any]) -> None:
    """Write optimizer.safetensors and trainer.json into a checkpoint folder being assembled."""
    tensors, document = optimizer_tensors(optimizer)
    save_file(tensors, str(folder / OPTIMIZER_FILE), metadata={"format": "pt", "glactl": "optimizer"})
    write_json(folder / TRAINER_FILE, {"format": TRAINER_FORMAT, **trainer, "optimizer": document, "rng": rng_states()})


def read_trainer(folder: Path) -> dict[str, Any]:
    """The trainer.json of a checkpoint folder, checked to be ours."""
    document = read_json(folder / TRAINER_FILE, "trainer.json")
    if not isinstance(document, dict) or document.get("format") != TRAINER_FORMAT:
        raise InputError(f"{folder / TRAINER_FILE}: not a glactl trainer state (format {TRAINER_FORMAT} expected)")
    for key, kind in (("step", int), ("tokens_seen", int), ("elapsed_seconds", (int, float)), ("optimizer", dict)):
        if not isinstance(document.get(key), kind) or isinstance(document.get(key), bool):
            raise InputError(f"{folder / TRAINER_FILE}: missing or bad field {key!r}")
    return document


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, document: dict[str, Any]) -> None:
    """Restore optimizer state from a checkpoint folder (optimizer.safetensors + trainer.json)."""
    path = folder / OPTIMIZER_FILE
    read_safetensors_header(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for corrupt data
        raise InputError(f"{path}: unreadable optimizer state ({type(e).__name__})") from None
    saved = document["optimizer"]
    groups = saved.get("param_groups")
    current = optimizer.state_dict()
    if (
        not isinstance(groups, list)
        or len(groups) != len(current["param_groups"])
        or any(len(g.get("params", [])) != len(c["params"]) for g, c in zip(groups, current["param_groups"]))
    ):
        raise InputError(f"{path}: optimizer state does not match the model (different parameter groups)")
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise InputError(f"{path}: unexpected tensor {name!r}")
        state.setdefault(int(parts[1]), {})[parts[2]] = tensor
    for index, values in (saved.get("scalars") or {}).items():
        state.setdefault(int(index), {}).update(values)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, entry in state.items():
        if not 0 <= index < len(params):
            raise InputError(f"{path}: optimizer state names parameter {index}, the model has {len(params)}")
        for key, tensor in entry.items():
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.shape != params[index].shape:
                raise InputError(
                    f"{path}: optimizer tensor state.{index}.{key} has shape {list(tensor.shape)}, "
                    f"the parameter has {list(params[index].shape)}"
                )
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise InputError(f"{path}: optimizer tensor state.{index}.{key} holds NaN or inf")
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _state_tensor(text: Any, where: str) -> torch.Tensor:
    try:
        return torch.tensor(list(bytes.fromhex(text)), dtype=torch.uint8)
    except (TypeError, ValueError):
        raise InputError(f"{where}: malformed RNG state") from None


def restore_rng(document: dict[str, Any], where: str = TRAINER_FILE) -> None:
    """Put back the RNG states saved in trainer.json (absent states are left alone)."""
    states = document.get("rng") or {}
    if not isinstance(states, dict):
        raise InputError(f"{where}: malformed RNG state")
    if "cpu" in states:
        try:
            torch.set_rng_state(_state_tensor(states["cpu"], where))
        except RuntimeError:
            raise InputError(f"{where}: malformed RNG state") from None
    if torch.cuda.is_available():
        cuda = [states[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in states]
        if cuda:
            torch.cuda.set_rng_state_all([_state_tensor(s, where) for s in cuda])

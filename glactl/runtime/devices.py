"""Device, dtype and kernel selection shared by every command that runs a model (docs/design.md §8).

Thread counts have their own module, runtime/threads.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from glactl.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str = "auto") -> torch.device:
    """auto picks cuda, then mps, then cpu; asking for a missing device is an InputError naming the choices."""
    name = (name or "auto").lower()
    base = name.split(":", 1)[0]
    if base not in DEVICE_CHOICES:
        raise InputError(f"--device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if _mps_available() else [])
    if base == "auto":
        return torch.device("cuda" if "cuda" in available else "mps" if "mps" in available else "cpu")
    if base not in available:
        raise InputError(
            f"--device {name}: not available on this machine; valid choices here: auto, {', '.join(available)}"
        )
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 math (AVX512-BF16 or AMX-BF16).

    oneDNN's own check also says yes on plain AVX512, where bfloat16 is emulated: measured on
    this project's 2-core AVX512 machine, bfloat16 autocast trained GLA 3-11x slower than float32.
    So the CPU flags decide where they can be read; oneDNN's answer is the fallback.
    """
    flags = cpu_flags()
    if flags is not None:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_flags() -> set[str] | None:
    """The CPU feature flags of /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Precision:
    """How a model runs: autocast dtype (None = plain float32) and whether a gradient scaler is needed."""

    name: str
    autocast_dtype: torch.dtype | None
    use_scaler: bool
    warning: str | None = None  # set when the asked dtype was replaced (e.g. bfloat16 on hardware without it)

    def autocast(self, device: torch.device) -> Any:
        """The autocast context for forward passes (a no-op for float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def select_precision(name: str, device: torch.device) -> Precision:
    """--dtype: auto = bfloat16 autocast where supported, float16 + scaler on older GPUs, float32 elsewhere."""
    name = (name or "auto").lower()
    if name not in DTYPE_CHOICES:
        raise InputError(f"--dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    if name == "auto":
        if device.type == "cuda":
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif device.type == "cpu":
            name = "bfloat16" if cpu_supports_bf16() else "float32"
        else:
            name = "float32"
    if name == "float32":
        return Precision("float32", None, False)
    if name == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return Precision(
                "float16",
                torch.float16,
                True,
                "--dtype bfloat16: this GPU does not support bfloat16; using float16 with loss scaling instead",
            )
        if device.type == "cpu" and not cpu_supports_bf16():
            return Precision(
                "float32",
                None,
                False,
                "--dtype bfloat16: this CPU has no native bfloat16 (AVX512-BF16/AMX); using float32 instead",
            )
        return Precision("bfloat16", torch.bfloat16, False)
    if device.type == "cpu":
        raise InputError("--dtype float16: not supported for training on CPU; use bfloat16, float32 or auto")
    return Precision("float16", torch.float16, device.type == "cuda")


# ---- --dtype auto on a CPU with native bfloat16: decided by measuring this model here -------------------
# benchmarks/cpu_defaults.py on the 2-core AMD EPYC (AVX512-BF16, no AMX), 1 thread, seq 512 x batch 16:
# bfloat16 autocast trained 1.24x (d64 x 2 layers), 1.61x (tiny), 1.57x (d128 x 4) and 1.97x (small) faster
# than float32, while on a CPU with AMX float32 measured faster for d128 x 4 (17 s against 24 s).
# No size rule holds on both, so auto times a few forward + backward passes of the run's own model in
# each and keeps the faster; the answer is cached per CPU, torch, threads and model shape.
CALIBRATION_FILE = "dtype-calibration.json"
CALIBRATION_PASSES = 2  # timed passes per dtype, after one untimed pass each


def cpu_dtype_by_measurement(
    model: torch.nn.Module, seq_len: int, batch_size: int, cache: os.PathLike[str] | None = None
) -> tuple[str, float, bool]:
    """(dtype name, bfloat16's speed-up over float32, whether the answer came from the cache) for training on this CPU."""
    import copy
    import json
    from pathlib import Path

    config = getattr(model, "config", None)
    shape = config.to_dict() if hasattr(config, "to_dict") else repr(model)[:200]
    batch = max(1, min(batch_size, 4))
    key = json.dumps(
        [cpu_name(), torch.__version__, torch.get_num_threads(), shape, seq_len, batch], sort_keys=True, default=str
    )
    path = Path(cache) / CALIBRATION_FILE if cache is not None else None
    known: dict[str, Any] = {}
    if path is not None:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        if isinstance(known.get(key), dict):
            speedup = float(known[key]["bfloat16_speedup"])
            return ("bfloat16" if speedup > 1.0 else "float32"), speedup, True
    probe = copy.deepcopy(model).train()
    inputs = torch.randint(0, 256, (batch, seq_len), generator=torch.Generator().manual_seed(0))

    def one_pass(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext():
            logits, _ = probe(inputs)
        logits.float().logsumexp(-1).mean().backward()
        probe.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    one_pass(None), one_pass(torch.bfloat16)
    for _ in range(CALIBRATION_PASSES):  # alternate, so a neighbour's load hits both alike
        times["float32"].append(one_pass(None))
        times["bfloat16"].append(one_pass(torch.bfloat16))
    speedup = min(times["float32"]) / max(min(times["bfloat16"]), 1e-9)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            known[key] = {
                "bfloat16_speedup": round(speedup, 3),
                "float32_seconds": min(times["float32"]),
                "bfloat16_seconds": min(times["bfloat16"]),
            }
            temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            temporary.write_text(json.dumps(known, indent=1))
            os.replace(temporary, path)
        except OSError:
            pass
    return ("bfloat16" if speedup > 1.0 else "float32"), speedup, False


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor or machine elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


KERNEL_CHOICES = ("torch", "fla")


def select_kernels(name: str | None, device: torch.device) -> str:
    """--kernels: torch (default; our PyTorch GLA forms) or fla (flash-linear-attention's chunk kernel, CUDA only).

    Asking for fla where it cannot run is an InputError (exit 2), never a silent fallback.
    """
    from glactl.ops.gla import fla_available

    name = (name or "torch").lower()
    if name not in KERNEL_CHOICES:
        raise InputError(f"--kernels {name!r}: choose one of {', '.join(KERNEL_CHOICES)}")
    if name == "fla":
        if device.type != "cuda":
            raise InputError(
                f"--kernels fla: flash-linear-attention runs on CUDA only, not on {device.type}; use --kernels torch"
            )
        if not fla_available():
            raise InputError(
                "--kernels fla: the fla package is not installed or does not import "
                "(pip install flash-linear-attention); use --kernels torch"
            )
    return name


def use_kernels(model: Any, kernels: str) -> Any:
    """Point every GLA mixer of `model` at `kernels` (other mixers have one form); returns the model."""
    for module in model.modules():
        if hasattr(module, "kernels"):
            module.kernels = kernels
    return model

"""Device, precision and thread selection shared by every command that runs a model (docs/design.md §8)."""

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
    flags = _cpu_flags()
    if flags is not None:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> set[str] | None:
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
        [_cpu_name(), torch.__version__, torch.get_num_threads(), shape, seq_len, batch], sort_keys=True, default=str
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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


# ---- thread counts by kind of work ---------------------------------------------------------------
# benchmarks/cpu_defaults.py on the 2-core EPYC while other jobs kept it busy (load average 7): 2 threads
# against 1 took 6.7x as long to train (d64 x 2), 3.9x to score and 7.1x to decode, the oversubscription
# was measured (perplexity 4.6x slower without --threads 1). Byte-by-byte decoding stays on one thread:
# on the idle AVX2 machine a second thread gave 0.84-1.23x for eager and compiled steps of three GLA
# sizes in float32 and int8 (benchmarks/decode_threads.py, RESULTS.md section 8d). Reading, scoring and
# training get the cores that are idle now: measured over BUSY_SAMPLE_SECONDS from /proc/stat, since the
# 1-minute load average still counts a command that has just ended (a second perplexity right after a
# first got one thread of two and ran 1.5x slower); the load average where /proc/stat is missing.
THREAD_KINDS = ("training", "scoring", "decoding")
BUSY_SAMPLE_SECONDS = 0.1


def plural(count: int, word: str) -> str:
    """'1 thread', '2 threads'."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """(all ticks, idle ticks) since boot of each CPU in `cpus`, from /proc/stat (OSError where it is missing)."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            cpu = int(name[3:]) if name.startswith("cpu") and name[3:].isdigit() else None
            if cpu in cpus:
                ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[cpu] = (sum(ticks), ticks[3] + ticks[4])
    return times


def busy_cores(cpus: set[int], seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """How many of `cpus` other work keeps busy right now (this process sleeps while it looks); None if unknown."""
    try:
        before = cpu_times(cpus)
        time.sleep(seconds)
        after = cpu_times(cpus)
    except (OSError, ValueError):
        return None
    busy, seen = 0.0, 0
    for cpu, (total, idle) in after.items():
        if cpu in before and total > before[cpu][0]:
            busy += 1.0 - (idle - before[cpu][1]) / (total - before[cpu][0])
            seen += 1
    return busy if seen else None


def default_threads(kind: str) -> tuple[int, str]:
    """(threads, why) for a kind of work when --threads is not given."""
    if kind not in THREAD_KINDS:
        raise ValueError(f"kind of work must be one of {THREAD_KINDS}, got {kind!r}")
    if kind == "decoding":
        return 1, "byte-by-byte decoding is too small to share between threads"
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    cores, busy = len(cpus), busy_cores(cpus)
    if busy is not None:
        source = f"{busy:.1f} busy over the last {BUSY_SAMPLE_SECONDS:g} s"
    else:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
        source = f"load average {busy:.1f}"
    idle = max(1, min(cores, int(cores - busy + 0.5)))
    return idle, f"{plural(idle, 'idle core')} of {cores}, {source}"


# OMP_NUM_THREADS as it was when glactl started (set_threads writes it later for child processes)
_ENVIRONMENT_THREADS = os.environ.get("OMP_NUM_THREADS", "")


def environment_threads() -> int | None:
    """The thread count the user gave in OMP_NUM_THREADS before glactl started (a positive integer), else None."""
    value = _ENVIRONMENT_THREADS.strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_line(kind: str, threads: int | None) -> tuple[int, str]:
    """The count to use for `kind` and the line that says how it was chosen ("" when --threads gave it)."""
    if threads is not None:
        return threads, ""
    count = environment_threads()
    if count is not None:
        why = f"OMP_NUM_THREADS={count}"
    else:
        count, why = default_threads(kind)
    return count, f"threads: {plural(count, 'thread')} for {kind}: {why} (--threads N to choose)"


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None = leave torch's default); returns the count in use."""
    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads {threads}: must be at least 1")
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return torch.get_num_threads()


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

"""Inference speed: the weights' format at run time (--precision) and a compiled decode step (--compile).

Both leave the checkpoint alone: precision swaps a model's nn.Linear layers for int8 or bfloat16
copies at load time; compile wraps `LanguageModel.step` in torch.compile for one batch size.
Recurrent states and the residual stream stay float32 in every precision.

Rules measured on the 2-core AMD EPYC (AVX512-BF16, no AMX), shipped gla-enwiki, 1 thread
(benchmarks/RESULTS.md, section "Inference speed (issue 14)"):
- int8: weights int8 with one absmax scale per output row, applied by torch's int8 weight-only
  matmul (`aten._weight_int8pack_mm`, the CPU kernel torchao and gpt-fast use) with bfloat16
  activations for up to INT8PACK_MAX_ROWS rows; larger inputs (perplexity windows) dequantize to
  bfloat16 (float32 on CPUs without native bfloat16) and run one GEMM. The kernel is vectorised for
  AVX2 and AVX512 (its float32-input path is scalar, 6-14x slower: measured), so it always gets
  bfloat16 rows. torchao's own int8 weight-only layout measured slower than float32 here (it
  dequantizes on every call) and its import costs seconds; torch.ao's quantize_dynamic is deprecated.
- precision auto: int8 on x86 CPUs whose torch build runs the int8 kernel vectorised (AVX2 or
  AVX512): decoding the shipped model ran 2.2x float32 on an AVX512-BF16 EPYC and 1.5x on an
  AVX2-only EPYC (Zen 2), and its cost in bits per byte stayed below AUTO_BPB_BOUND of float32 on
  wiki.test.raw and enwiki held-out text; float32 elsewhere (other CPUs were not measured).
- compile auto: compile the step when a run takes at least COMPILE_MIN_STEPS decode steps and the
  mixer's step state holds tensors only (GLA, minGRU, minLSTM, Performer); never on other devices.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from glactl.errors import InputError

PRECISION_CHOICES = ("auto", "float32", "bfloat16", "int8")
COMPILE_CHOICES = ("auto", "on", "off")
INT8PACK_MAX_ROWS = 16  # above this many rows a dequantized bfloat16 GEMM beats the int8 weight-only kernel
COMPILE_MIN_STEPS = 1000  # auto: fewer decode steps than this never pay for a compile (see module docstring)
AUTO_BPB_BOUND = 0.01
COMPILED_MIXERS = ("gla", "mingru", "minlstm", "performer")  # step states of tensors only; others stay eager

_notes_given: set[str] = set()


def note(message: str) -> None:
    """One line on stderr, once per process for the same message."""
    if message not in _notes_given:
        _notes_given.add(message)
        sys.stderr.write(f"glactl: note: {message}\n")
        sys.stderr.flush()


def check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> str:
    """The lower-cased choice, or an InputError (one line) naming the valid ones."""
    name = (value or "auto").lower()
    if name not in choices:
        raise InputError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return name


# ---- precision -----------------------------------------------------------------------------
def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 math is native here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        from glactl.devices import cpu_supports_bf16

        return cpu_supports_bf16()
    return False


def resolve_precision(name: str | None, device: torch.device) -> str:
    """--precision: the weights' format to run with on `device` (auto: the measured rule above)."""
    name = check_choice("--precision", name, PRECISION_CHOICES)
    if name == "auto":
        return "int8" if int8_kernel_vectorized(device) else "float32"
    if name == "bfloat16" and not native_bf16(device):
        note(f"--precision bfloat16: no native bfloat16 on this {device.type} (AVX512-BF16/AMX or a bf16 GPU); using float32")
        return "float32"
    if name == "int8" and (device.type != "cpu" or not int8_available()):
        note(f"--precision int8: torch's int8 weight-only matmul is not available on {device.type} here; using float32")
        return "float32"
    return name


def int8_available() -> bool:
    """Whether this torch ships the CPU int8 weight-only matmul."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int8_kernel_vectorized(device: torch.device) -> bool:
    """Whether the int8 weight-only kernel runs vectorised here (a CPU whose torch uses AVX2 or AVX512)."""
    if device.type != "cpu" or not int8_available():
        return False
    return torch.backends.cpu.get_cpu_capability().startswith(("AVX2", "AVX512"))


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 with one absmax scale per output row (float32 in and out).

    `kernel`: few rows go through torch's int8 weight-only kernel (bfloat16 rows); `native`: whether
    bfloat16 math is native, which picks bfloat16 over float32 for the dequantized GEMM of many rows.
    """

    def __init__(self, linear: nn.Linear, kernel: bool, native: bool) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.compute_dtype = torch.bfloat16 if native else torch.float32
        self.register_buffer("scale", scale.to(self.compute_dtype))
        self.register_buffer("kernel_scale", scale.to(torch.bfloat16))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # torch 2.13's CPU kernel reads 16 input columns at a time: other widths crash or compute garbage (measured);
        # the weight is this module's own int8 buffer, dense and aligned as the kernel's aligned loads need.
        self.packed = kernel and linear.in_features % 16 == 0 and linear.in_features > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= INT8PACK_MAX_ROWS and self.packed:
            # The AVX512 kernel does aligned 32-byte loads of every input row: a view that starts at another offset
            # segfaults (measured), so the kernel always gets a fresh, dense (64-byte aligned) bfloat16 copy.
            dense = flat.to(torch.bfloat16, memory_format=torch.contiguous_format, copy=True)
            y = torch.ops.aten._weight_int8pack_mm(dense, self.weight, self.kernel_scale)
        else:
            # many rows (a perplexity window): dequantize once per call, one GEMM (bfloat16 where native)
            weight = (self.weight.to(self.scale.dtype) * self.scale[:, None]).to(self.compute_dtype)
            y = F.linear(flat.to(self.compute_dtype), weight)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias


class BFloat16Linear(nn.Module):
    """A Linear whose weight (and bias) is bfloat16; float32 in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Swap every nn.Linear of `model` for its `precision` copy in place (float32: unchanged); returns the model.

    The embedding stays float32 (a lookup reads one row per token); a head tied to it gets its own copy.
    """
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:  # a float64 reference model (tests, glactl.checkpoint loaders) keeps its exact weights
        model.precision = str(dtype).replace("torch.", "")
        return model
    model.precision = precision
    if precision == "float32":
        return model
    device = next(model.parameters()).device
    native, kernel = native_bf16(device), int8_kernel_vectorized(device)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swapped = Int8Linear(child, kernel, native) if precision == "int8" else BFloat16Linear(child)
                setattr(parent, name, swapped.to(child.weight.device))
    return model


# ---- compiled step -------------------------------------------------------------------------
def configure(model: nn.Module, compile: str = "off") -> None:
    """Record the --compile choice on a loaded model; `stepper` reads it."""
    model.compile_choice = check_choice("--compile", compile, COMPILE_CHOICES)


def should_compile(model: nn.Module, steps: int) -> bool:
    """Whether `stepper` compiles for a run of `steps` decode steps (the --compile rule)."""
    choice = getattr(model, "compile_choice", "off")
    if choice == "off" or getattr(model, "_compile_failed", False):
        return False
    if model.config.mixer not in COMPILED_MIXERS or next(model.parameters()).device.type != "cpu":
        if choice == "on":
            note(f"--compile on: the {model.config.mixer} step on {next(model.parameters()).device.type} stays eager "
                 f"(compiled: {', '.join(COMPILED_MIXERS)} on CPU)")
        return False
    return choice == "on" or steps >= COMPILE_MIN_STEPS


def stepper(model: nn.Module, batch: int, steps: int) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]:
    """`model.step`, compiled for `batch` rows when the rule says so (smaller batches are padded to it)."""
    if not should_compile(model, steps):
        return model.step
    cache = model.__dict__.setdefault("_compiled_steps", {})
    if batch not in cache:
        cache[batch] = CompiledStep(model, batch)
    return cache[batch]


class CompiledStep:
    """model.step under torch.compile for exactly `batch` rows; any failure falls back to eager with one note."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        self.model, self.batch = model, batch
        self.compiled: Callable[..., Any] | None = None
        self._paddings: dict[int, torch.Tensor] = {}

    def _padding(self, rows: int, device: torch.device) -> torch.Tensor:
        """Batch rows 0..rows-1, then row 0 repeated up to the compiled batch (built once per row count)."""
        if rows not in self._paddings:
            pad = torch.zeros(self.batch - rows, dtype=torch.long)
            self._paddings[rows] = torch.cat([torch.arange(rows), pad]).to(device)
        return self._paddings[rows]

    def _build(self) -> Callable[..., Any]:
        from glactl.data import cache_root

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
        return torch.compile(self.model.step, dynamic=False)

    def __call__(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        if getattr(self.model, "_compile_failed", False):
            return self.model.step(tokens, state)
        rows = tokens.shape[0]
        if rows > self.batch:
            return self.model.step(tokens, state)
        if self.compiled is None and not _tensors_only(state):
            self.model._compile_failed = True  # a Python number in the state would recompile every step
            note(f"the {self.model.config.mixer} state holds Python numbers; its step runs eager")
            return self.model.step(tokens, state)
        try:
            if self.compiled is None:
                self.compiled = self._build()
            if rows == self.batch:
                return self.compiled(tokens, state)
            from glactl.models.state import map_state, select_state

            index = self._padding(rows, tokens.device)
            logits, new_state = self.compiled(tokens[index], select_state(state, index))
            return logits[:rows], map_state(new_state, lambda t: t[:rows] if t.dim() else t)
        except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform, a backend bug: eager still works
            self.model._compile_failed = True
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            note(f"torch.compile failed ({type(e).__name__}{': ' + reason if reason else ''}); running eager")
            return self.model.step(tokens, state)


def _tensors_only(state: Any) -> bool:
    """Whether every leaf of a nested state is a tensor (or None)."""
    if isinstance(state, dict):
        return all(_tensors_only(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_tensors_only(v) for v in state)
    return state is None or isinstance(state, torch.Tensor)

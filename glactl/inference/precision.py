"""Inference speed: the weights' format at run time (--precision); the compiled decode step is in compiled_step.py.

Precision leaves the checkpoint alone: it swaps a model's nn.Linear layers for int8, bfloat16 or
(float32 on CPUs) transposed copies at load time.
Recurrent states and the residual stream stay float32 in every precision.

Rules measured on the 2-core AMD EPYC (AVX512-BF16, no AMX), shipped gla-enwiki, 1 thread
(benchmarks/RESULTS.md, section "Inference speed"):
- int8: weights int8 with one absmax scale per output row, applied by torch's int8 weight-only matmul
  (`aten._weight_int8pack_mm`, the CPU kernel torchao and gpt-fast use) with bfloat16 activations for
  up to INT8PACK_MAX_ROWS rows. Larger inputs (perplexity windows, prompts) dequantize to bfloat16 and
  run one GEMM where bfloat16 is native; elsewhere on x86 they run int8 x int8 products with one scale
  per row through torch's fbgemm (glactl/ops/int8_rows.py: 1.2-1.3x float32 per window on an AVX2-only
  EPYC, +0.002 bits per byte), else a dequantized float32 GEMM. The weight-only kernel is vectorised
  for AVX2 and AVX512 (its float32-input path is scalar, 6-14x slower: measured), so it always gets
  bfloat16 rows. torchao's own int8 weight-only layout measured slower than float32 here (it
  dequantizes on every call) and its import costs seconds; torch.ao's quantize_dynamic is deprecated.
- precision auto: int8 on x86 CPUs whose torch build runs the int8 kernel vectorised (AVX2 or
  AVX512): decoding the shipped model ran 2.2x float32 on an AVX512-BF16 EPYC and 1.5x on an
  AVX2-only EPYC (Zen 2), and its cost in bits per byte stayed below AUTO_BPB_BOUND of float32 on
  wiki.test.raw and enwiki held-out text; float32 elsewhere (other CPUs were not measured).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from glactl.errors import InputError
from glactl.ops.int8_rows import (
    ROW_WEIGHT_MAX,
    int8_row_codes,
    int8_rows_available,
    int8_rows_matmul,
    pack_int8_rows,
)

PRECISION_CHOICES = ("auto", "float32", "bfloat16", "int8")
INT8PACK_MAX_ROWS = 16  # above this many rows a dequantized bfloat16 GEMM beats the int8 weight-only kernel
AUTO_BPB_BOUND = 0.01

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


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 math is native here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        from glactl.runtime.devices import cpu_supports_bf16

        return cpu_supports_bf16()
    return False


def resolve_precision(name: str | None, device: torch.device) -> str:
    """--precision: the weights' format to run with on `device` (auto: the measured rule above)."""
    name = check_choice("--precision", name, PRECISION_CHOICES)
    if name == "auto":
        return "int8" if int8_kernel_vectorized(device) else "float32"
    if name == "bfloat16" and not native_bf16(device):
        note(
            f"--precision bfloat16: no native bfloat16 on this {device.type} (AVX512-BF16/AMX or a bf16 GPU); using float32"
        )
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
    bfloat16 math is native, which picks a dequantized bfloat16 GEMM for many rows; `int8_rows`: where
    it is not, many rows run int8 x int8 products with one scale per row (glactl/ops/int8_rows.py),
    packed on first use so that decoding never pays for it; elsewhere a dequantized float32 GEMM.
    """

    def __init__(self, linear: nn.Linear, kernel: bool, native: bool, int8_rows: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        absmax = weight.abs().amax(dim=1)
        codes, scale = int8_row_codes(weight, 127, absmax)
        self.register_buffer("weight", codes)
        self.compute_dtype = torch.bfloat16 if native else torch.float32
        self.register_buffer("scale", scale.to(self.compute_dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # torch 2.13's CPU kernel reads 16 input columns at a time: other widths crash or compute garbage (measured);
        # the weight is this module's own int8 buffer, dense and aligned as the kernel's aligned loads need.
        self.packed = kernel and linear.in_features % 16 == 0 and linear.in_features > 0
        # the kernel takes bfloat16 scales: a copy only where `scale` is float32 (no native bfloat16)
        needs_copy = self.packed and self.compute_dtype != torch.bfloat16
        self.register_buffer("kernel_scale", scale.to(torch.bfloat16) if needs_copy else None)
        self.int8_rows = int8_rows and not native
        # the many-row products' own codes (|w| <= 64, see glactl/ops/int8_rows.py), packed by the first such call
        self._row_codes = int8_row_codes(weight, ROW_WEIGHT_MAX, absmax) if self.int8_rows else None
        self._rows_weight: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= INT8PACK_MAX_ROWS and self.packed:
            # The AVX512 kernel does aligned 32-byte loads of every input row: a view that starts at another offset
            # segfaults (measured), so the kernel always gets a fresh, dense (64-byte aligned) bfloat16 copy.
            dense = flat.to(torch.bfloat16, memory_format=torch.contiguous_format, copy=True)
            scale = self.scale if self.kernel_scale is None else self.kernel_scale
            y = torch.ops.aten._weight_int8pack_mm(dense, self.weight, scale)
        elif (
            self.int8_rows
            and not (torch.compiler.is_compiling() or torch.compiler.is_exporting())
            and self._pack_rows()
        ):
            y = int8_rows_matmul(flat.float(), self._rows_weight)
        else:
            # many rows (a perplexity window): dequantize once per call, one GEMM (bfloat16 where native)
            weight = (self.weight.to(self.scale.dtype) * self.scale[:, None]).to(self.compute_dtype)
            y = F.linear(flat.to(self.compute_dtype), weight)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def _pack_rows(self) -> bool:
        """Pack the many-row codes for fbgemm on first use; False (and float32 from then on) if torch cannot."""
        if self._rows_weight is None:
            self._rows_weight = pack_int8_rows(*self._row_codes)
            self.int8_rows, self._row_codes = self._rows_weight is not None, None  # the packed copy is all it needs
        return self.int8_rows


class BFloat16Linear(nn.Module):
    """A Linear whose weight (and bias) is bfloat16; float32 in and out."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        self.bias = (
            None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


class TransposedLinear(nn.Module):
    """A float32 Linear that keeps its weight transposed, [in, out], for CPUs: the same products, faster at one row.

    MKL's one-row product `x @ W.T` reads W [out, in] as one dot product per output and streams a model's
    weights from memory at about half the rate of `x @ Wt` with Wt [in, out] dense, which adds rows of Wt
    into one output vector (measured: benchmarks/RESULTS.md, section 8c); many rows run at the same speed.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Swap every nn.Linear of `model` for its `precision` copy in place; returns the model.

    float32 keeps the weights as they are, transposed on CPUs (TransposedLinear). The embedding stays
    float32 (a lookup reads one row per token); a head tied to it gets its own copy.
    """
    dtype = next(model.parameters()).dtype
    if (
        dtype != torch.float32
    ):  # a float64 reference model (tests, glactl.storage.checkpoint loaders) keeps its exact weights
        model.precision = str(dtype).replace("torch.", "")
        return model
    model.precision = precision
    device = next(model.parameters()).device
    if precision == "float32" and device.type != "cpu":
        return model
    native, kernel, rows = native_bf16(device), int8_kernel_vectorized(device), int8_rows_available(device)
    copies: dict[str, Callable[[nn.Linear], nn.Module]] = {
        "float32": TransposedLinear,
        "bfloat16": BFloat16Linear,
        "int8": lambda child: Int8Linear(child, kernel, native, rows),
    }
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, copies[precision](child).to(child.weight.device))
    return model

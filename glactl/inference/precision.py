"""Inference speed: the weights' format at run time (--precision) and a compiled decode step (--compile).

Both leave the checkpoint alone: precision swaps a model's nn.Linear layers for int8, bfloat16 or
(float32 on CPUs) transposed copies at load time; compile turns `LanguageModel.step` into an AOTInductor package for one batch size.
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
- compile auto: for mixers whose step state holds tensors only (GLA, minGRU, minLSTM, Performer),
  on CPU: build the package for a run of at least COMPILE_MIN_STEPS decode steps (the compile costs
  tens of seconds once, and is kept for later runs); use an already cached package for a run of at
  least CACHED_MIN_STEPS (finding it hashes the weights, ~0.05 s for the shipped model, and loading
  it ~0.07 s: that pays after ~50 steps of ~2 ms saved each). Never on other devices.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
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
COMPILE_CHOICES = ("auto", "on", "off")
INT8PACK_MAX_ROWS = 16  # above this many rows a dequantized bfloat16 GEMM beats the int8 weight-only kernel
COMPILE_MIN_STEPS = 1000  # auto: fewer decode steps than this never pay for a compile (see module docstring)
CACHED_MIN_STEPS = 64  # auto: a package already cached is used from this many decode steps on
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


# ---- compiled step -------------------------------------------------------------------------
def configure(model: nn.Module, compile: str = "off") -> None:
    """Record the --compile choice on a loaded model; `stepper` reads it."""
    model.compile_choice = check_choice("--compile", compile, COMPILE_CHOICES)


def should_compile(model: nn.Module, batch: int, steps: int) -> bool:
    """Whether `stepper` compiles for a run of `steps` decode steps of `batch` rows (the --compile rule)."""
    choice = getattr(model, "compile_choice", "off")
    if choice == "off" or getattr(model, "_compile_failed", False):
        return False
    if model.config.mixer not in COMPILED_MIXERS or next(model.parameters()).device.type != "cpu":
        if choice == "on":
            note(
                f"--compile on: the {model.config.mixer} step on {next(model.parameters()).device.type} stays eager "
                f"(compiled: {', '.join(COMPILED_MIXERS)} on CPU)"
            )
        return False
    if choice == "on" or steps >= COMPILE_MIN_STEPS:
        return True
    return steps >= CACHED_MIN_STEPS and package_path(model, batch).is_file()


def stepper(model: nn.Module, batch: int, steps: int) -> Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]:
    """`model.step`, compiled for `batch` rows when the rule says so (smaller batches are padded to it)."""
    if not should_compile(model, batch, steps):
        return model.step
    cache = model.__dict__.setdefault("_compiled_steps", {})
    key = (batch, torch.get_num_threads())  # a package runs the thread count it was built for
    if key not in cache:
        cache[key] = CompiledStep(model, batch)
    return cache[key]


class CompiledStep:
    """model.step compiled ahead of time (AOTInductor) for exactly `batch` rows; any failure: eager, one note.

    The compiled package (kernels and weights in one .pt2) is cached under $GLACTL_CACHE/aoti, keyed by
    the model's config, weights, precision, batch, torch and glactl versions, the CPU's vector
    capability and torch's thread count; a later process loads it through torch's C++ loader in well
    under a second, with no dynamo tracing and no import of torch._inductor (which torch.compile pays on
    every start).
    """

    def __init__(self, model: nn.Module, batch: int) -> None:
        self.model, self.batch = model, batch
        self.compiled: Callable[..., Any] | None = None
        self._paddings: dict[int, torch.Tensor] = {}

    @property
    def ran_compiled(self) -> bool:
        """Whether the steps so far ran the compiled package (False before the first step and after a fallback)."""
        return self.compiled is not None and not getattr(self.model, "_compile_failed", False)

    def _padding(self, rows: int, device: torch.device) -> torch.Tensor:
        """Batch rows 0..rows-1, then row 0 repeated up to the compiled batch (built once per row count)."""
        if rows not in self._paddings:
            pad = torch.zeros(self.batch - rows, dtype=torch.long)
            self._paddings[rows] = torch.cat([torch.arange(rows), pad]).to(device)
        return self._paddings[rows]

    def _build(self) -> Callable[..., Any]:
        path = package_path(self.model, self.batch)
        if path.is_file():
            try:
                return load_package(path)
            except Exception:  # noqa: BLE001 - a damaged cache file (a full disk, another torch): build it again
                path.unlink(missing_ok=True)
        if sys.stderr.isatty():  # progress for a person waiting; scripts see only what went wrong
            sys.stderr.write(f"glactl: compiling the decode step once for this model (cached in {path.parent})\n")
        build_package(self.model, self.batch, path)
        return load_package(path)

    def __call__(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        if getattr(self.model, "_compile_failed", False):
            return self.model.step(tokens, state)
        rows = tokens.shape[0]
        if rows > self.batch:
            return self.model.step(tokens, state)
        if self.compiled is None and not _tensors_only(state):
            self.model._compile_failed = True  # a Python number in the state would need a package per position
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
            note(
                f"compiling the decode step failed ({type(e).__name__}{': ' + reason if reason else ''}); running eager"
            )
            return self.model.step(tokens, state)


class _StepModule(nn.Module):
    """`model.step` as a module's forward, which is what torch.export takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.model.step(tokens, state)


def package_path(model: nn.Module, batch: int) -> Path:
    """$GLACTL_CACHE/aoti/<key>.pt2, the key a hash of everything the compiled step depends on."""
    import hashlib
    import json

    from glactl import __version__
    from glactl.data.training_data import cache_root

    # inductor writes the thread count into every parallel loop it generates: a package built for 1 thread
    # never uses a second one, and one built for 2 would run 2 under --threads 1, so the count is in the key
    about = {
        "config": model.config.to_dict(),
        "precision": getattr(model, "precision", "float32"),
        "batch": batch,
        "torch": torch.__version__,
        "glactl": __version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "weights": weights_digest(model),
    }
    digest = hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()
    return cache_root() / "aoti" / f"step-{digest[:32]}.pt2"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every weight byte of a loaded model, hashed once (its weights do not change at inference)."""
    import hashlib

    if "_weights_digest" not in model.__dict__:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        model.__dict__["_weights_digest"] = digest.hexdigest()
    return model.__dict__["_weights_digest"]


def build_package(model: nn.Module, batch: int, path: Path) -> None:
    """Export the step for `batch` rows and compile it into `path` (written whole or not at all)."""
    from glactl.data.training_data import cache_root

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    import torch._inductor

    tokens = torch.zeros(batch, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(_StepModule(model).eval(), (tokens, model.init_state(batch)), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.tmp-{os.getpid()}.pt2")  # renamed over `path` once whole
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter while packaging is not the user's concern
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_package(path: Path) -> Callable[..., Any]:
    """The compiled step of `path` as a function (tokens, state) -> (logits, state), via torch's C++ loader."""
    from torch.utils import _pytree as pytree

    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    in_spec, out_spec = (pytree.treespec_loads(spec) for spec in loader.get_call_spec())

    checked = False

    def run(tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        nonlocal checked
        flat, spec = pytree.tree_flatten(((tokens, state), {}))
        if not checked:  # the package returns states of the structure it takes: one check is enough
            if spec != in_spec:
                raise ValueError("the state's structure differs from the compiled one")
            checked = True
        # The package reads its inputs with the strides it was exported with (dense, from init_state); a state
        # from the parallel form or from the package itself may be a strided view, so it is made dense here.
        return pytree.tree_unflatten(loader.boxed_run([t.contiguous() for t in flat]), out_spec)

    return run


def _tensors_only(state: Any) -> bool:
    """Whether every leaf of a nested state is a tensor (or None)."""
    if isinstance(state, dict):
        return all(_tensors_only(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_tensors_only(v) for v in state)
    return state is None or isinstance(state, torch.Tensor)

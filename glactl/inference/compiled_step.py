"""The compiled decode step (--compile): `LanguageModel.step` as an AOTInductor package for one batch size, cached on disk.

Like --precision (inference/precision.py) it leaves the checkpoint alone. Rule measured on the 2-core AMD EPYC
(AVX512-BF16, no AMX), shipped gla-enwiki, 1 thread (benchmarks/RESULTS.md, section "Inference speed"):
- compile auto: for mixers whose step state holds tensors only (GLA, minGRU, minLSTM, Performer, and the
  Transformer and Reflex with a window, whose decode form is a preallocated window and a position tensor),
  on CPU: build the package for a run of at least COMPILE_MIN_STEPS decode steps (the compile costs
  tens of seconds once, and is kept for later runs); use an already cached package for a run of at
  least CACHED_MIN_STEPS (finding it hashes the weights, ~0.05 s for the shipped model, and loading
  it ~0.07 s: that pays after ~50 steps of ~2 ms saved each). Never on other devices. Once a package is
  ready, auto times it against eager steps on this machine and keeps whichever is faster, a verdict cached
  for later runs (compile_check.py).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from glactl.inference.compile_check import cached_verdict, compiled_pays
from glactl.inference.precision import check_choice, note

COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_STEPS = 1000  # auto: fewer decode steps than this never pay for a compile (see module docstring)
CACHED_MIN_STEPS = 64  # auto: a package already cached is used from this many decode steps on
COMPILED_MIXERS = ("gla", "mingru", "minlstm", "performer", "transformer", "reflex")  # step states of tensors only


def configure(model: nn.Module, compile: str = "off") -> None:
    """Record the --compile choice on a loaded model; `stepper` reads it."""
    model.compile_choice = check_choice("--compile", compile, COMPILE_CHOICES)


def should_compile(model: nn.Module, batch: int, steps: int) -> bool:
    """Whether `stepper` compiles for a run of `steps` decode steps of `batch` rows (the --compile rule)."""
    choice = getattr(model, "compile_choice", "off")
    if choice == "off" or getattr(model, "_compile_failed", False):
        return False
    if (
        model.config.mixer not in COMPILED_MIXERS
        or next(model.parameters()).device.type != "cpu"
        or (model.config.mixer in ("transformer", "reflex") and model.config.context is None)  # a growing cache
    ):
        if choice == "on":
            note(
                f"--compile on: the {model.config.mixer} step on {next(model.parameters()).device.type} stays eager "
                f"(compiled: {', '.join(COMPILED_MIXERS)} on CPU)"
            )
        return False
    if choice == "on":
        return True
    if cached_verdict(model, batch) is False:  # eager measured faster here (compile_check.py)
        return False
    return steps >= COMPILE_MIN_STEPS or (steps >= CACHED_MIN_STEPS and package_path(model, batch).is_file())


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
        self.compile_seconds = 0.0  # spent compiling the package (not loading a cached one): not decoding time
        self._paddings: dict[int, torch.Tensor] = {}
        self._padded: tuple[Any, Any] | None = None  # (the padded state the package returned, the rows handed back)
        self.eager_faster = False  # --compile auto timed this package against eager steps here, and eager won

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
            sys.stderr.flush()
        began = time.perf_counter()
        try:
            build_package(self.model, self.batch, path)
        finally:
            self.compile_seconds += time.perf_counter() - began
        return load_package(path)

    def prepare(self, state: Any) -> bool:
        """Make the package ready (load it, or compile it once) before the first step; False where steps run eager.

        Generation calls it before its first byte, so the compile note comes before any text and its time
        stays out of the decoding speed.
        """
        if self.compiled is None and not self.eager_faster and not getattr(self.model, "_compile_failed", False):
            state = decode_form(self.model, state)
            if not _tensors_only(state):
                self.model._compile_failed = True  # a Python number in the state would need a package per position
                note(f"the {self.model.config.mixer} state holds Python numbers; its step runs eager")
            else:
                try:
                    self.compiled = self._build()
                except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform, a backend bug: eager still works
                    self._fall_back(e)
                if self.compiled is not None and getattr(self.model, "compile_choice", "off") == "auto":
                    if not compiled_pays(self.model, self.batch, self.compiled):
                        self.compiled, self.eager_faster = None, True
        return self.ran_compiled

    def _fall_back(self, error: Exception) -> None:
        """Run eager from now on, and say why once."""
        self.model._compile_failed = True
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        note(
            f"compiling the decode step failed ({type(error).__name__}{': ' + reason if reason else ''}); running eager"
        )

    def __call__(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        rows = tokens.shape[0]
        if rows > self.batch or not self.prepare(state):
            return self.model.step(tokens, state)
        assert self.compiled is not None
        kept = self._padded
        continuing = kept is not None and kept[1] is state  # the rows this object handed back last step
        state = decode_form(self.model, state)
        if rows < self.batch and _holds_windows(state):
            # Padded rows attend over full windows too: one transformer-enwiki row padded to 16 ran 53-56 tokens/s
            # compiled against 258-307 eager, so attention windows step eager below the compiled batch.
            return self.model.step(tokens, state)
        try:
            if rows == self.batch:
                return self.compiled(tokens, state)
            from glactl.models.state import map_state, select_state

            # Fewer rows than compiled: pad with copies of row 0 (their outputs are dropped). The padded state is
            # kept, so the next step from the rows handed back continues it instead of copying every row's
            # state again: one gla-enwiki row padded to 16 steps at 155-162 tokens/s against 134-139.
            index = self._padding(rows, tokens.device)
            padded = kept[0] if continuing else select_state(state, index)
            logits, new_state = self.compiled(tokens[index], padded)
            rows_state = map_state(new_state, lambda t: t[:rows] if t.dim() else t)
            self._padded = (new_state, rows_state)
            return logits[:rows], rows_state
        except Exception as e:  # noqa: BLE001 - a backend bug at run time: eager still works
            self._fall_back(e)
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

    from glactl.runtime.cache import cache_root
    from glactl.version import __version__

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
    from glactl.runtime.cache import cache_root

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))
    import torch._inductor

    tokens = torch.zeros(batch, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = decode_form(model, model.init_state(batch))
        program = torch.export.export(_StepModule(model).eval(), (tokens, state), strict=False)
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


def decode_form(model: nn.Module, state: Any) -> Any:
    """The state in the form the step runs on (`LanguageModel.decode_state`: a window cache preallocated)."""
    convert = getattr(model, "decode_state", None)
    return convert(state) if convert is not None else state


def _holds_windows(state: Any) -> bool:
    """Whether a model state holds an attention window in its decode form (large, batch-first)."""
    from glactl.models.attention import is_decode_form

    return isinstance(state, (list, tuple)) and any(is_decode_form(layer) for layer in state)


def _tensors_only(state: Any) -> bool:
    """Whether every leaf of a nested state is a tensor (or None)."""
    if isinstance(state, dict):
        return all(_tensors_only(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_tensors_only(v) for v in state)
    return state is None or isinstance(state, torch.Tensor)

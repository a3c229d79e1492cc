"""Loading a model for the API: a run, checkpoint folder or shipped name, at a device, precision and window."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from glactl.api.model import Model
from glactl.errors import InputError


def load(
    path_or_name: str | os.PathLike | None = None,
    device: str = "auto",
    threads: int | tuple[int, ...] | None = None,
    context: int | None = None,
    kernels: str | None = None,
    precision: str = "float32",
    compile: str = "off",
    work: str = "decode",
) -> Model:
    """Load a run folder, checkpoint folder or shipped model (default: the shipped gla-enwiki).

    `precision` (auto, float32, bfloat16, int8) is the weights' format at run time and `compile`
    (auto, on, off) whether decoding runs a compiled step (glactl/inference/compiled_step.py); the library's
    defaults are the exact ones, float32 and eager; the command line defaults to auto for both. `work`
    ("decode" or "score") is what auto precision is measured for on this machine, once per model shape
    (glactl/inference/calibration.py). `threads` is a count, None (torch's), or several counts for auto to
    choose among with the precision (the first where it does not measure; a count above 1 is capped at the idle
    cores); the CLI gives two unless --threads gives one (runtime/threads.thread_choices).

    `context` overrides the attention window W in tokens (sliding window for attention models;
    no effect on recurrent ones). `kernels="fla"` runs GLA's chunk form through flash-linear-attention
    (CUDA only; an InputError where it cannot run).
    """
    import torch

    from glactl.inference.calibration import calibrate
    from glactl.inference.compiled_step import COMPILE_CHOICES, configure
    from glactl.inference.precision import PRECISION_CHOICES, apply_precision, check_choice, resolve_precision
    from glactl.runtime.devices import select_device, select_kernels, use_kernels
    from glactl.runtime.threads import affordable, set_threads, torch_threads
    from glactl.storage.checkpoint import load_model
    from glactl.storage.model_paths import model_name, resolve_model

    counts = (threads,) if threads is None or isinstance(threads, int) else tuple(threads)
    if not counts or any(c is not None and (isinstance(c, bool) or not isinstance(c, int)) for c in counts):
        raise InputError(f"threads: give a count, or several for --precision auto to choose among, got {threads!r}")
    threads = counts[0]
    set_threads(threads)
    torch_device = select_device(device)
    kernel_choice = select_kernels(kernels, torch_device)
    check_choice("--compile", compile, COMPILE_CHOICES)
    run_precision = resolve_precision(precision, torch_device)
    measure = check_choice("--precision", precision, PRECISION_CHOICES) == "auto" and torch_device.type == "cpu"
    folder = resolve_model(path_or_name)
    calibration = None
    # One thread unless asked: copying 43 MB is no work to share, and on a busy 2-core machine a second
    # thread made loading the shipped model 5x slower (0.96 s against 0.18 s).
    with torch_threads(1 if threads is None else threads):
        model, document = load_model(folder, device="cpu")
        if context is not None:
            model = _with_context(model, context)
        use_kernels(model.to(torch_device), kernel_choice)
        parameters = model.num_parameters()  # the checkpoint's count: int8 weights are buffers, a tied head gets a copy
        if measure and model.dtype == torch.float32:
            timed = counts if threads is not None else (1 if work == "decode" else torch.get_num_threads(),)
            calibration = calibrate(model, work, timed)
            if calibration is not None:
                run_precision = calibration.precision
                if threads is not None and calibration.threads != threads:
                    threads = affordable(calibration.threads)
        apply_precision(model, run_precision)
    if threads is not None and threads != torch.get_num_threads():
        set_threads(threads)  # the count auto measured as faster
    configure(model, compile)
    document["precision"] = model.precision
    document["parameters"] = parameters
    loaded = Model(model, document, torch_device, threads, model_name(path_or_name, folder))
    loaded.calibration = calibration
    return loaded


def _with_context(model: Any, context: int) -> Any:
    """The same weights in a model whose config has attention window `context`."""
    from glactl.models import LanguageModel

    if isinstance(context, bool) or int(context) != context or not 1 <= context <= 1 << 24:
        raise InputError(f"--context must be a positive number of tokens, got {context}")
    config = dataclasses.replace(model.config, context=int(context))
    weights = next(model.parameters())
    rebuilt = LanguageModel(config.validate()).to(device=weights.device, dtype=weights.dtype)  # keep the loaded dtype
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()

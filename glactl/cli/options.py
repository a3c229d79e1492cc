"""The options several commands share, declared once as Annotated types with their help texts.

A command writes `model: ModelOption = None`; labels and choices follow click's help conventions (glactl/cli/app.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def choices(*names: str) -> str:
    """The help label of an option that takes one of `names`: [a|b|c], as click writes it."""
    return "[" + "|".join(names) + "]"


def one_spelling(value: Any, old: Any, flag: str, old_flag: str) -> Any:
    """The value of an option given as `flag` or as its old spelling `old_flag` (hidden from --help, still accepted)."""
    if value is not None and old is not None and value != old:
        from glactl.errors import InputError

        raise InputError(f"give {flag} once ({old_flag} is its old spelling)")
    return value if value is not None else old


ARCHITECTURES = "gla, transformer, performer, infinite, reflex, mingru, minlstm, lstm, gru"
MODEL_HELP = "A trained model: run folder, checkpoint folder or shipped model name (default: the shipped gla-enwiki)."
_DEVICE_CHOICES = choices("auto", "cpu", "cuda", "mps")
_DEVICE_HELP = "Where to run; auto takes cuda, then mps, then cpu; cuda:N picks a GPU (default auto)."
_DTYPE_CHOICES = choices("auto", "float32", "bfloat16", "float16")
_DTYPE_HELP = (
    "Training precision. auto (the default) takes: on a CUDA GPU, bfloat16 where it supports it, else float16 "
    "with loss scaling; on a CPU with native bfloat16 (AVX512-BF16 or AMX), whichever of bfloat16 and float32 "
    "trains this model faster (timed over a few passes once, then cached); on other CPUs and on mps, float32. "
    "float16 is refused on CPUs. The log says which dtype runs."
)
_THREADS_HELP = (
    "CPU threads for torch. Default: OMP_NUM_THREADS if it is set; otherwise, with --precision auto, the faster "
    "of 1 and the cores for decoding (generate, complete, serve) and of the idle cores and 1 for scoring, "
    "timed once with the precision and cached; else 1 for decoding, and for scoring and training one per "
    "core that other work leaves idle (stderr says how many)."
)
_KERNEL_CHOICES = choices("torch", "fla")
_KERNELS_HELP = "GLA kernels: torch, or fla (flash-linear-attention; CUDA only, needs the fla package) (default torch)."
_CONTEXT_HELP = "Attention window in tokens (default: the model's training length); no effect on recurrent models."
PRECISION_CHOICES = choices("auto", "float32", "bfloat16", "int8")
_PRECISION_HELP = (
    "Weights' format at run time (default auto: the fastest on this machine within 0.01 bits per byte of float32, "
    "measured once per model shape and cached; see glactl info --machine). States stay float32."
)
COMPILE_CHOICES = choices("auto", "on", "off")
_COMPILE_HELP = (
    "Compile the decoding step ahead of time with AOTInductor, cached for later runs (default auto: for runs "
    "of 1000 or more steps of GLA, minGRU, minLSTM, Performer, or a windowed Transformer or Reflex on CPU, "
    "kept only where it times faster than eager steps here; falls back to eager with a note where it "
    "cannot)."
)
_STATE_HELP = 'Continue from a state file (written by --save-state) instead of the usual "\\n" start: the input is read after the text the state holds.'
_SHORT_CONV_HELP = (
    "Kernel size of GLA's short causal convolution on q, k, v for a new model: 0 = off, or 2..64 "
    "(default: the architecture's; models without one refuse a value above 0)."
)
_PERFORMER_ROPE_HELP = "Rotary positions on the Performer's q and k for a new model (default: the architecture's)."

ModelOption = Annotated[str | None, typer.Option("--model", "-m", metavar="MODEL", help=MODEL_HELP)]
DeviceOption = Annotated[str | None, typer.Option("--device", metavar=_DEVICE_CHOICES, help=_DEVICE_HELP)]
DtypeOption = Annotated[str | None, typer.Option("--dtype", metavar=_DTYPE_CHOICES, help=_DTYPE_HELP)]
ThreadsOption = Annotated[int | None, typer.Option("--threads", help=_THREADS_HELP)]
KernelsOption = Annotated[str | None, typer.Option("--kernels", metavar=_KERNEL_CHOICES, help=_KERNELS_HELP)]
PrecisionOption = Annotated[str | None, typer.Option("--precision", metavar=PRECISION_CHOICES, help=_PRECISION_HELP)]
CompileOption = Annotated[str | None, typer.Option("--compile", metavar=COMPILE_CHOICES, help=_COMPILE_HELP)]
ContextOption = Annotated[int | None, typer.Option("--context", help=_CONTEXT_HELP)]
StateOption = Annotated[str | None, typer.Option("--state", metavar="FILE", help=_STATE_HELP)]
ShortConvOption = Annotated[int | None, typer.Option("--short-conv", help=_SHORT_CONV_HELP)]
PerformerRopeOption = Annotated[
    bool | None, typer.Option("--performer-rope/--no-performer-rope", help=_PERFORMER_ROPE_HELP)
]

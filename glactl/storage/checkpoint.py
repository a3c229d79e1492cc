"""Checkpoints: a folder of safetensors + JSON, saved by swapping whole folders, loaded with checks.

Layout (docs/design.md §5): `model.safetensors` (weights only), `config.json` (format version,
architecture, tokenizer, training summary), and for resuming `optimizer.safetensors` +
`trainer.json`. Nothing is ever unpickled. A save writes a complete new folder beside the
old one and swaps them with renames, so an interruption at any moment leaves a whole one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.atomic import swap_in_folder, write_json
from glactl.storage.safe_read import DTYPES, read_json, read_safetensors_header
from glactl.tokenizer import TOKENIZER_NAME
from glactl.version import __version__

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"
_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


# ---- locating a checkpoint ---------------------------------------------------------------
def resolve_checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its `checkpoint/`).

    A folder interrupted mid-swap leaves `NAME.old` only: that one is used.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise InputError(f"{path}: refusing a pickle-based file; glactl loads only safetensors checkpoint folders")
        if path.name in (MODEL_FILE, CONFIG_FILE):
            return resolve_checkpoint_dir(path.parent)
        raise InputError(f"{path}: not a checkpoint folder (expected a folder with {MODEL_FILE} and {CONFIG_FILE})")
    for candidate in (path, path / "checkpoint"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if (old / CONFIG_FILE).is_file() and not candidate.exists():
            return old
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint or run folder")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES) if path.is_dir() else []
    if pickles:
        raise InputError(
            f"{path}: holds only pickle-based weights ({', '.join(pickles[:3])}), which glactl refuses to load; "
            f"it loads only safetensors checkpoint folders ({CONFIG_FILE} + {MODEL_FILE})"
        )
    from glactl.storage.model_paths import training_pid

    pid = training_pid(path) if path.is_dir() else None
    if pid is not None:
        raise InputError(
            f"{path}: training is in progress (glactl train, pid {pid}) and has not saved a checkpoint yet; "
            "it saves every --save-every steps and when it stops"
        )
    raise InputError(
        f"{path}: no checkpoint here (expected {CONFIG_FILE} and {MODEL_FILE}, or a run folder with checkpoint/)"
    )


# ---- saving ------------------------------------------------------------------------------
def model_config_json(model: LanguageModel, training: dict[str, Any] | None, weights_dtype: str) -> dict[str, Any]:
    """The config.json document of a checkpoint."""
    return {
        "format_version": FORMAT_VERSION,
        "glactl_version": __version__,
        "architecture": model.config.to_dict(),
        "tokenizer": TOKENIZER_NAME,
        "weights_dtype": weights_dtype,
        "training": training or {},
    }


def model_tensors(model: LanguageModel, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors saved for a model: its state dict without the tied head, contiguous, on CPU."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    return {
        name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype).contiguous()
        for name, t in state.items()
    }


def save_model(
    target: str | Path,
    model: LanguageModel,
    training: dict[str, Any] | None = None,
    weights_dtype: str = "float32",
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Save a checkpoint folder atomically; `extra_files(folder)` may add optimizer/trainer files."""
    if weights_dtype not in _DTYPE_NAMES:
        raise InputError(f"weights dtype {weights_dtype!r}: choose one of {', '.join(_DTYPE_NAMES)}")

    def write(folder: Path) -> None:
        tensors = model_tensors(model, _DTYPE_NAMES[weights_dtype])
        save_file(tensors, str(folder / MODEL_FILE), metadata={"format": "pt"})
        write_json(folder / CONFIG_FILE, model_config_json(model, training, weights_dtype))
        if extra_files is not None:
            extra_files(folder)

    swap_in_folder(Path(target), write, marker=CONFIG_FILE)
    return Path(target)


def read_config(folder: Path) -> dict[str, Any]:
    """The validated config.json of a checkpoint folder (architecture checked, nothing allocated)."""
    document = read_json(folder / CONFIG_FILE, "config.json")
    if not isinstance(document, dict):
        raise InputError(f"{folder / CONFIG_FILE}: not a JSON object")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(
            f"{folder / CONFIG_FILE}: unsupported format_version {version!r} (this glactl reads 1..{FORMAT_VERSION})"
        )
    tokenizer = document.get("tokenizer", TOKENIZER_NAME)
    if tokenizer != TOKENIZER_NAME:
        raise InputError(f"{folder / CONFIG_FILE}: unsupported tokenizer {tokenizer!r}")
    try:
        config = ModelConfig.from_dict(document.get("architecture"))
    except InputError as e:
        raise InputError(f"{folder / CONFIG_FILE}: {e}") from None
    except TypeError as e:
        raise InputError(f"{folder / CONFIG_FILE}: bad architecture ({e})") from None
    if not isinstance(document.get("training", {}), dict):
        raise InputError(f"{folder / CONFIG_FILE}: 'training' must be an object")
    document["architecture"] = config
    return document


# torch.nn.init functions skipped while building a model whose weights a checkpoint overwrites (as transformers'
# no_init_weights does): drawing 10M random numbers costs 0.15 s, and normal_ on the meta device imports
# torch._dynamo (2 s) on first use.
_INIT_FUNCTIONS = (
    "normal_",
    "uniform_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "trunc_normal_",
    "zeros_",
    "ones_",
    "constant_",
    "orthogonal_",
)


@contextlib.contextmanager
def skip_random_init() -> Iterator[None]:
    """Build modules without filling their weights (torch.empty contents), for weights loaded right after."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in saved:
            setattr(torch.nn.init, name, keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes a checkpoint of this architecture holds, from a meta-device model (no allocation)."""
    with torch.device("meta"), skip_random_init():
        model = LanguageModel(config)
    return {name: tuple(t.shape) for name, t in model_tensors_meta(model).items()}


def model_tensors_meta(model: LanguageModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("head.weight", None)
    return state


def check_tensors(path: Path, header: dict[str, Any], config: ModelConfig, weights_dtype: str | None = None) -> None:
    """Every tensor's name, shape (and dtype, if given) must match the config; one line naming the mismatches."""
    expected = expected_tensors(config)
    found = {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
    problems = []
    if weights_dtype is not None:
        code = {v: k for k, v in DTYPES.items()}[_DTYPE_NAMES[weights_dtype]]
        off = sorted(n for n in set(expected) & set(found) if header[n]["dtype"] != code)
        if off:
            problems.append(f"wrong dtype {_names(off)} ({header[off[0]]['dtype']}, config.json says {weights_dtype})")
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    if wrong:
        problems.append(
            "wrong shape " + ", ".join(f"{n} {list(found[n])} (expected {list(expected[n])})" for n in wrong[:3])
        )
    if problems:
        raise InputError(f"{path}: weights do not match config.json: {'; '.join(problems)}")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[LanguageModel, dict[str, Any]]:
    """Load a checkpoint (folder or run folder) as a float32 model in eval mode, with its config document.

    Every failure is an InputError with one line: wrong names/shapes/dtypes, truncation, NaN/inf.
    """
    folder = resolve_checkpoint_dir(path)
    document = read_config(folder)
    config: ModelConfig = document["architecture"]
    weights_path = folder / MODEL_FILE
    weights_dtype = document.get("weights_dtype", "float32")
    if not isinstance(weights_dtype, str) or weights_dtype not in _DTYPE_NAMES:
        raise InputError(
            f"{folder / CONFIG_FILE}: weights_dtype {weights_dtype!r} is not one of {', '.join(_DTYPE_NAMES)}"
        )
    header = read_safetensors_header(weights_path)
    check_tensors(weights_path, header, config, weights_dtype)
    with skip_random_init():
        model = LanguageModel(config)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise InputError(
            f"{weights_path}: unreadable weights ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if config.tie_embeddings:
        tensors["head.weight"] = tensors["embed.weight"]
    model.load_state_dict(tensors, strict=True)  # copy_ converts bfloat16/float16 to the model's float32 in one pass
    loaded = model.state_dict()
    for name in tensors:
        tensor = loaded[name]
        # aminmax propagates NaN and inf; on the float32 copy it is far faster than isfinite().all() on bfloat16
        if tensor.is_floating_point() and tensor.numel() and not torch.isfinite(torch.stack(tensor.aminmax())).all():
            raise InputError(f"{weights_path}: tensor {name!r} holds NaN or inf values")
    model.to(device)
    model.eval()
    document["path"] = str(folder)
    return model, document

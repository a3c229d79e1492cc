"""Where a model comes from: `--model` as a run/checkpoint folder or a shipped name, or the default weights."""

from __future__ import annotations

import os
from pathlib import Path

from glactl.errors import InputError

DEFAULT_WEIGHTS = "gla-enwiki"
LOCK_FILE = "train.lock"  # held by `glactl train` while it runs (glactl.training.run_folder.RunLock)
NO_WEIGHTS_MESSAGE = "no shipped weights found; pass --model RUN_OR_CHECKPOINT_FOLDER"


def weights_dirs() -> list[Path]:
    """Folders that may hold shipped checkpoints: package data first, then `weights/` beside the repo."""
    dirs: list[Path] = []
    try:
        from importlib.resources import files

        package = files("glactl") / "weights"
        if package.is_dir():
            dirs.append(Path(str(package)))
    except (ModuleNotFoundError, TypeError, OSError):
        pass
    repo_weights = Path(__file__).resolve().parents[2] / "weights"
    if repo_weights.is_dir() and repo_weights not in dirs:
        dirs.append(repo_weights)
    return dirs


def shipped_model(name: str) -> Path | None:
    """The folder of a shipped checkpoint called `name`, or None."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    for folder in weights_dirs():
        candidate = folder / name
        if (candidate / "config.json").is_file():
            return candidate
    return None


def shipped_names() -> list[str]:
    """Names of every shipped checkpoint found."""
    names = {p.name for folder in weights_dirs() for p in folder.iterdir() if (p / "config.json").is_file()}
    return sorted(names)


def resolve_model(path_or_name: str | Path | None) -> Path:
    """The folder to load: an existing path as given, else a shipped name, else InputError (one line)."""
    if path_or_name is None or str(path_or_name) == "":
        found = shipped_model(DEFAULT_WEIGHTS)
        if found is None:
            raise InputError(NO_WEIGHTS_MESSAGE)
        return found
    path = Path(path_or_name).expanduser()
    if path.exists():
        return path
    found = shipped_model(str(path_or_name))
    if found is not None:
        return found
    shipped = shipped_names()
    loadable = "; ".join(
        filter(
            None,
            [
                f"shipped: {', '.join(shipped)}" if shipped else "",
                f"runs: {', '.join(str(r) for r in local_runs())}" if local_runs() else "",
            ],
        )
    )
    from glactl.models.registry import MIXERS

    if str(path_or_name) in MIXERS:
        raise InputError(
            f"{path_or_name} is an architecture (what train --arch takes), not a trained model; "
            f"--model here loads weights: a run folder, checkpoint folder or shipped name"
            + (f" ({loadable})" if loadable else " (none found: train one with glactl train)")
        )
    hint = f" ({loadable})" if loadable else ""
    raise InputError(f"{path_or_name}: no such run or checkpoint folder; pass a folder or a shipped name{hint}")


def model_name(path_or_name: str | os.PathLike | None, folder: Path) -> str:
    """What --model takes to load `folder` again: its shipped name, or the path as it was given."""
    shipped = shipped_model(folder.name)
    if shipped is not None and shipped.resolve() == folder.resolve():
        return folder.name
    return os.fspath(path_or_name) if path_or_name is not None else str(folder)


def local_runs(root: Path = Path("runs"), limit: int = 8) -> list[Path]:
    """Run folders under ./runs that hold a checkpoint, newest first (at most `limit`)."""
    try:
        runs = [
            p for p in root.iterdir() if (p / "checkpoint" / "config.json").is_file() or (p / "config.json").is_file()
        ]
    except OSError:
        return []
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]


def training_pid(folder: Path) -> int | None:
    """The pid of a live `glactl train` holding `folder`'s train.lock, or None."""
    try:
        pid = int((Path(folder) / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if pid != os.getpid() else None

"""Files and folders written whole or not at all: JSON renamed over its target, folders swapped in by renames,
so an interruption at any moment leaves the previous version or the new one."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glactl.errors import InputError, RunFailure


def folder_writable(folder: Path) -> bool:
    """Whether new files can be made in `folder` (write and search permission, and not a read-only mount)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_folder(path: str | os.PathLike, label: str) -> Path:
    """InputError (one line, starting with `label`) unless files can be made in folder `path` or the nearest one above.

    Checked before any work, so an unwritable --out or --save-state folder costs nothing (docs/design.md §6).
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not folder_writable(existing):
        shown = os.path.abspath(existing) if str(existing) == "." else str(existing)
        raise InputError(f"{label}: cannot create files in {shown} (no write permission, or a read-only file system)")
    return path


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON beside `path`, then rename over it: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def write_bytes_whole(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path` (`replace`), or link it in
    only where `path` does not exist yet (False if it does): a reader never sees half a file. OSError as raised."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temporary, path)
            return True
        try:
            os.link(temporary, path)  # fails where the file exists: never replaces another writer's file
        except FileExistsError:
            return False
        return True
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, document: Any) -> None:
    """Write JSON and fsync it (used inside a folder that is swapped in afterwards)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def swap_in_folder(target: Path, write_contents: Callable[[Path], None], marker: str) -> None:
    """Write a complete folder beside `target`, then swap it in: target -> .old, new -> target, drop .old.

    A folder holding the file `marker` is complete; one without it is a leftover of an interrupted save.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.new-{os.getpid()}")
    old = target.with_name(target.name + ".old")
    if staging.exists():
        shutil.rmtree(staging)
    _remove_stale_staging(target)
    try:
        staging.mkdir()
        write_contents(staging)
        _fsync_dir(staging)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, quota, read-only file system: the old folder was never touched
            kept = "the previous one is intact" if (target / marker).is_file() else "nothing was saved"
            raise RunFailure(f"could not save {target}: {e.strerror or e}; {kept}") from None
        raise
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    elif old.exists() and not (old / marker).is_file():
        shutil.rmtree(old)
    os.replace(staging, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def _remove_stale_staging(target: Path) -> None:
    """Drop `NAME.new-PID` folders left by a saving process that was killed (kill -9, power loss)."""
    for folder in target.parent.glob(f"{target.name}.new-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

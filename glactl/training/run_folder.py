"""A training run's folder: `metrics.jsonl`, `train.lock` while training, `checkpoint/` (latest, with optimizer and
trainer.json) and `best/` (lowest validation score); its lock keeps a second `glactl train` out of it."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

try:
    import fcntl as _fcntl
except ImportError:  # Windows: the pid file alone
    _fcntl = None  # type: ignore[assignment]

from glactl.errors import InputError
from glactl.storage.checkpoint import resolve_checkpoint_dir
from glactl.storage.model_paths import LOCK_FILE
from glactl.storage.trainer_state import read_trainer
from glactl.training.options import TrainOptions

METRICS_FILE = "metrics.jsonl"
RUN_ENTRIES = ("checkpoint", "checkpoint.old", "best", "best.old", METRICS_FILE)


class RunLock:
    """`train.lock` holding the pid: a live holder refuses a second run; a dead one's lock is taken over.

    Where the OS has flock (Linux, macOS) the holder also keeps an exclusive flock on the file:
    the kernel drops it when the process dies, so a lock is stale exactly when nobody holds the
    flock, and a lock whose pid is not written yet is not mistaken for a stale one.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        if _fcntl is not None:
            return self._acquire_flock()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise InputError(
                        f"{self.path.parent}: another glactl train (pid {pid}) is using this run folder"
                    ) from None
                try:
                    self.path.unlink()  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise InputError(f"{self.path}: could not take the run lock")

    def _acquire_flock(self) -> None:
        for _ in range(5):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid = None
                for _ in range(20):  # the holder may be between taking the lock and writing its pid
                    pid = _read_pid(self.path)
                    if pid is not None:
                        break
                    time.sleep(0.05)
                who = f"pid {pid}" if pid is not None else "pid not yet written"
                raise InputError(f"{self.path.parent}: another glactl train ({who}) is using this run folder") from None
            try:  # a holder that was releasing may have unlinked the file we locked: then lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)  # whatever pid a dead holder left
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            self.held = True
            return
        raise InputError(f"{self.path}: could not take the run lock")

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink()  # while still holding the flock, so nobody takes a file about to vanish
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        elif self.held and _read_pid(self.path) == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_run_folder(options: TrainOptions, mixer: str) -> Path:
    """The run folder: created, or checked for --resume / --force."""
    out = Path(options.out) if options.out else Path("runs") / f"{mixer}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _has_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_ENTRIES)


def claim_run_folder(options: TrainOptions, out: Path, is_main: bool) -> tuple[Path | None, dict[str, Any]]:
    """The checkpoint a --resume continues and its trainer.json; else `out` emptied of an earlier run (--force)."""
    o = options
    saved: dict[str, Any] = {}
    resume_dir: Path | None = None
    if o.resume and o.force:
        raise InputError("--resume and --force contradict each other: --resume continues, --force starts over")
    if o.resume:
        if o.init_from:
            raise InputError("--resume continues a run; --init-from starts a new one from other weights: pick one")
        try:
            resume_dir = resolve_checkpoint_dir(out / "checkpoint")
        except InputError:
            raise InputError(f"--resume: {out} has no checkpoint to resume from") from None
        saved = read_trainer(resume_dir)
    elif _has_run(out):
        if not o.force:
            raise InputError(f"--out {out}: already holds a run; pass --resume to continue it or --force to start over")
        for name in RUN_ENTRIES if is_main else ():
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return resume_dir, saved

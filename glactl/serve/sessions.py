"""Sessions: model states kept on disk under unguessable ids, each change checked against the version it started from.

DIR/<id>.state is the --save-state file (glactl/storage/state_file.py: the bytes a download returns) and
DIR/<id>.json its version, times and sizes; both are replaced whole (temporary file, then rename) under an
fcntl lock on DIR/<id>.lock, so two servers on one folder never corrupt a session, and a write whose base
version is no longer the stored one raises SessionConflict. An id is checked by a full match before any path
is built from it. At most `max_in_memory` readings stay in memory (least recently used out); the rest load
from disk on demand, checked like --state.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from glactl.errors import InputError, RunFailure
from glactl.inference.reading import Reading
from glactl.models.layers import tensor_nbytes
from glactl.storage.atomic import write_json_atomic
from glactl.storage.safe_read import read_json
from glactl.storage.state_file import State, StateOwner, load_state, save_state

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{24}")  # secrets.token_urlsafe(18): 18 random bytes, 24 characters


class SessionConflict(Exception):
    """Another writer changed the session since it was read (HTTP 409)."""


def check_id(session_id: Any) -> str:
    """The id itself when it has the form of a session id; ValueError otherwise (an id never names another path)."""
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise ValueError("not a session id")
    return session_id


class SessionStore:
    """Sessions of one model in `folder` (created if missing); safe from several threads and several processes.

    `model` (the api Model or its torch module) is what states read back from disk are checked against.
    """

    def __init__(self, folder: Path, owner: StateOwner, max_in_memory: int = 64, *, model: Any) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self.module = getattr(model, "model", model)
        self.max_in_memory = max(0, int(max_in_memory))
        self._memory: OrderedDict[str, tuple[Reading, str]] = OrderedDict()  # id -> (reading, the write it came from)
        self._lock = threading.Lock()

    # ---- files and locks -----------------------------------------------------------------------
    def _file(self, session_id: str, suffix: str) -> Path:
        return self.folder / f"{check_id(session_id)}{suffix}"

    def path(self, session_id: str) -> Path:
        """The session's state file (the --save-state format), for download; ValueError for a malformed id."""
        return self._file(session_id, ".state")

    @contextmanager
    def _locked(self, session_id: str, exclusive: bool) -> Iterator[None]:
        """Hold the session's lock file (shared for reading); a lock file deleted meanwhile is opened again."""
        path = self._file(session_id, ".lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                try:
                    current = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    yield
                    return
            finally:
                os.close(fd)  # closing the descriptor releases its lock

    def _meta(self, session_id: str) -> dict[str, Any]:
        """The session's record (version, write, created, updated, bytes_read, state_bytes); KeyError if there is none."""
        path = self._file(session_id, ".json")
        if not path.is_file():
            raise KeyError(session_id)
        try:
            document = read_json(path, "session record")
        except InputError as e:  # removed meanwhile, or damaged: not the caller's input
            if not path.is_file():
                raise KeyError(session_id) from None
            raise RunFailure(str(e)) from None
        if not isinstance(document, dict) or not isinstance(document.get("version"), int) or "write" not in document:
            raise RunFailure(f"{path}: not a session record")
        return document

    def _write(self, session_id: str, reading: Reading, version: int, created: int | None = None) -> None:
        """Write the state, then its record (each whole); the caller holds the exclusive lock."""
        try:
            save_state(State(reading, self.owner), self._file(session_id, ".state"))
        except InputError as e:  # no space or permission in the sessions folder: a server failure
            raise RunFailure(str(e)) from None
        now, write = int(time.time()), secrets.token_hex(8)
        record = {
            "version": version,
            "write": write,  # unique per write: a session deleted and made again elsewhere is never taken for this one
            "created": now if created is None else created,
            "updated": now,
            "bytes_read": int(reading.bytes_read),
            "state_bytes": int(tensor_nbytes(reading.state)),
        }
        write_json_atomic(self._file(session_id, ".json"), record)
        self._remember(session_id, reading, write)

    def _remember(self, session_id: str, reading: Reading, write: str) -> None:
        with self._lock:
            self._memory[session_id] = (reading, write)
            self._memory.move_to_end(session_id)
            while len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)

    # ---- the interface -------------------------------------------------------------------------
    def create(self, reading: Reading) -> str:
        """A new session holding `reading`, written at once; returns its unguessable id."""
        while True:
            session_id = secrets.token_urlsafe(18)
            if not self._file(session_id, ".json").exists():
                break
        with self._locked(session_id, exclusive=True):
            self._write(session_id, reading, 1)
        return session_id

    def get(self, session_id: str) -> tuple[Reading, int]:
        """(reading, version); KeyError if unknown, ValueError if the id is malformed."""
        self._meta(session_id)  # unknown ids end here, before a lock file is made for them
        with self._locked(session_id, exclusive=False):
            record = self._meta(session_id)
            with self._lock:
                kept = self._memory.get(session_id)
            if kept is not None and kept[1] == record["write"]:
                reading = kept[0]
            else:
                reading = load_state(self.path(session_id), self.module, self.owner).reading
        self._remember(session_id, reading, record["write"])
        return reading, record["version"]

    def put(self, session_id: str, reading: Reading, version: int) -> int:
        """Store `reading` if the session is still at `version` (else SessionConflict); returns the new version."""
        self._meta(session_id)
        with self._locked(session_id, exclusive=True):
            record = self._meta(session_id)
            if record["version"] != version:
                raise SessionConflict(
                    f"session {session_id} is at version {record['version']}, not {version}: it changed meanwhile"
                )
            self._write(session_id, reading, version + 1, record.get("created"))
        return version + 1

    def delete(self, session_id: str) -> None:
        """Remove the session's files; KeyError if unknown."""
        self._meta(session_id)
        with self._locked(session_id, exclusive=True):
            self._meta(session_id)
            for suffix in (".json", ".state", ".lock"):  # the record first: without it the session is gone
                self._file(session_id, suffix).unlink(missing_ok=True)
            with self._lock:
                self._memory.pop(session_id, None)

    def info(self, session_id: str) -> dict[str, Any]:
        """{"id", "bytes_read", "state_bytes", "model", "version", "created", "updated"}; "model" as a state file records it."""
        self._meta(session_id)
        with self._locked(session_id, exclusive=False):
            record = self._meta(session_id)
        owner = self.owner
        model = {"mixer": owner.mixer, "config_sha256": owner.config_sha256, "weights_sha256": owner.weights_sha256}
        keys = ("bytes_read", "state_bytes", "version", "created", "updated")
        return {"id": session_id, "model": model, **{key: record.get(key) for key in keys}}

    def upload(self, session_id: str | None, data: bytes) -> str:
        """Store an uploaded state file, checked like --state (never unpickled; InputError in one line if it does not
        fit this store's model), as a new session (id None) or as the given one; returns the id."""
        if session_id is not None:
            check_id(session_id)
        upload = self.folder / f".upload-{secrets.token_hex(8)}.state"
        try:
            upload.write_bytes(bytes(data))
            reading = load_state(upload, self.module, self.owner).reading
        except InputError as e:
            raise InputError(str(e).replace(str(upload), "uploaded state")) from None
        finally:
            upload.unlink(missing_ok=True)
        if session_id is None:
            return self.create(reading)
        with self._locked(session_id, exclusive=True):
            try:
                record = self._meta(session_id)
                self._write(session_id, reading, record["version"] + 1, record.get("created"))
            except KeyError:
                self._write(session_id, reading, 1)
        return session_id

    def __len__(self) -> int:
        return sum(1 for path in self.folder.glob("*.json") if SESSION_ID.fullmatch(path.stem))

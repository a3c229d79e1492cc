"""Sessions: model states kept on disk under unguessable ids, each change checked against the version it started from.

DIR/<id>.session is one file per session (glactl/serve/session_file.py): its record (version, times, sizes)
and its --save-state file, packed losslessly. A file is replaced whole (temporary file, then rename) while
its writer holds an exclusive fcntl lock on the file it replaces, so two servers on one folder never
corrupt a session, and a write whose base version is no longer the stored one raises SessionConflict. An
id is checked by a full match before any path is built from it. At most `max_in_memory` readings stay in
memory (least recently used out); the rest load from disk on demand, checked like --state.
"""

from __future__ import annotations

import fcntl
import json
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
from glactl.serve.session_file import pack, read_record, read_state_file
from glactl.storage.atomic import write_bytes_whole
from glactl.storage.state_file import State, StateOwner, state_file_bytes, state_from_bytes

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
        self._writing = threading.Lock()
        self._adopt_split_sessions()

    def _adopt_split_sessions(self) -> None:
        """Sessions stored in the earlier two-file layout (<id>.state beside its record <id>.json) become
        one file each, unchanged in content."""
        for record_path in self.folder.glob("*.json"):
            session_id, state_path = record_path.stem, record_path.with_suffix(".state")
            if not SESSION_ID.fullmatch(session_id) or not state_path.is_file():
                continue
            try:
                record = json.loads(record_path.read_text(encoding="utf-8"))
                if isinstance(record, dict) and isinstance(record.get("version"), int):
                    self._put_file(session_id, pack(record, state_path.read_bytes()), replace=False)
                    for suffix in (".json", ".state", ".lock"):
                        record_path.with_suffix(suffix).unlink(missing_ok=True)
            except (OSError, ValueError, RunFailure):
                continue  # left as it is: unreadable, or another server took it meanwhile

    # ---- files and locks -----------------------------------------------------------------------
    def path(self, session_id: str) -> Path:
        """The session's file; ValueError for a malformed id."""
        return self.folder / f"{check_id(session_id)}.session"

    @contextmanager
    def _locked(self, session_id: str, exclusive: bool) -> Iterator[dict[str, Any]]:
        """Hold a lock on the session's file (shared for reading) and give its record; KeyError if there is none.

        A writer replaces the file while holding the exclusive lock on it, so a lock taken on a file that has
        been replaced meanwhile is dropped and taken again on the current one.
        """
        path = self.path(session_id)
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise KeyError(session_id) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                try:
                    current = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    raise KeyError(session_id) from None
                if current:
                    yield self._record(path)
                    return
            finally:
                os.close(fd)  # closing the descriptor releases its lock

    @staticmethod
    def _record(path: Path) -> dict[str, Any]:
        """The session's record (version, write, created, updated, bytes_read, state_bytes)."""
        try:
            record = read_record(path)
        except OSError as e:
            raise RunFailure(f"{path}: cannot read the session ({e.strerror or type(e).__name__})") from None
        if not isinstance(record.get("version"), int) or not isinstance(record.get("write"), str):
            raise RunFailure(f"{path}: not a session record")
        return record

    def _write(self, session_id: str, reading: Reading, version: int, created: int | None, replace: bool) -> bool:
        """Write `reading` as the session at `version`: over the old file (`replace`; the caller holds its exclusive
        lock) or only where there is none yet (False if there is one).

        One state is packed at a time: packing copies the state about three times over, and those copies from
        several threads at once would raise the memory the server keeps for good (docs/serve.md).
        """
        with self._writing:
            data, write = self._packed(reading, version, created)
        written = self._put_file(session_id, data, replace)  # the write and its fsync need no turn
        if written:
            self._remember(session_id, reading, write)
        return written

    def _packed(self, reading: Reading, version: int, created: int | None) -> tuple[bytes, str]:
        """(the session file's bytes, its write token) for `reading` at `version`."""
        now, write = int(time.time()), secrets.token_hex(8)
        record = {
            "version": version,
            "write": write,  # unique per write: a session deleted and made again elsewhere is never taken for this one
            "created": now if created is None else created,
            "updated": now,
            "bytes_read": int(reading.bytes_read),
            "state_bytes": int(tensor_nbytes(reading.state)),
        }
        return pack(record, state_file_bytes(State(reading, self.owner))), write

    def _put_file(self, session_id: str, data: bytes, replace: bool) -> bool:
        """Write the session file whole: over the old one, or only where there is none (False if there is one)."""
        path = self.path(session_id)
        try:
            return write_bytes_whole(path, data, replace)
        except OSError as e:  # no space or permission in the sessions folder: a server failure
            raise RunFailure(f"{path}: could not write the session ({e.strerror or type(e).__name__})") from None

    def _remember(self, session_id: str, reading: Reading, write: str) -> None:
        with self._lock:
            self._memory[session_id] = (reading, write)
            self._memory.move_to_end(session_id)
            while len(self._memory) > self.max_in_memory:
                self._memory.popitem(last=False)

    def _load(self, session_id: str) -> Reading:
        """The reading in the session's file (the caller holds its lock), checked like --state."""
        path = self.path(session_id)
        try:
            return state_from_bytes(read_state_file(path), str(path), self.module, self.owner).reading
        except OSError as e:
            raise RunFailure(f"{path}: cannot read the session ({e.strerror})") from None
        except InputError as e:  # a stored state that no longer fits: the store's fault, not the request's
            raise RunFailure(str(e)) from None

    # ---- the interface -------------------------------------------------------------------------
    def create(self, reading: Reading) -> str:
        """A new session holding `reading`, written at once; returns its unguessable id."""
        while True:
            session_id = secrets.token_urlsafe(18)
            if self._write(session_id, reading, 1, None, replace=False):
                return session_id

    def get(self, session_id: str) -> tuple[Reading, int]:
        """(reading, version); KeyError if unknown, ValueError if the id is malformed."""
        with self._locked(session_id, exclusive=False) as record:
            with self._lock:
                kept = self._memory.get(session_id)
            reading = kept[0] if kept is not None and kept[1] == record["write"] else self._load(session_id)
        self._remember(session_id, reading, record["write"])
        return reading, record["version"]

    def put(self, session_id: str, reading: Reading, version: int) -> int:
        """Store `reading` if the session is still at `version` (else SessionConflict); returns the new version."""
        with self._locked(session_id, exclusive=True) as record:
            if record["version"] != version:
                raise SessionConflict(
                    f"session {session_id} is at version {record['version']}, not {version}: it changed meanwhile"
                )
            self._write(session_id, reading, version + 1, record.get("created"), replace=True)
        return version + 1

    def delete(self, session_id: str) -> None:
        """Remove the session's file; KeyError if unknown."""
        with self._locked(session_id, exclusive=True):
            self.path(session_id).unlink()
            with self._lock:
                self._memory.pop(session_id, None)

    def info(self, session_id: str) -> dict[str, Any]:
        """{"id", "bytes_read", "state_bytes", "file_bytes", "model", "version", "created", "updated"}; "model" as a
        state file records it."""
        with self._locked(session_id, exclusive=False) as record:
            file_bytes = self.path(session_id).stat().st_size
        owner = self.owner
        model = {"mixer": owner.mixer, "config_sha256": owner.config_sha256, "weights_sha256": owner.weights_sha256}
        keys = ("bytes_read", "state_bytes", "version", "created", "updated")
        return {"id": session_id, "model": model, "file_bytes": file_bytes, **{key: record.get(key) for key in keys}}

    def state_file(self, session_id: str) -> bytes:
        """The session's state as a --save-state file (for download); KeyError if unknown."""
        with self._locked(session_id, exclusive=False):
            return read_state_file(self.path(session_id))

    def upload(self, session_id: str | None, data: bytes) -> str:
        """Store an uploaded state file, checked like --state (never unpickled; InputError in one line if it does not
        fit this store's model), as a new session (id None) or as the given one; returns the id."""
        if session_id is not None:
            check_id(session_id)
        reading = state_from_bytes(bytes(data), "uploaded state", self.module, self.owner).reading
        if session_id is None:
            return self.create(reading)
        while True:
            try:
                with self._locked(session_id, exclusive=True) as record:
                    self._write(session_id, reading, record["version"] + 1, record.get("created"), replace=True)
                return session_id
            except KeyError:  # a new session under the given id, unless another writer made it meanwhile
                if self._write(session_id, reading, 1, None, replace=False):
                    return session_id

    def __len__(self) -> int:
        return sum(1 for path in self.folder.glob("*.session") if SESSION_ID.fullmatch(path.stem))

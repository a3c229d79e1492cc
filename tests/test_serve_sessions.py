"""Sessions: unguessable ids checked before any path is built, exact continuation after a restart, versions that
refuse stale writers (also across two stores on one folder), the memory bound, and uploads checked like --state."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import rel_err

import glactl
from glactl.errors import InputError, RunFailure
from glactl.inference.sampling import SamplingParams
from glactl.models import LanguageModel, ModelConfig
from glactl.serve.engine import Engine, Job
from glactl.serve.session_file import pack, read_record, read_state_file
from glactl.serve.sessions import SESSION_ID, SessionConflict, SessionStore
from glactl.storage.checkpoint import save_model

TEXT_A = "Sessions keep a state: caf\u00e9 \u4e2d\u6587 and the rest of a long text ".encode()
TEXT_B = b"that goes on later.\nEnd"
CONFIGS = {
    "gla": ModelConfig.tiny(mixer="gla", d_model=32, n_layers=2, n_heads=4, gla_gate_rank=4),
    "transformer": ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=4, context=24, sink_tokens=2),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("session-models")
    out = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(30 + i)
        out[name] = save_model(root / name, LanguageModel(config).double(), training={"steps": 0})
    torch.manual_seed(99)  # the gla config with other weights
    out["gla-other"] = save_model(root / "gla-other", LanguageModel(CONFIGS["gla"]).double(), training={"steps": 0})
    return out


@pytest.fixture
def load(folders: dict[str, Path], float64_loading: None) -> Any:
    return lambda name: glactl.load(folders[name], threads=1)


def store_for(model: Any, folder: Path, max_in_memory: int = 64) -> SessionStore:
    return SessionStore(folder, model.state_owner(), max_in_memory, model=model)


def whole_logits(model: Any, data: bytes) -> torch.Tensor:
    with torch.inference_mode():
        return model.model(torch.tensor([list(b"\n" + data)]))[0][0, -1]


@pytest.mark.parametrize("name", CONFIGS)
def test_a_session_continues_exactly_after_the_store_is_recreated(name: str, load: Any, tmp_path: Path) -> None:
    model = load(name)
    engine = Engine(model, prompt_chunk=11)
    engine.start()
    try:
        session = store_for(model, tmp_path).create(engine.read(TEXT_A))
        reading, version = store_for(model, tmp_path).get(session)  # a new store on the folder: a restarted server
        assert version == 1 and reading.bytes_read == len(TEXT_A)
        assert reading.tail == (b"\n" + TEXT_A)[-64:]
        done = engine.submit(Job(TEXT_B, 0, SamplingParams(), start=reading, keep_reading=True)).result()
        assert rel_err(done.reading.logits, whole_logits(model, TEXT_A + TEXT_B)) < 1e-10
        # The same seed samples the same text from the session as after the whole text.
        params = SamplingParams(temperature=1.2, repetition_penalty=1.2)
        continued = engine.submit(Job(TEXT_B, 30, params, seed=9, start=reading, keep_reading=True)).result()
        whole = engine.submit(Job(TEXT_A + TEXT_B, 30, params, seed=9)).result()
        assert continued.text == whole.text
        # The session moves on to the reading after the completion, and a later store continues from there.
        store_for(model, tmp_path).put(session, continued.reading, version)
        after, version = store_for(model, tmp_path).get(session)
        assert version == 2 and after.bytes_read == continued.reading.bytes_read
        assert rel_err(after.logits, continued.reading.logits) < 1e-12
    finally:
        engine.close()


def test_ids_are_unguessable_and_checked_before_any_path(load: Any, tmp_path: Path) -> None:
    model = load("gla")
    store = store_for(model, tmp_path / "sessions")
    ids = {store.create(model.read(TEXT_A).reading) for _ in range(3)}
    assert len(ids) == 3 and all(SESSION_ID.fullmatch(i) and len(i) == 24 for i in ids)
    assert len(store) == 3
    before = sorted(p.name for p in (tmp_path / "sessions").iterdir())
    malformed = [
        "../" + "a" * 21,
        "a" * 23,
        "a" * 25,
        "a" * 23 + "/",
        "a" * 23 + ".",
        "a" * 23 + "\n",
        "",
        "\uff41" * 24,
    ]
    for bad in [*malformed, None, 12]:
        for call in (store.get, store.delete, store.info, store.path, lambda i: store.put(i, None, 1)):
            with pytest.raises(ValueError):
                call(bad)
        if bad is not None:  # None asks for a new id
            with pytest.raises(ValueError):
                store.upload(bad, b"")
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == before  # nothing was created
    unknown = "A" * 24
    for call in (store.get, store.delete, store.info):
        with pytest.raises(KeyError):
            call(unknown)
    with pytest.raises(KeyError):
        store.put(unknown, model.read(TEXT_A).reading, 1)
    assert not list((tmp_path / "sessions").glob(f"{unknown}*"))


def test_versions_refuse_a_stale_writer_also_in_another_store(load: Any, tmp_path: Path) -> None:
    model = load("gla")
    first, second = store_for(model, tmp_path), store_for(model, tmp_path)  # two servers on one folder
    reading_a, reading_ab = model.read(TEXT_A).reading, model.read(TEXT_A + TEXT_B).reading
    session = first.create(reading_a)
    _, seen_by_first = first.get(session)
    _, seen_by_second = second.get(session)
    assert first.put(session, reading_ab, seen_by_first) == 2
    with pytest.raises(SessionConflict):
        second.put(session, reading_a, seen_by_second)
    reading, version = second.get(session)  # the second store reads the new version from disk
    assert version == 2 and reading.bytes_read == len(TEXT_A + TEXT_B)
    assert second.put(session, reading_a, version) == 3
    info = first.info(session)
    assert set(info) == {"id", "bytes_read", "state_bytes", "file_bytes", "model", "version", "created", "updated"}
    assert (info["id"], info["version"], info["bytes_read"]) == (session, 3, len(TEXT_A))
    assert info["model"]["mixer"] == "gla" and info["state_bytes"] > 0 and info["updated"] >= info["created"]
    # Threads racing from one version: exactly one write wins.
    outcomes: list[str] = []

    def write() -> None:
        try:
            first.put(session, reading_ab, 3)
            outcomes.append("stored")
        except SessionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["stored"]
    assert first.get(session)[1] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert [p.name for p in tmp_path.iterdir()] == [f"{session}.session"]  # one file per session
    record = read_record(tmp_path / f"{session}.session")
    assert record["version"] == 4 and record["bytes_read"] == len(TEXT_A + TEXT_B)
    first.delete(session)
    with pytest.raises(KeyError):
        second.get(session)
    # Deleted and made again at the same version by the other store: the first never serves its old reading.
    again = first.create(reading_a)
    assert first.get(again)[1] == 1
    second.delete(again)
    second.upload(again, model.read(TEXT_B).save(tmp_path.parent / f"{tmp_path.name}-b.state").read_bytes())
    assert first.get(again)[0].bytes_read == len(TEXT_B) and first.get(again)[1] == 1
    first.delete(again)
    assert len(second) == 0 and not list(tmp_path.iterdir())


def test_at_most_max_in_memory_readings_stay_in_memory(load: Any, tmp_path: Path) -> None:
    model = load("gla")
    store = store_for(model, tmp_path, max_in_memory=2)
    readings = [model.read(TEXT_A[: 10 + i]).reading for i in range(3)]
    ids = [store.create(reading) for reading in readings]
    assert store.get(ids[2])[0] is readings[2]  # recent: still in memory
    loaded = store.get(ids[0])[0]  # least recently used: read back from its file
    assert loaded is not readings[0] and rel_err(loaded.logits, readings[0].logits) < 1e-12
    assert loaded.bytes_read == readings[0].bytes_read and loaded.tail == readings[0].tail
    assert store.get(ids[0])[0] is loaded


class _Exploit:
    """Unpickling this writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_uploads_are_checked_like_state_files(load: Any, tmp_path: Path) -> None:
    model = load("gla")
    store = store_for(model, tmp_path / "sessions")
    good = model.read(TEXT_A).save(tmp_path / "good.state").read_bytes()
    session = store.upload(None, good)
    reading, version = store.get(session)
    assert version == 1 and rel_err(reading.logits, whole_logits(model, TEXT_A)) < 1e-12
    # The download is a state file that glactl loads (--state) to the same reading.
    (tmp_path / "download.state").write_bytes(store.state_file(session))
    assert rel_err(model.load_state(tmp_path / "download.state").logits, reading.logits) == 0
    # Uploading to a known id replaces its state as a new version; to an unknown well-formed id creates it.
    assert store.upload(session, model.read(TEXT_B).save(tmp_path / "b.state").read_bytes()) == session
    assert store.get(session)[0].bytes_read == len(TEXT_B) and store.info(session)["version"] == 2
    named = "N" * 24
    assert store.upload(named, good) == named and store.info(named)["version"] == 1
    hostile = {
        "pickle": pickle.dumps(_Exploit(tmp_path / "pwned")),
        "torch zip": b"PK\x03\x04" + b"\0" * 100,
        "random bytes": bytes(range(256)) * 40,
        "text": b"just some text, not a state\n" * 10,
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "another model": load("transformer").read(TEXT_A).save(tmp_path / "t.state").read_bytes(),
        "other weights": load("gla-other").read(TEXT_A).save(tmp_path / "o.state").read_bytes(),
    }
    for name, data in hostile.items():
        with pytest.raises(InputError) as info:
            store.upload(None, data)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path) not in message and message.startswith("uploaded state"), name
    assert not (tmp_path / "pwned").exists()
    assert len(store) == 2 and not [p for p in (tmp_path / "sessions").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("size", [1, 3, 4, 1001, 65_536])
def test_a_session_file_gives_back_the_exact_state_file(tmp_path: Path, size: int) -> None:
    data = torch.randn(size, generator=torch.Generator().manual_seed(size)).numpy().tobytes()[:size]
    path = tmp_path / "s.session"
    path.write_bytes(pack({"version": 7, "write": "w"}, data))
    assert read_state_file(path) == data and read_record(path) == {"version": 7, "write": "w"}


def test_a_damaged_session_file_is_refused_in_one_line(tmp_path: Path) -> None:
    good = pack({"version": 1, "write": "w"}, b"\x01\x02\x03\x04" * 1000)
    head_end = 16 + int.from_bytes(good[8:16], "little")  # magic, the head's length, the head
    damaged = {
        "not a session": b"a text file\n" * 10,
        "truncated": good[: len(good) - 10],
        "head too long": good[:8] + (1 << 40).to_bytes(8, "little") + good[16:],
        "state larger than recorded": good.replace(b'"state_file_bytes": 4000', b'"state_file_bytes": 3999'),
        "bytes after the state": good + b"\0" * 16,
        "not deflated": good[:head_end] + b"\0" * 100,
    }
    for name, data in damaged.items():
        path = tmp_path / f"{name}.session"
        path.write_bytes(data)
        with pytest.raises(RunFailure) as info:
            read_state_file(path)
            pytest.fail(f"read a session file with {name}")
        assert "\n" not in str(info.value) and str(path) in str(info.value), name


def test_a_session_of_the_shipped_gla_costs_less_disk_than_its_state(tmp_path: Path) -> None:
    model = glactl.load("gla-enwiki", threads=1)
    store = store_for(model, tmp_path)
    reading = model.read(b"The history of the city, its rivers and roads. " * 4).reading
    info = store.info(store.create(reading))
    assert info["state_bytes"] == 442_368 and info["file_bytes"] < 0.95 * info["state_bytes"]
    assert rel_err(store_for(model, tmp_path).get(info["id"])[0].logits, reading.logits) == 0


def test_sessions_in_the_two_file_layout_are_adopted(load: Any, tmp_path: Path) -> None:
    model = load("gla")
    session, reading = "A" * 24, model.read(TEXT_A).reading
    model.read(TEXT_A).save(tmp_path / f"{session}.state")
    record = {"version": 3, "write": "w", "created": 1, "updated": 2, "bytes_read": len(TEXT_A), "state_bytes": 1}
    (tmp_path / f"{session}.json").write_text(json.dumps(record))
    (tmp_path / f"{session}.lock").touch()
    store = store_for(model, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"{session}.session"]
    adopted, version = store.get(session)
    assert version == 3 and rel_err(adopted.logits, reading.logits) == 0 and adopted.bytes_read == len(TEXT_A)

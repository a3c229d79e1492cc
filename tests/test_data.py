"""The data layer: source parsing, caching, splits, Hugging Face layout, bad data, window sampling."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_file
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.data.hub import join_rows
from glactl.data.sources import SourceSpec, prepare_source, split_bytes
from glactl.data.training_data import load_training_data
from glactl.data.windows import Stream, WindowSampler, fixed_windows
from glactl.errors import InputError


def _text(n: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta\n"]
    return " ".join(words[i % len(words)] for i in range(n))


def test_source_spec_weights() -> None:
    assert SourceSpec.parse("data.txt") == SourceSpec("data.txt", None)
    assert SourceSpec.parse("data.txt@2.5") == SourceSpec("data.txt", 2.5)
    assert SourceSpec.parse("me@host/file.txt") == SourceSpec("me@host/file.txt", None)
    for bad in ("x@0", "x@-1", "x@nan", "@3"):
        with pytest.raises(InputError):
            SourceSpec.parse(bad)


def test_local_file_is_cached_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(_text(2000))
    first = prepare_source(str(path))
    assert not first.reused
    assert split_bytes(first, "train") == path.read_bytes()
    assert first.meta["sha256"]["train"] and (first.folder / "meta.json").is_file()
    second = prepare_source(str(path))
    assert second.reused and second.folder == first.folder
    path.write_text(_text(2100))  # a changed file is encoded again
    third = prepare_source(str(path))
    assert not third.reused and split_bytes(third, "train") == path.read_bytes()


def test_gzip_folder_and_glob(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one.txt").write_text("first file")
    with gzip.open(tmp_path / "d" / "two.txt.gz", "wt") as f:
        f.write("second file\n")
    folder = prepare_source(str(tmp_path / "d"))
    assert split_bytes(folder, "train") == b"first file\nsecond file\n"
    globbed = prepare_source(str(tmp_path / "d" / "*.txt"))
    assert split_bytes(globbed, "train") == b"first file"
    gz = prepare_source(str(tmp_path / "d" / "two.txt.gz"))
    assert split_bytes(gz, "train") == b"second file\n"


def test_single_file_split_by_position(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(_text(5000))
    n = path.stat().st_size
    data = load_training_data([str(path)], None, seq_len=32)
    train, valid = data.train[0], data.valid[0]
    assert len(train) + len(valid) == n
    assert len(valid) == max(-(-n // 100), 33)
    joined = np.asarray(train.tokens).tobytes() + np.asarray(valid.tokens).tobytes()
    assert joined == path.read_bytes()
    assert any("encoded" in m for m in data.messages)
    again = load_training_data([str(path)], None, seq_len=32)
    assert any(m.startswith("reusing") for m in again.messages)


def test_mixture_weights(tmp_path: Path) -> None:
    a, b, v = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "v.txt"
    a.write_text(_text(3000))
    b.write_text(_text(1000))
    v.write_text(_text(500))
    sized = load_training_data([str(a), str(b)], str(v), seq_len=16)
    assert sized.weights == [float(a.stat().st_size), float(b.stat().st_size)]
    assert len(sized.valid) == 1 and len(sized.valid[0]) == v.stat().st_size
    weighted = load_training_data([f"{a}@1", f"{b}@3"], str(v), seq_len=16)
    assert weighted.weights == [1.0, 3.0]
    sampler = WindowSampler(weighted.train, weighted.weights, 16, seed=0)
    picks = [s for step in range(50) for s, _ in sampler.windows(step, 40)]
    assert 0.68 < picks.count(1) / len(picks) < 0.82


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"short text", "too short"),
        (bytes(range(256)) * 40, "looks binary"),
        (b"ab\0\0\0\0" * 500, "looks binary"),
    ],
)
def test_bad_data(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_training_data([str(path)], None, seq_len=64)


def test_binary_allowed_and_short_with_valid(tmp_path: Path) -> None:
    binary = tmp_path / "bin.dat"
    binary.write_bytes(bytes(range(256)) * 40)
    data = load_training_data([str(binary)], None, seq_len=64, allow_binary=True)
    assert len(data.train[0]) > 0
    short, valid = tmp_path / "s.txt", tmp_path / "v.txt"
    short.write_text("just a few words")
    valid.write_text(_text(500))
    data = load_training_data([str(short)], str(valid), seq_len=64)
    with pytest.raises(InputError, match="shorter than one window"):
        WindowSampler(data.train, data.weights, 64, seed=0)


def test_missing_glob_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="matches no files"):
        prepare_source(str(tmp_path / "*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no text files"):
        prepare_source(str(tmp_path / "empty"))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), step=st.integers(0, 10**6))
def test_windows_are_a_pure_function_of_seed_and_step(seed: int, step: int) -> None:
    streams = [Stream("a", np.arange(1000, dtype=np.uint8)), Stream("b", np.arange(300, dtype=np.uint8))]
    sampler = WindowSampler(streams, [2.0, 1.0], seq_len=20, seed=seed)
    first = sampler.windows(step, 12)
    assert first == WindowSampler(streams, [2.0, 1.0], seq_len=20, seed=seed).windows(step, 12)
    for s, offset in first:
        assert 0 <= offset <= len(streams[s]) - 21
    x, y = sampler.batch(step, 12)
    assert x.shape == (12, 20) and torch.equal(x[:, 1:], y[:, :-1])
    # two data-parallel ranks split the same step's windows between them
    r0, r1 = sampler.batch(step, 6, rank=0, world=2), sampler.batch(step, 6, rank=1, world=2)
    assert torch.equal(torch.stack([r0[0], r1[0]], 1).reshape(12, 20), x)


def test_fixed_windows_are_stable_and_cover_streams() -> None:
    streams = [Stream("a", np.zeros(5000, np.uint8)), Stream("b", np.zeros(100, np.uint8))]
    chosen = fixed_windows(streams, [1.0, 1.0], 8, 32)
    assert chosen == fixed_windows(streams, [1.0, 1.0], 8, 32)
    assert {s for s, _ in chosen} == {0, 1}
    assert all(0 <= o <= len(streams[s]) - 33 for s, o in chosen)


def test_join_rows_reads_empty_rows_as_blank_lines() -> None:
    assert b"".join(join_rows(["", " = Title = \n", "", " text .\n", "no newline"])) == (
        b" \n = Title = \n \n text .\nno newline\n"
    )


@pytest.mark.shared_data
def test_hf_layout_matches_wikitext_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = shared_file("wikitext-103-raw/wiki.test.raw")
    folder = shared_file("hf-wikitext")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    prepared = prepare_source(f"{folder}:wikitext-103-raw-v1")
    assert prepared.meta["kind"] == "hf"
    assert split_bytes(prepared, "test") == raw.read_bytes()
    assert split_bytes(prepared, "validation") == (raw.parent / "wiki.valid.raw").read_bytes()
    with pytest.raises(InputError, match="no train split"):
        load_training_data([f"{folder}:wikitext-103-raw-v1"], None, seq_len=64)
    with pytest.raises(InputError, match="nope"):
        prepare_source(f"{folder}:nope")


def test_wikitext_offline_without_cache_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as info:
        prepare_source("wikitext-103")
    message = str(info.value)
    assert "\n" not in message and "--data PATH" in message and "wikitext-103" in message
    data_dir = Path(os.environ["GLACTL_CACHE"]) / "data"
    assert not data_dir.exists() or not any(p.name.startswith("wikitext-103-") for p in data_dir.iterdir())

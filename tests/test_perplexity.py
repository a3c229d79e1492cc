"""`glactl perplexity` and glactl.inference.scoring: exact log-likelihood, metrics, bad input, sliding context, memory."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import child_result, run_cli, start_child

from glactl.inference.scoring import METRIC_KEYS, Score, TextCounter, log_likelihood, score_bytes, score_file
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model

LN2 = math.log(2.0)
TEXT = (
    "The history of  the\tworld\n\nis long. Caf\u00e9 cr\u00e8me \u2014 na\u00efve r\u00e9sum\u00e9;\u00a0non-breaking\u3000ideographic "
    "space, emoji \U0001f600 and \u4e2d\u6587 text.\r\n  Trailing spaces   \n"
) * 3


@pytest.fixture(scope="module")
def gla_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("ppl") / "gla"
    save_model(
        folder,
        LanguageModel(ModelConfig.tiny(d_model=32, n_layers=2, n_heads=2, gla_gate_rank=4)),
        training={"steps": 0},
    )
    return folder


@pytest.fixture(scope="module")
def attention_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(12)
    folder = tmp_path_factory.mktemp("ppl") / "transformer"
    config = ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=2, context=32)
    save_model(folder, LanguageModel(config), training={"steps": 0})
    return folder


def direct_loglik(model: torch.nn.Module, data: bytes) -> float:
    """Sum of log p(byte_i | "\\n" + bytes before i) from ONE forward pass over the whole sequence."""
    idx = torch.tensor([list(b"\n" + data)], dtype=torch.long)
    with torch.no_grad():
        logits, _ = model(idx[:, :-1])
    logprobs = torch.log_softmax(logits[0].double(), dim=-1)
    return float(logprobs.gather(-1, idx[0, 1:, None]).sum())


def loglik_from_metrics(metrics: dict) -> float:
    return -metrics["bits_per_byte"] * metrics["bytes"] * LN2


def model64(folder: Path) -> torch.nn.Module:
    return load_model(folder)[0].double()


# ---- exact log-likelihood ------------------------------------------------------------------
@pytest.mark.parametrize("window", [1, 7, 64, 100, 4096])
def test_loglik_equals_one_full_forward_in_float64(gla_folder: Path, window: int) -> None:
    model = model64(gla_folder)
    data = TEXT.encode()[: 150 if window == 1 else None]
    assert len(data) > 100  # several windows for every window but the default
    reference = direct_loglik(model, data)
    assert log_likelihood(model, data, window) == pytest.approx(reference, rel=1e-8)
    score = score_bytes(model, data, window)
    assert score.loglik == pytest.approx(reference, rel=1e-8)
    assert loglik_from_metrics(score.metrics()) == pytest.approx(reference, rel=1e-8)


def test_cli_reported_loglik_matches_full_forward_across_windows(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    data = TEXT.encode()
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    reference = direct_loglik(model64(gla_folder), data)
    for window in ("37", "4096"):
        code, out, err = run_cli(
            ["perplexity", str(path), "--model", str(gla_folder), "--window", window, "--threads", "1", "--json"],
            capsys,
        )
        assert code == 0, err
        document = json.loads(out)
        assert document["window"] == int(window)
        assert loglik_from_metrics(document["files"][str(path)]) == pytest.approx(reference, rel=1e-8)
        assert loglik_from_metrics(document["total"]) == pytest.approx(reference, rel=1e-8)


def test_cli_float32_checkpoint_close_to_full_forward(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = TEXT.encode()
    path = tmp_path / "text.txt"
    path.write_bytes(data)
    reference = direct_loglik(load_model(gla_folder)[0], data)
    code, out, err = run_cli(
        [
            "perplexity",
            str(path),
            "--model",
            str(gla_folder),
            "--window",
            "50",
            "--threads",
            "1",
            "--json",
            "--precision",
            "float32",
            "--compile",
            "off",
        ],
        capsys,
    )  # auto may run int8 weights
    assert code == 0, err
    assert loglik_from_metrics(json.loads(out)["total"]) == pytest.approx(reference, rel=1e-5)


def test_first_byte_is_conditioned_on_newline(gla_folder: Path) -> None:
    model = model64(gla_folder)
    with torch.no_grad():
        logits, _ = model(torch.tensor([[ord("\n")]]))
    expected = float(torch.log_softmax(logits[0, 0].double(), -1)[ord("A")])
    assert score_bytes(model, b"A").loglik == pytest.approx(expected, rel=1e-12)


# ---- metrics and JSON shape --------------------------------------------------------------------
def test_json_has_exactly_the_metric_keys_and_harness_conventions(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    texts = {"a.txt": TEXT, "b.txt": "  leading and trailing whitespace \n\n", "c.txt": "one"}
    paths = []
    for name, text in texts.items():
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
        paths.append(str(tmp_path / name))
    code, out, err = run_cli(
        ["perplexity", *paths, "--model", str(gla_folder), "--window", "5", "--threads", "1", "--json"], capsys
    )
    assert code == 0, err
    document = json.loads(out)
    assert set(document["files"]) == set(paths)
    assert set(document["total"]) == set(METRIC_KEYS)
    assert set(METRIC_KEYS) == {
        "bits_per_byte",
        "bits_per_char",
        "byte_perplexity",
        "word_perplexity",
        "bytes",
        "chars",
        "words",
        "tokens_per_second",
    }
    model = model64(gla_folder)
    total_loglik = 0.0
    for path, text in zip(paths, texts.values()):
        metrics = document["files"][path]
        assert set(metrics) == set(METRIC_KEYS)
        data = text.encode()
        loglik = direct_loglik(model, data)
        total_loglik += loglik
        words = len(re.split(r"\s+", text))
        assert (metrics["bytes"], metrics["chars"], metrics["words"]) == (len(data), len(text), words)
        assert metrics["bits_per_byte"] == pytest.approx(-loglik / (len(data) * LN2), rel=1e-8)
        assert metrics["bits_per_char"] == pytest.approx(-loglik / (len(text) * LN2), rel=1e-8)
        assert metrics["byte_perplexity"] == pytest.approx(math.exp(-loglik / len(data)), rel=1e-8)
        assert metrics["word_perplexity"] == pytest.approx(math.exp(-loglik / words), rel=1e-8)
        assert metrics["tokens_per_second"] > 0
    total = document["total"]
    assert total["bytes"] == sum(len(t.encode()) for t in texts.values())
    assert total["chars"] == sum(len(t) for t in texts.values())
    assert total["words"] == sum(len(re.split(r"\s+", t)) for t in texts.values())
    assert loglik_from_metrics(total) == pytest.approx(total_loglik, rel=1e-8)
    assert document["notes"] == []
    # What ran, since the scores depend on it: the weights' precision, and the (always eager) path.
    assert set(document) == {"model", "precision", "compile", "window", "context", "files", "total", "notes"}
    assert document["precision"] == "float64" and document["compile"] == "eager"
    assert TEXT.encode() != TEXT.encode("latin-1", errors="ignore")  # the text has multi-byte characters
    assert document["files"][paths[0]]["bits_per_char"] > document["files"][paths[0]]["bits_per_byte"]


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 1000])
def test_text_counter_matches_whole_text_split_in_any_pieces(piece: int) -> None:
    data = TEXT.encode()
    counter = TextCounter()
    for start in range(0, len(data), piece):
        counter.feed(data[start : start + piece])
    counter.feed(b"", final=True)
    assert counter.chars == len(TEXT)
    assert counter.words == len(re.split(r"\s+", TEXT))
    assert counter.valid_utf8


def test_table_output_lists_every_metric(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a wide terminal the table has every column, the --json scores to 4 decimals, no note."""
    monkeypatch.setenv("COLUMNS", "200")  # at 80 columns some are left out with a note (tests/test_cli_output.py)
    path = tmp_path / "t.txt"
    path.write_text("hello world\n")
    argv = ["perplexity", str(path), "--model", str(gla_folder), "--threads", "1", "--precision", "float32"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    for label in ("bits/byte", "bits/char", "byte ppl", "word ppl", "bytes", "words", "bytes/s"):
        assert label in out
    assert err == ""
    code, document, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(document)["files"][str(path)]
    for key in ("bits_per_byte", "bits_per_char", "byte_perplexity", "word_perplexity"):
        value = metrics[key]
        assert (f"{value:.4e}" if value >= 1e6 else f"{value:,.4f}") in out  # 4 decimals; e-notation above a million
    assert f"{metrics['bytes']:,}" in out and f"{metrics['words']:,}" in out


def test_non_utf8_bytes_are_scored_and_the_output_says_so(
    gla_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    float64_loading: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"ab\xff\xfe cd \xc3\xa9\xe2\x82 end\n\x80"
    path = tmp_path / "binary.txt"
    path.write_bytes(data)
    decoded = data.decode("utf-8", errors="replace")
    code, out, err = run_cli(
        ["perplexity", str(path), "--model", str(gla_folder), "--window", "3", "--threads", "1", "--json"], capsys
    )
    assert code == 0, err
    document = json.loads(out)
    metrics = document["files"][str(path)]
    loglik = direct_loglik(model64(gla_folder), data)
    assert metrics["bytes"] == len(data)
    assert metrics["chars"] == len(decoded)
    assert metrics["words"] == len(re.split(r"\s+", decoded))
    assert loglik_from_metrics(metrics) == pytest.approx(loglik, rel=1e-8)
    assert metrics["bits_per_char"] == pytest.approx(-loglik / (len(decoded) * LN2), rel=1e-8)
    assert any("UTF-8" in note and "replacement" in note for note in document["notes"])
    # The table form says it too, on one stderr line (wide enough that no column is left out with a note).
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_cli(["perplexity", str(path), "--model", str(gla_folder), "--threads", "1"], capsys)
    assert code == 0
    notes = [line for line in err.splitlines() if line.strip()]
    assert len(notes) == 1 and "UTF-8" in notes[0] and "replacement" in notes[0]


# ---- bad input ---------------------------------------------------------------------------------
def _assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("glactl: error:")
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


def test_missing_file_directory_and_empty_file_exit_2_one_line(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    cases = [
        ([str(tmp_path / "missing.txt")], "no such file"),
        ([str(tmp_path)], "directory"),
        ([str(empty)], "empty"),
        ([str(good), str(empty)], "empty"),
    ]
    for files, word in cases:
        code, out, err = run_cli(["perplexity", *files, "--model", str(gla_folder), "--threads", "1", "--json"], capsys)
        _assert_one_line_error(code, out, err, word)
    code, out, err = run_cli(["perplexity", "--model", str(gla_folder)], capsys)
    _assert_one_line_error(code, out, err)
    code, out, err = run_cli(["perplexity", str(good), "--model", str(gla_folder), "--window", "0"], capsys)
    _assert_one_line_error(code, out, err, "--window")


def test_a_file_named_twice_is_refused_and_stdin_is_named_stdin(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    monkeypatch.chdir(tmp_path)
    for twice in (["good.txt", "good.txt"], ["good.txt", "./good.txt"], [str(good), "good.txt"]):
        code, out, err = run_cli(["perplexity", *twice, "--model", str(gla_folder), "--threads", "1"], capsys)
        _assert_one_line_error(code, out, err, "given twice", "name each FILE once")
    read_end, write_end = os.pipe()  # "-" reads the process's stdin (fd 0): a pipe holding the text
    os.write(write_end, TEXT.encode())
    os.close(write_end)
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        code, out, err = run_cli(["perplexity", "-", "--model", str(gla_folder), "--threads", "1", "--json"], capsys)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
    assert code == 0, err
    assert list(json.loads(out)["files"]) == ["stdin"]
    assert json.loads(out)["files"]["stdin"]["bytes"] == len(TEXT.encode())


def test_empty_input_never_divides_by_zero(gla_folder: Path, tmp_path: Path) -> None:
    assert Score().metrics() == {key: 0 for key in METRIC_KEYS}
    model = load_model(gla_folder)[0]
    from glactl.errors import InputError

    with pytest.raises(InputError, match="empty"):
        score_bytes(model, b"")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        score_file(model, empty)


# ---- attention models: sliding context -----------------------------------------------------------
def test_attention_model_slides_its_context_over_a_longer_file(
    attention_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    data = TEXT.encode()[:300]
    path = tmp_path / "long.txt"
    path.write_bytes(data)
    model = model64(attention_folder)
    assert model.config.context == 32 < len(data)
    reference = direct_loglik(model, data)  # one forward pass with the same 32-token window
    for window in ("50", "4096"):
        code, out, err = run_cli(
            ["perplexity", str(path), "--model", str(attention_folder), "--window", window, "--threads", "1", "--json"],
            capsys,
        )
        assert code == 0, err
        document = json.loads(out)
        assert document["context"] == 32
        assert any("sliding context of 32 tokens" in note for note in document["notes"])
        assert loglik_from_metrics(document["total"]) == pytest.approx(reference, rel=1e-8)
    # --context changes the window, and the score with it.
    code, out, err = run_cli(
        ["perplexity", str(path), "--model", str(attention_folder), "--context", "16", "--threads", "1", "--json"],
        capsys,
    )
    assert code == 0, err
    document = json.loads(out)
    assert document["context"] == 16
    assert any("sliding context of 16 tokens" in note for note in document["notes"])
    narrow = LanguageModel(ModelConfig.from_dict({**model.config.to_dict(), "context": 16})).double()
    narrow.load_state_dict(model.state_dict())
    assert loglik_from_metrics(document["total"]) == pytest.approx(direct_loglik(narrow.eval(), data), rel=1e-8)
    assert loglik_from_metrics(document["total"]) != pytest.approx(reference, rel=1e-6)
    # The table form says so on stderr.
    code, out, err = run_cli(["perplexity", str(path), "--model", str(attention_folder), "--threads", "1"], capsys)
    assert code == 0
    assert "sliding context of 32 tokens" in err


def test_recurrent_model_has_no_sliding_note(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("hello world\n" * 20)
    code, out, err = run_cli(["perplexity", str(path), "--model", str(gla_folder), "--threads", "1", "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert document["context"] is None and document["notes"] == []


# ---- memory: the file is streamed ----------------------------------------------------------------
@pytest.mark.subprocess
@pytest.mark.slow
def test_scoring_20mb_peaks_less_than_30mb_above_1mb(tmp_path: Path) -> None:
    torch.manual_seed(5)
    folder = tmp_path / "gla-mini"
    save_model(
        folder,
        LanguageModel(ModelConfig.tiny(d_model=16, n_layers=1, n_heads=1, gla_gate_rank=4)),
        training={"steps": 0},
    )
    rng = torch.Generator().manual_seed(0)
    vocab = ["the", "history", "of", "a", "language", "model", "streams", "bytes", "in", "constant", "memory", "\n"]
    words = torch.randint(len(vocab), (200_000,), generator=rng).tolist()
    block = " ".join(vocab[w] for w in words).encode()[: 1 << 20]
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_bytes(block)
    with open(large, "wb") as f:
        for _ in range(20):
            f.write(block)
    assert large.stat().st_size == 20 << 20
    common = ["--model", str(folder), "--threads", "1", "--json"]
    # Both children at once (the small one is short); each reports its own peak.
    big_child = start_child(["perplexity", str(large), *common])
    small_out, small_mb = child_result(start_child(["perplexity", str(small), *common]))
    big_out, big_mb = child_result(big_child)
    assert json.loads(small_out)["total"]["bytes"] == 1 << 20
    assert json.loads(big_out)["total"]["bytes"] == 20 << 20
    print(f"peak RSS: 1 MB file {small_mb:.1f} MB, 20 MB file {big_mb:.1f} MB")
    assert big_mb - small_mb < 30, f"20 MB file peaked at {big_mb:.1f} MB, 1 MB file at {small_mb:.1f} MB"


def test_data_split_scores_like_the_file(gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8", newline="")
    common = ["--model", str(gla_folder), "--window", "64", "--threads", "1", "--json"]
    code, out, err = run_cli(["perplexity", str(path), *common], capsys)
    assert code == 0, err
    by_file = json.loads(out)["total"]
    code, out, err = run_cli(["perplexity", "--data", str(path), "--split", "train", *common], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert list(document["files"]) == [f"{path}:train"]
    by_split = document["total"]
    assert {k: v for k, v in by_split.items() if k != "tokens_per_second"} == pytest.approx(
        {k: v for k, v in by_file.items() if k != "tokens_per_second"}, rel=1e-9
    )
    code, out, err = run_cli(["perplexity", "--data", str(path), "--split", "test", *common], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "test" in err

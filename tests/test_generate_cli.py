"""`glactl generate`: prompt forms, seeds, JSON, stop strings, samples, greedy decoding, piping, bad input, memory."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, child_result, run_cli, start_child

import glactl.storage.model_paths as paths
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model

PROMPT = "The history of"


@pytest.fixture(scope="module")
def gla_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(21)
    folder = tmp_path_factory.mktemp("gen") / "gla"
    save_model(
        folder,
        LanguageModel(ModelConfig.tiny(d_model=32, n_layers=2, n_heads=2, gla_gate_rank=4)),
        training={"steps": 0},
    )
    return folder


def generate_json(capsys: pytest.CaptureFixture[str], folder: Path, prompt: str, *options: str) -> dict:
    code, out, err = run_cli(["generate", prompt, "--model", str(folder), "--threads", "1", "--json", *options], capsys)
    assert code == 0, err
    return json.loads(out)


def printed(sample: str, prompt: str = PROMPT) -> str:
    """What generate prints when piped: the prompt, the sample, and a newline unless the text ends with one."""
    text = prompt + sample
    return text if text.endswith("\n") else text + "\n"


# ---- prompt forms, seeds and the JSON document ---------------------------------------------------
def test_prompt_as_string_stdin_and_file_give_the_same_text(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ("--max-new-tokens", "40", "--seed", "7")
    by_string = generate_json(capsys, gla_folder, PROMPT, *options)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT, encoding="utf-8")
    by_file = generate_json(capsys, gla_folder, f"@{prompt_file}", *options)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(PROMPT.encode()), encoding="utf-8"))
    by_stdin = generate_json(capsys, gla_folder, "-", *options)
    for document in (by_string, by_file, by_stdin):
        assert document["prompt"] == PROMPT
    assert by_string["samples"] == by_file["samples"] == by_stdin["samples"]


def test_same_seed_same_text_other_seed_other_text(gla_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "60", "--seed", "123")
    second = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "60", "--seed", "123")
    other = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "60", "--seed", "124")
    assert first["samples"] == second["samples"]
    assert first["samples"] != other["samples"]
    # Streamed (piped) output is the same text too.
    code, out, err = run_cli(
        ["generate", PROMPT, "--model", str(gla_folder), "--threads", "1", "--max-new-tokens", "60", "--seed", "123"],
        capsys,
    )
    assert code == 0, err
    assert out == printed(first["samples"][0])


def test_json_document_keys_and_values(gla_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "25", "--seed", "3")
    assert {"prompt", "samples", "tokens", "tokens_per_second", "model"} <= set(document)
    assert document["prompt"] == PROMPT
    assert isinstance(document["samples"], list) and len(document["samples"]) == 1
    assert isinstance(document["samples"][0], str)
    assert document["tokens"] == 25
    assert document["tokens_per_second"] > 0
    assert Path(document["model"]).resolve() == gla_folder.resolve()
    assert document["seed"] == 3


def test_num_samples(gla_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "30", "--num-samples", "3", "--seed", "5")
    assert len(document["samples"]) == 3
    assert document["tokens"] == 90
    assert len(set(document["samples"])) == 3
    code, out, err = run_cli(
        [
            "generate",
            PROMPT,
            "--model",
            str(gla_folder),
            "--threads",
            "1",
            "--max-new-tokens",
            "30",
            "--num-samples",
            "3",
            "--seed",
            "5",
        ],
        capsys,
    )
    assert code == 0, err
    for i, sample in enumerate(document["samples"], 1):
        assert f"--- sample {i}/3 ---\n{printed(sample)}" in out


def test_no_stream_prints_the_same_text(gla_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "30", "--seed", "9")
    code, out, err = run_cli(
        [
            "generate",
            PROMPT,
            "--model",
            str(gla_folder),
            "--threads",
            "1",
            "--max-new-tokens",
            "30",
            "--seed",
            "9",
            "--no-stream",
        ],
        capsys,
    )
    assert code == 0, err
    assert out == printed(document["samples"][0])


# ---- greedy decoding and stop strings --------------------------------------------------------------
def greedy_reference(model: torch.nn.Module, prompt: bytes, steps: int) -> bytes:
    """Argmax of a full forward over "\\n" + prompt + everything generated so far, one byte at a time."""
    context = list(b"\n" + prompt)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([context + out]))
            out.append(int(logits[0, -1].argmax()))
    return bytes(out)


def test_temperature_zero_is_argmax_of_a_full_forward(
    gla_folder: Path, capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    expected = greedy_reference(load_model(gla_folder)[0].double(), PROMPT.encode(), 40)
    for seed in ("1", "2"):
        document = generate_json(
            capsys, gla_folder, PROMPT, "--max-new-tokens", "40", "--temperature", "0", "--seed", seed
        )
        assert document["samples"] == [expected.decode("utf-8", errors="replace")]
    # top-k 1 is greedy as well, whatever the temperature.
    document = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "40", "--top-k", "1", "--seed", "4")
    assert document["samples"] == [expected.decode("utf-8", errors="replace")]


@pytest.mark.parametrize("context", [None, 32])
def test_attention_model_generates_past_its_window_like_a_full_forward(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], float64_loading: None, context: int | None
) -> None:
    torch.manual_seed(22)
    folder = save_model(
        tmp_path / "transformer",
        LanguageModel(ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=2, context=context)),
        training={"steps": 0},
    )
    prompt = "A prompt that is longer than the attention window of the model."
    assert len(prompt) > 32
    expected = greedy_reference(load_model(folder)[0].double(), prompt.encode(), 60)
    document = generate_json(capsys, folder, prompt, "--max-new-tokens", "60", "--temperature", "0")
    assert document["tokens"] == 60
    assert document["samples"] == [expected.decode("utf-8", errors="replace")]


def test_stop_string_ends_the_sample_and_is_not_printed(gla_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "80", "--temperature", "0")["samples"][0]
    # A stop string that first appears a little way into the greedy text.
    candidates = [
        (full.find(c), c) for c in set(full[5:]) if c.isascii() and c.isprintable() and not c.isspace() and c != "\\"
    ]
    assert candidates, full
    position, stop = min(candidates)
    assert position >= 0
    expected = full[:position]
    document = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "80", "--temperature", "0", "--stop", stop)
    assert document["samples"] == [expected]
    assert document["tokens"] < 80
    code, out, err = run_cli(
        [
            "generate",
            PROMPT,
            "--model",
            str(gla_folder),
            "--threads",
            "1",
            "--max-new-tokens",
            "80",
            "--temperature",
            "0",
            "--stop",
            "\u2603never",
            "--stop",
            stop,
        ],
        capsys,
    )
    assert code == 0, err
    assert out == printed(expected)


# ---- terminal vs pipe ------------------------------------------------------------------------------
def test_piped_output_is_prompt_plus_text_and_a_newline_without_ansi_codes_or_summary(
    gla_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", PROMPT, "--model", str(gla_folder), "--threads", "1", "-n", "50", "--seed", "11"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    sample = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "50", "--seed", "11")["samples"][0]
    assert out == printed(sample)  # prompt + continuation + newline, as HF and nanoGPT print it
    assert "\x1b[" not in out
    assert err == ""
    code, out, err = run_cli([*args, "--no-echo"], capsys)  # the continuation alone, still ending the line
    assert (code, out) == (0, sample + ("" if sample.endswith("\n") else "\n"))
    code, out, err = run_cli([*args, "--num-samples", "2", "--temp", "0.5"], capsys)
    assert (
        code == 0 and out.count(PROMPT) == 2 and out.startswith("--- sample 1/2 ---\n" + PROMPT) and out.endswith("\n")
    )


def test_terminal_output_echoes_the_prompt_in_bold_and_summarises_on_stderr(
    gla_folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "20", "--seed", "11")["samples"][0]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_cli(
        ["generate", PROMPT, "--model", str(gla_folder), "--threads", "1", "--max-new-tokens", "20", "--seed", "11"],
        capsys,
    )
    assert code == 0, err
    assert out == f"\x1b[1m{PROMPT}\x1b[0m{sample}\n"
    assert "20 tokens" in err and "tokens/s" in err and "state" in err


# ---- what ran: precision and decode path --------------------------------------------------------------
def test_json_records_precision_and_decode_path_and_leaves_the_compile_out_of_the_speed(
    gla_folder: Path, capsys: pytest.CaptureFixture[str], fake_compiler: dict
) -> None:
    eager = generate_json(capsys, gla_folder, PROMPT, "-n", "20", "--seed", "1", "--precision", "float32")
    assert (eager["precision"], eager["compile"], eager["compile_seconds"]) == ("float32", "eager", 0.0)
    compiled = generate_json(
        capsys, gla_folder, PROMPT, "-n", "20", "--seed", "1", "--precision", "float32", "--compile", "on"
    )
    assert fake_compiler["count"] == 1 and (compiled["precision"], compiled["compile"]) == ("float32", "compiled")
    assert compiled["compile_seconds"] >= fake_compiler["seconds"]
    assert compiled["tokens"] / compiled["tokens_per_second"] < fake_compiler["seconds"]  # the compile is not counted
    assert compiled["samples"] == eager["samples"]
    int8 = generate_json(capsys, gla_folder, PROMPT, "-n", "5", "--seed", "1", "--precision", "int8")
    assert int8["precision"] == "int8"


class _Terminal(io.StringIO):
    """stdout and stderr of one terminal: what a person sees, in the order it was written."""

    def isatty(self) -> bool:
        return True


def test_terminal_stats_say_precision_and_decode_path_and_the_compile_note_comes_first(
    gla_folder: Path, monkeypatch: pytest.MonkeyPatch, fake_compiler: dict
) -> None:
    from glactl.cli.app import main

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["generate", PROMPT, "--model", str(gla_folder), "--threads", "1", "-n", "20", "--seed", "2"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--precision", "float32", "--compile", "on"])
    assert exit_info.value.code in (0, None)
    lines = terminal.getvalue().splitlines()
    assert lines[0].startswith("glactl: compiling the decode step once")  # on its own line, before the prompt
    assert lines[1].startswith(f"\x1b[1m{PROMPT}\x1b[0m")
    stats = lines[-1]
    assert re.match(r"load \d+\.\d\d s \(float32, compiled\); compile \d+\.\d\d s; 20 tokens in ", stats), stats
    assert float(re.search(r"compile (\d+\.\d\d) s", stats).group(1)) >= fake_compiler["seconds"]
    terminal.seek(0)
    terminal.truncate()
    with pytest.raises(SystemExit):
        main([*argv, "--precision", "float32", "--compile", "off"])
    assert re.match(r"load \d+\.\d\d s \(float32, eager\); 20 tokens in ", terminal.getvalue().splitlines()[-1])


# ---- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "word"),
    [
        (["--temperature", "-0.5"], "--temperature"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--num-samples", "0"], "--num-samples"),
        (["--repetition-penalty", "0"], "--repetition-penalty"),
        (["--device", "tpu"], "--device"),
        (["--threads", "0"], "--threads"),
        (["--max-new-tokens", "many"], "--max-new-tokens"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    gla_folder: Path, capsys: pytest.CaptureFixture[str], options: list[str], word: str
) -> None:
    code, out, err = run_cli(["generate", PROMPT, "--model", str(gla_folder), *options], capsys)
    assert_one_line_error(code, out, err, word)


def test_usage_errors_exit_2_with_one_line_and_version_answers(
    gla_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["generate", PROMPT, "--model", str(gla_folder), "--no-such-option"], capsys)
    assert_one_line_error(code, out, err, "--no-such-option", "glactl generate --help")
    code, out, err = run_cli(["generate", PROMPT, "--temperature", "hot"], capsys)
    assert_one_line_error(code, out, err, "--temperature")
    code, out, err = run_cli(["no-such-command"], capsys)
    assert_one_line_error(code, out, err, "no-such-command")
    import glactl

    code, out, err = run_cli(["--version"], capsys)
    assert (code, out.strip(), err) == (0, glactl.__version__, "")


def test_missing_prompt_file_and_model_folder_exit_2(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["generate", f"@{tmp_path / 'nope.txt'}", "--model", str(gla_folder)], capsys)
    assert_one_line_error(code, out, err, "nope.txt")
    code, out, err = run_cli(["generate", f"@{tmp_path}", "--model", str(gla_folder)], capsys)
    assert_one_line_error(code, out, err, "directory")
    code, out, err = run_cli(["generate", PROMPT, "--model", str(tmp_path / "no-such-run")], capsys)
    assert_one_line_error(code, out, err, "no-such-run")
    not_a_checkpoint = tmp_path / "empty-folder"
    not_a_checkpoint.mkdir()
    code, out, err = run_cli(["generate", PROMPT, "--model", str(not_a_checkpoint)], capsys)
    assert_one_line_error(code, out, err)


def test_without_model_and_no_shipped_weights_says_to_pass_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paths, "weights_dirs", lambda: [])
    code, out, err = run_cli(["generate", PROMPT, "--max-new-tokens", "5"], capsys)
    assert_one_line_error(code, out, err, "--model")
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setattr(paths, "weights_dirs", lambda: [empty])
    code, out, err = run_cli(["generate", PROMPT, "--max-new-tokens", "5"], capsys)
    assert_one_line_error(code, out, err, "--model")


def test_default_model_is_found_among_shipped_weights(
    gla_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(gla_folder, weights / paths.DEFAULT_WEIGHTS)
    monkeypatch.setattr(paths, "weights_dirs", lambda: [weights])
    expected = generate_json(capsys, gla_folder, PROMPT, "--max-new-tokens", "20", "--seed", "2")["samples"]
    code, out, err = run_cli(
        ["generate", PROMPT, "--threads", "1", "--max-new-tokens", "20", "--seed", "2", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["samples"] == expected


# ---- memory: unlimited generation in constant memory -------------------------------------------------
@pytest.mark.subprocess
@pytest.mark.slow
def test_100k_new_bytes_peak_less_than_10mb_above_1k(tmp_path: Path) -> None:
    torch.manual_seed(6)
    folder = tmp_path / "gla-mini"
    save_model(
        folder,
        LanguageModel(ModelConfig.tiny(d_model=16, n_layers=1, n_heads=1, gla_gate_rank=4)),
        training={"steps": 0},
    )
    # Eager steps: --compile auto would compile both runs (tens of seconds each on 2 cores, the same fixed graph and
    # buffers whatever the length); what grows with length, if anything, is the decode loop, the same in both paths.
    common = [PROMPT, "--model", str(folder), "--threads", "1", "--seed", "0", "--temperature", "1", "--compile", "off"]
    long_child = start_child(["generate", *common, "--max-new-tokens", "100000"])
    short_out, short_mb = child_result(start_child(["generate", *common, "--max-new-tokens", "1000"]))
    long_out, long_mb = child_result(long_child)
    assert 0 < len(short_out) <= 1000 and len(long_out) > 10_000
    assert long_out.startswith(short_out[:100])  # same seed: the long run starts like the short one
    print(f"peak RSS: 1,000 bytes {short_mb:.1f} MB, 100,000 bytes {long_mb:.1f} MB")
    assert long_mb - short_mb < 10, f"100,000 bytes peaked at {long_mb:.1f} MB, 1,000 bytes at {short_mb:.1f} MB"

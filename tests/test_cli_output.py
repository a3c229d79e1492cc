"""The command line as users expect it: closed pipes, resume with other data, stderr/stdout, tables, help."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, assert_one_line_error, child_env, make_read_only, run_cli

from glactl.errors import InputError

COMMANDS = ("train", "generate", "complete", "perplexity", "info", "compare")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}: the rain in spain stays mainly in the plain.\n" for i in range(300)))
    return path


def trained(
    run: Path, text_file: Path, capsys: pytest.CaptureFixture[str], steps: int = 4, *extra: str
) -> tuple[str, str]:
    code, out, err = run_cli(
        ["train", "--data", str(text_file), *TINY_TRAIN, "--steps", str(steps), "-o", str(run), *extra], capsys
    )
    assert code == 0, err
    return out, err


def checkpoint_step(run: Path) -> int:
    return json.loads((run / "checkpoint" / "trainer.json").read_text())["step"]


# ---- 1: a closed pipe never loses the run -----------------------------------------------------------------
@pytest.mark.subprocess
@pytest.mark.slow
def test_training_survives_its_reader_closing_the_pipe(tmp_path: Path, text_file: Path) -> None:
    """`glactl train 2>&1 | head -1`: the reader goes after one line; the run trains to the end and saves."""
    run = tmp_path / "piped"
    argv = [
        sys.executable,
        "-m",
        "glactl",
        "train",
        "--data",
        str(text_file),
        *TINY_TRAIN,
        "--steps",
        "60",
        "--log-every",
        "1",
        "--eval-every",
        "20",
        "--out",
        str(run),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(), cwd=tmp_path)
    assert process.stdout is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    assert process.wait(timeout=240) == 0 and first
    assert checkpoint_step(run) == 60


@pytest.mark.subprocess
@pytest.mark.slow
def test_training_with_the_read_end_closed_from_the_start(tmp_path: Path, text_file: Path) -> None:
    """Both streams into a pipe nobody reads (a `less` quit at once): exit 0 and every step saved."""
    run = tmp_path / "closed"
    read_end, write_end = os.pipe()
    os.close(read_end)
    argv = [
        sys.executable,
        "-m",
        "glactl",
        "train",
        "--data",
        str(text_file),
        *TINY_TRAIN,
        "--steps",
        "30",
        "--log-every",
        "1",
        "--out",
        str(run),
    ]
    try:
        code = subprocess.run(
            argv, stdout=write_end, stderr=write_end, env=child_env(), cwd=tmp_path, timeout=240
        ).returncode
    finally:
        os.close(write_end)
    assert code == 0 and checkpoint_step(run) == 30


# ---- 2: resume with other data is refused --------------------------------------------------------------------
def test_resume_with_other_data_or_changed_text_is_refused(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    trained(run, text_file, capsys)
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().upper())
    code, out, err = run_cli(["train", "--data", str(other), "--steps", "8", "--out", str(run), "--resume"], capsys)
    assert_one_line_error(code, out, err, str(other), str(text_file), "--init-from")
    code, out, err = run_cli(["train", "--valid", str(other), "--steps", "8", "--out", str(run), "--resume"], capsys)
    assert_one_line_error(code, out, err, "--valid", "--init-from")
    text_file.write_text(text_file.read_text().replace("spain", "italy"))  # the same name, other text
    code, out, err = run_cli(["train", "--steps", "8", "--out", str(run), "--resume"], capsys)
    last = err.strip().splitlines()[-1]  # after the lines of encoding the changed file
    assert (
        code == 2
        and out == ""
        and last.startswith("glactl: error: --resume: the content of")
        and str(text_file) in last
    )
    assert checkpoint_step(run) == 4  # nothing trained on the other text
    code, out, err = run_cli(
        [
            "train",
            "--data",
            str(other),
            *TINY_TRAIN,
            "--steps",
            "2",
            "--init-from",
            str(run),
            "--out",
            str(tmp_path / "switched"),
        ],
        capsys,
    )
    assert code == 0, err  # the deliberate switch


def test_resume_of_a_finished_run_says_nothing_was_trained_and_keeps_the_command(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    trained(run, text_file, capsys)
    code, out, err = run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert code == 0 and "nothing to train" in err and "step 4 of --steps 4" in err
    code, out, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "6"], capsys)
    assert code == 0, err
    summary = json.loads((run / "checkpoint" / "config.json").read_text())["training"]
    assert "--data" in summary["command"] and "--preset tiny" in summary["command"]  # how the run started
    assert (
        summary["resumed_with"][-1].endswith("--steps 6 --out " + str(run) + " --resume")
        or "--resume" in summary["resumed_with"][-1]
    )
    assert summary["steps"] == 6 and summary["steps_planned"] == 6
    code, out, err = run_cli(["train", "--resume", "--steps", "8"], capsys)
    assert_one_line_error(code, out, err, "--resume needs --out")


# ---- 3: a run still training ------------------------------------------------------------------------------
@pytest.mark.subprocess
def test_info_and_generate_on_a_run_that_is_still_training(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        early = tmp_path / "early"
        early.mkdir()
        (early / "train.lock").write_text(f"{holder.pid}\n")
        code, out, err = run_cli(["info", str(early)], capsys)
        assert_one_line_error(code, out, err, "training is in progress", str(holder.pid))
        run = tmp_path / "run"
        trained(run, text_file, capsys)
        (run / "train.lock").write_text(f"{holder.pid}\n")
        code, out, err = run_cli(["generate", "ab", "-m", str(run), "-n", "3", "--seed", "1"], capsys)
        assert code == 0 and "still training" in err and "from step 4" in err and str(holder.pid) in err
        code, out, err = run_cli(["info", str(run)], capsys)
        assert code == 0 and "training in progress" in out
    finally:
        holder.kill()
        holder.wait()


# ---- 4 and 5: logs on stderr, results on stdout; a permanent line per log step -----------------------------
def test_train_writes_logs_to_stderr_and_nothing_to_stdout(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = trained(tmp_path / "run", text_file, capsys, 6, "--log-every", "2", "--eval-every", "3")
    assert out == ""
    assert [line.split(" |")[0] for line in err.splitlines() if line.startswith("step ")] == [
        "step 0",
        "step 2/6",
        "step 4/6",
        "step 6/6",
    ]
    assert err.count("eval step") == 2


def test_the_live_bar_keeps_its_eta_at_80_columns_and_lines_stay_above_it(tmp_path: Path, text_file: Path) -> None:
    from rich.console import Console

    from glactl.training.options import TrainOptions
    from glactl.training.trainer import train

    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=True, color_system=None)
    options = TrainOptions(
        data=[str(text_file)],
        preset="tiny",
        d_model=32,
        n_layers=1,
        n_heads=2,
        seq_len=16,
        batch_size=2,
        eval_windows=2,
        steps=4,
        log_every=1,
        eval_every=2,
        out=str(tmp_path / "run"),
        dtype="float32",
        threads=1,
    )
    train(options, console)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "ETA" in text and all(f"step {i}/4 |" in text for i in range(1, 5)) and text.count("eval step") == 2
    bars = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("train ")]
    assert bars and all(
        len(line) <= 80 and re.search(r"ETA (\d+:\d\d:\d\d|-:--:--)$", line.rstrip()) for line in bars
    ), bars


# ---- 6: tables fit 80 columns without cutting a digit ---------------------------------------------------------
def test_compare_table_fits_80_columns_with_whole_numbers() -> None:
    from rich.console import Console

    from glactl.compare.report import terminal_table
    from glactl.report.display import print_table

    entries = [
        {
            "model": name,
            "parameters": 4_780_000,
            "train_tokens_per_second": 1773.4,
            "val_bits_per_byte": 2.855468,
            "generate_tokens_per_second": {"1024": 1234.5, "8192": 1200.0, "32768": 119.0},
            "decode": {"precision": "int8", "compiled": name != "transformer"},
            "state_bytes": {"1024": 196608, "8192": 1572864, "32768": 6291456},
            "curve": [],
            "sample": "",
        }
        for name in ("gla", "transformer", "performer", "minlstm")
    ]
    screen = io.StringIO()
    header, rows, dropped = terminal_table(entries, 80)
    print_table(Console(file=screen, width=80), "glactl compare", header, rows)
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in screen.getvalue()
    assert "2.8555" in screen.getvalue() and "transformer" in screen.getvalue() and "6.0 MiB" in screen.getvalue()
    assert "gen/s @32k" in header and dropped  # the longest context stays; the others are named as left out
    assert "decode" in dropped  # the decode path goes before the longest context's columns
    wide_header, wide_rows, wide_dropped = terminal_table(entries, 200)
    assert wide_dropped == [] and [row[wide_header.index("decode")] for row in wide_rows] == [
        "int8 compiled",
        "int8 eager",
        "int8 compiled",
        "int8 compiled",
    ]


def test_perplexity_lists_files_as_rows_within_80_columns(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "my-run"
    trained(run, text_file, capsys)
    long_name = tmp_path / ("a-rather-long-folder-name-" * 2) / "another-text-file.txt"
    long_name.parent.mkdir()
    long_name.write_text("Some other text, scored as well.\n" * 20)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["perplexity", str(text_file), str(long_name), "-m", str(run), "--threads", "1"], capsys)
    assert code == 0, err
    assert "perplexity of my-run" in out  # the run's name, not "checkpoint"
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    rows = [line for line in out.splitlines() if re.match(r"│[^│]*│\s+\d+\.\d{4} │", line)]  # lines with a score
    assert len(rows) == 3 and rows[-1].startswith("│ total")  # one row per file (names may wrap), plus total
    numbers = re.findall(r"\d+\.\d+", out)
    assert numbers and all(len(n.split(".")[1]) == 4 for n in numbers)  # the same decimals in every score column


# ---- 7: info, one fact per row ---------------------------------------------------------------------------------
def test_info_shows_one_fact_per_row_with_data_and_progress(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    trained(run, text_file, capsys, 3)
    summary_path = run / "checkpoint" / "config.json"
    document = json.loads(summary_path.read_text())
    document["training"]["steps_planned"] = 10  # as a run stopped early leaves it
    summary_path.write_text(json.dumps(document))
    monkeypatch.setenv("COLUMNS", "100")
    code, out, err = run_cli(["info", "-m", str(run)], capsys)
    assert code == 0, err
    assert "3 of 10 steps" in out and "unfinished" in out and "--resume" in out
    # the data sources, sizes in KiB: in the table, or whole on a line of their own where the path is too long for it
    assert re.search(r"^(│ data\s+│|data:) /", out, re.M) and "KiB of training text" in out
    assert "weights" in out and "float32" in out and "val bits per byte" in out
    assert not re.search(r"\d\.\d{6,}", out)  # rounded
    assert "best_val_bits_per_byte" not in out and "1 layer," in out


def test_info_at_80_columns_prints_paths_and_commands_whole(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data path or a training command too long for the table goes whole on a line of its own, to be copied."""
    deep = tmp_path / ("a-long-folder-name-that-does-not-fit-" * 2) / "text.txt"
    deep.parent.mkdir()
    deep.write_text(text_file.read_text())
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(deep), *TINY_TRAIN, "--steps", "1", "-o", str(run)], capsys)
    assert code == 0, err
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["info", str(run)], capsys)
    assert code == 0, err
    summary = json.loads((run / "checkpoint" / "config.json").read_text())["training"]
    lines = out.splitlines()
    assert f"command: {summary['command']}" in lines
    assert any(line.startswith(f"data: {deep} (") for line in lines)
    assert "…" not in out and "..." not in out
    assert max(len(line) for line in lines if line.startswith(("│", "┌", "└"))) <= 80


def test_info_on_a_folder_of_runs_lists_them(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    folder = tmp_path / "cmp"
    for name in ("gla-seed0", "mingru-seed0"):
        shutil.copytree(tiny_run / "checkpoint", folder / name / "checkpoint")
    (folder / "results.json").write_text("[]")
    code, out, err = run_cli(["info", str(folder)], capsys)
    assert code == 0, err
    assert "a folder of 2 runs" in out and f"glactl info {folder / 'gla-seed0'}" in out
    assert re.search(r"│ gla-seed0\s+│ gla\s+│\s+2 │ \d\.\d{4} bits/byte │", out) and "mingru-seed0" in out
    code, out, err = run_cli(["info", str(folder), "--json"], capsys)
    listed = json.loads(out)["runs"]
    assert [run["name"] for run in listed] == ["gla-seed0", "mingru-seed0"] and listed[0]["steps"] == 2


# ---- 9, 11, 12: generate output, aliases, an architecture given as a model --------------------------------------
def test_an_architecture_name_as_model_says_so_and_lists_loadable_models(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    trained(Path("runs") / "mine", text_file, capsys, 2)
    code, out, err = run_cli(["generate", "hi", "--model", "gla"], capsys)
    assert_one_line_error(code, out, err, "gla is an architecture", "runs/mine")


# ---- 10: help -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_help_uses_click_labels_lists_choices_and_fits_80_columns(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli([command, "--help"], capsys)
    assert code == 0, err
    assert not re.search(r"<(int|str|float|bool|list|path)", out)  # no Python types as labels
    assert "{" not in out.splitlines()[0] and "Usage: glactl " + command in out  # click's usage: ARG, [ARG], [ARG]...
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    for line in out.splitlines():  # one default per option: its help text or click's [default: ...], not both
        assert not (re.search(r"\(default", line) and "[default:" in line), line
    if command in ("train", "compare"):
        assert "--dtype [auto|float32|bfloat16|float16]" in out and "--preset [tiny|small|base]" in out
        assert re.search(r"--json\s{2,}", out) or command == "train"  # a flag has no label
    if command == "compare":
        from glactl.models.registry import MIXERS

        assert all(name in out for name in MIXERS)  # the architectures, readable at 80 columns
        assert "--archs LIST" in out and "-o, --out" in out and "--models" not in out  # the old spelling: hidden
    if command == "complete":
        assert "--until [word|line|sentence]" in out and "-n, --n" in out
    flat = " ".join(out.split())
    if command == "train":  # --arch: an architecture; --model/-m (a trained model elsewhere) is its hidden old spelling
        assert "--arch ARCH" in out and "--model" not in out and "-m," not in out
        assert "float16 is refused on CPUs" in flat and "on other CPUs and on mps, float32" in flat
    if command in ("generate", "complete", "perplexity", "info"):
        assert "-m, --model MODEL" in out and "a trained model" in flat.lower()
    if command == "generate":
        assert "How many bytes to generate per sample" in flat
    if command == "complete":
        assert "How many completions to list (a count;" in flat
    if command == "info":
        assert "a state file written by --save-state" in flat and "a saved state file" in flat
        assert "--context" in out
    if "--threads" in out:
        assert "Default: OMP_NUM_THREADS if it is set; otherwise, with --precision auto, the faster of 1 and" in flat


def test_shared_options_come_first_in_one_order_in_every_command() -> None:
    """The model (or architecture), then the loading options, then the state files, then each command's own."""
    import typer.main

    from glactl.cli.app import app

    shared = ["--arch", "--archs", "--model", "--device", "--dtype", "--threads", "--kernels", "--precision"]
    shared += ["--compile", "--context", "--state", "--save-state"]
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        flags = [
            max(param.opts, key=len)
            for param in command.params
            if param.param_type_name == "option" and not param.hidden
        ]
        first = [flag for flag in flags if flag in shared]
        assert flags[: len(first)] == first, (name, flags)  # before every option of the command's own
        assert first == sorted(first, key=shared.index), (name, first)  # in one order
    loading = ["--model", "--device", "--threads", "--kernels", "--precision", "--compile", "--context"]
    for name in ("generate", "complete", "perplexity", "serve"):  # every command that runs a trained model
        flags = [max(param.opts, key=len) for param in group.commands[name].params]
        assert all(flag in flags for flag in loading), (name, flags)


def test_old_spellings_still_work_and_conflicts_are_one_line(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import glactl.compare.runner
    import glactl.training.trainer

    ran: list[object] = []
    monkeypatch.setattr(glactl.training.trainer, "train", lambda options, console=None: ran.append(options))
    monkeypatch.setattr(glactl.compare.runner, "run_compare", lambda options, console=None: ran.append(options) or [])
    for flag in ("--arch", "--model", "-m"):
        code, out, err = run_cli(
            ["train", flag, "mingru", "--data", str(text_file), "--out", str(tmp_path / "r")], capsys
        )
        assert code == 0 and ran.pop().model == "mingru", err
    code, out, err = run_cli(["train", "--arch", "gla", "-m", "mingru", "--data", str(text_file)], capsys)
    assert_one_line_error(code, out, err, "give --arch once", "--model is its old spelling")
    for flag in ("--archs", "--models", "-m"):
        code, out, err = run_cli(["compare", flag, "gla,mingru", "--steps", "1", "--out", str(tmp_path / "c")], capsys)
        assert code == 0 and ran.pop().models == ["gla", "mingru"], err
    code, out, err = run_cli(["compare", "--archs", "gla,lsmt", "--steps", "1"], capsys)
    assert_one_line_error(code, out, err, "--archs: unknown", "lsmt")
    code, out, err = run_cli(["compare", "--steps", "1"], capsys)
    assert_one_line_error(code, out, err, "missing option --archs")
    assert not ran


def test_unwritable_run_and_compare_folders_are_refused_before_any_work(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import glactl.compare.runner
    import glactl.training.trainer

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work began before the output folder was checked")

    monkeypatch.setattr(glactl.training.trainer, "train", no_work)
    monkeypatch.setattr(glactl.compare.runner, "run_compare", no_work)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    make_read_only(read_only, monkeypatch)  # as root, through the writability probe (chmod does not stop root)
    try:
        for argv in (
            ["train", "--data", str(text_file), "--out", str(read_only / "run")],  # a run folder to create inside
            ["train", "--data", str(text_file), "--out", str(read_only)],  # an existing folder
            ["compare", "--archs", "gla", "--steps", "1", "--out", str(read_only / "cmp" / "deeper")],
        ):
            code, out, err = run_cli(argv, capsys)
            assert_one_line_error(code, out, err, "--out", f"cannot create files in {read_only}")
        monkeypatch.chdir(read_only)  # train's default run folder goes under ./runs
        code, out, err = run_cli(["train", "--data", str(text_file)], capsys)
        assert_one_line_error(code, out, err, "the default run folder runs/", "--out to choose")
    finally:
        read_only.chmod(0o755)


def test_until_choices_in_help_match_the_library() -> None:
    from glactl.cli.complete import _UNTIL
    from glactl.inference.completion import UNTIL_MODES

    assert _UNTIL == UNTIL_MODES


# ---- 13, 14: threads and dtype -----------------------------------------------------------------------------------
def test_thread_counts_by_kind_and_their_grammar(monkeypatch: pytest.MonkeyPatch) -> None:
    from glactl.runtime import threads

    assert threads.plural(1, "thread") == "1 thread" and threads.plural(2, "thread") == "2 threads"
    assert threads.default_threads("decoding")[0] == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 3.7)  # what other work keeps busy right now
    assert threads.default_threads("scoring") == (4, "4 idle cores of 8, 3.7 busy over the last 0.1 s")
    assert threads.default_threads("training")[0] == 4
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 9.0)
    count, line = threads.thread_line("scoring", None)
    assert count == 1 and line.startswith("threads: 1 thread for scoring")
    assert threads.thread_line("scoring", 3) == (3, "")
    monkeypatch.setattr(threads, "_ENVIRONMENT_THREADS", "3")  # OMP_NUM_THREADS as the user started glactl
    assert threads.thread_line("scoring", None) == (
        3,
        "threads: 3 threads for scoring: OMP_NUM_THREADS=3 (--threads N to choose)",
    )
    assert threads.thread_line("decoding", 2) == (2, "")
    monkeypatch.setattr(threads, "_ENVIRONMENT_THREADS", "many")  # not a count: the rule decides
    assert threads.thread_line("decoding", None)[0] == 1
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: None)  # no /proc/stat: the 1-minute load average
    monkeypatch.setattr(os, "getloadavg", lambda: (5.6, 0.0, 0.0))
    assert threads.default_threads("scoring") == (2, "2 idle cores of 8, load average 5.6")


def test_busy_cores_counts_the_ticks_other_work_used_on_our_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from glactl.runtime import threads

    samples = iter(
        [
            {0: (1000, 900), 1: (1000, 100), 2: (50, 50)},  # (all ticks, idle ticks) since boot
            {0: (1100, 1000), 1: (1100, 125), 2: (50, 50)},
        ]
    )  # cpu 0 idle, cpu 1 3/4 busy, cpu 2 no ticks
    monkeypatch.setattr(threads, "cpu_times", lambda cpus: next(samples))
    assert threads.busy_cores({0, 1, 2}, seconds=0) == pytest.approx(0.75)

    def missing(cpus: set[int]) -> dict:
        raise OSError("no /proc/stat")

    monkeypatch.setattr(threads, "cpu_times", missing)
    assert threads.busy_cores({0}, seconds=0) is None
    if os.path.exists("/proc/stat"):
        monkeypatch.undo()
        times = threads.cpu_times({0})
        assert set(times) == {0} and times[0][0] >= times[0][1] >= 0


def test_auto_dtype_is_measured_once_and_cached(tmp_path: Path) -> None:
    import torch

    from glactl.models import LanguageModel, ModelConfig
    from glactl.runtime.devices import CALIBRATION_FILE, cpu_dtype_by_measurement

    model = LanguageModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, context=16))
    before = [p.detach().clone() for p in model.parameters()]
    name, speedup, cached = cpu_dtype_by_measurement(model, 16, 2, tmp_path)
    assert name == ("bfloat16" if speedup > 1 else "float32") and not cached
    assert (tmp_path / CALIBRATION_FILE).is_file()
    assert cpu_dtype_by_measurement(model, 16, 2, tmp_path) == (name, pytest.approx(speedup, abs=1e-3), True)
    assert all(torch.equal(a, b) and p.grad is None for a, b, p in zip(before, model.parameters(), model.parameters()))


# ---- 15: offline -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_perplexity_on_a_hub_dataset_without_network_fails_fast_with_advice_for_scoring(
    tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import glactl.data.hub as data

    run = tiny_run
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(data, "network_reachable", lambda timeout=1.5: asked.append(1) or False)
    code, out, err = run_cli(["perplexity", "--data", "wikitext-2", "-m", str(run), "--threads", "1"], capsys)
    assert_one_line_error(code, out, err, "wikitext-2", "no network", "glactl perplexity FILE")
    assert asked and "to train" not in err and os.environ.get("HF_HUB_OFFLINE") == "1"


# ---- 16: the small inconsistencies ----------------------------------------------------------------------------
def test_data_weight_binary_and_sizes(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glactl.data.sources import SourceSpec, prepare_source
    from glactl.report.display import human_bytes
    from glactl.runtime.cache import cache_root

    with pytest.raises(InputError, match="weight 'x' is not a number"):
        SourceSpec.parse(f"{text_file}@x")
    assert SourceSpec.parse(f"{text_file}@2").weight == 2.0
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4096)  # 1 MiB that is not text
    with pytest.raises(InputError, match="first bytes"):
        prepare_source(str(binary))
    assert (
        not any("blob" in p.name for p in (cache_root() / "data").glob("*"))
        if (cache_root() / "data").exists()
        else True
    )
    assert [human_bytes(n) for n in (512, 1536, 3 << 20)] == ["512 B", "1.5 KiB", "3.0 MiB"]
    code, out, err = run_cli(["train", "--help"], capsys)
    assert "at most a tenth of --steps" in " ".join(out.split())  # --warmup's help says the cap the code applies


def test_complete_from_stdin_drops_echos_newline(
    tiny_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tiny_run
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"the rain in sp\n")))
    code, out, err = run_cli(["complete", "-", "-m", str(run), "-n", "2", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prefix"] == "the rain in sp"

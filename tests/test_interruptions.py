"""Interrupted work: Ctrl-C and kill -9 at random moments, a full disk, racing runs, NaN, bfloat16.

After any interruption the run folder holds a loadable checkpoint and `--resume` continues from it.
The single Ctrl-C with a live lock is covered in test_checkpoint_resume.py and the stale lock in
test_training.py; this file adds random signal timing, kill -9, saves cut by ENOSPC and lock races.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_TRAIN, final_error_line, run_cli
from safetensors.torch import load_file

import glactl.runtime.devices as devices
import glactl.storage.atomic as atomic
import glactl.storage.checkpoint as checkpoint
from glactl.errors import RunFailure
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model
from glactl.training.options import TrainOptions
from glactl.training.trainer import Trainer, train


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose name does not repeat the test's name, so messages are checked, not paths."""
    return tmp_path_factory.mktemp("case")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}: the rain in spain stays mainly in the plain.\n" for i in range(300)))
    return path


def trainer_step(run: Path) -> int:
    return json.loads((checkpoint.resolve_checkpoint_dir(run / "checkpoint") / "trainer.json").read_text())["step"]


def start_training(run: Path, text_file: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [
        "train",
        "--data",
        str(text_file),
        *TINY_TRAIN,
        "--steps",
        "1000000",
        "--eval-every",
        "1000000",
        "--log-every",
        "1000000",
        "--out",
        str(run),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "glactl", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=run.parent,
    )


def wait_for(condition, process: subprocess.Popen[str], seconds: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"training exited early ({process.returncode}): {process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("training did not get going in time")
        time.sleep(0.01)


def saving(run: Path) -> bool:
    """A save is under way: a staging folder exists or the swap is between its renames."""
    try:
        names = os.listdir(run)
    except FileNotFoundError:
        return False
    return any(".new-" in n or n.endswith(".old") for n in names)


# Ten trials: Ctrl-C and kill -9, at random delays after the first save or the moment a save is seen under way.
TRIALS = [
    ("INT", "random"),
    ("INT", "saving"),
    ("INT", "double"),
    ("INT", "random"),
    ("INT", "saving"),
    ("KILL", "random"),
    ("KILL", "saving"),
    ("KILL", "random"),
    ("KILL", "saving"),
    ("KILL", "random"),
]


@pytest.mark.subprocess
@pytest.mark.slow
def test_random_interruptions_leave_a_loadable_checkpoint_that_resumes(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(8)
    outcomes = []
    for trial, (how, when) in enumerate(TRIALS):
        run = tmp_path / f"run{trial}"
        # Every step saves, so a large share of the wall time is inside a save.
        process = start_training(run, text_file, "--save-every", "1")
        try:
            wait_for(lambda: (run / "checkpoint" / "trainer.json").exists(), process)
            if when == "saving":
                wait_for(lambda: saving(run), process)
            else:
                time.sleep(rng.uniform(0.0, 0.4))
            sig = signal.SIGINT if how == "INT" else signal.SIGKILL
            process.send_signal(sig)
            if when == "double":  # an impatient second Ctrl-C while the first one's save runs
                time.sleep(rng.uniform(0.0, 0.02))
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if how == "INT":
            assert process.returncode == 130, (trial, err)
            assert "interrupted" in final_error_line(err), (trial, err)  # the logs, then one error line
        else:
            assert process.returncode == -signal.SIGKILL
        model, document = load_model(run)  # whatever moment it was, a whole checkpoint is there
        step = trainer_step(run)
        assert step >= 1 and document["training"]["steps"] == step
        assert all(torch.isfinite(p).all() for p in model.parameters())
        # kill -9 leaves a lock of a dead pid (taken over) and maybe a staging folder or .old (ignored, cleaned)
        code, _, err = run_cli(["train", "--out", str(run), "--resume", "--steps", str(step + 1)], capsys)
        assert code == 0, err
        assert trainer_step(run) == step + 1
        assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint", "metrics.jsonl"]
        outcomes.append((how, when, step))
    assert len(outcomes) == len(TRIALS)


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_runs_started_together_one_refuses(tmp_path: Path, text_file: Path) -> None:
    """Two `glactl train --out SAME` launched at the same moment: exactly one trains, the other exits 2 naming it."""
    run = tmp_path / "run"
    first = start_training(run, text_file, "--save-every", "5")
    second = start_training(run, text_file, "--save-every", "5")
    processes = [first, second]
    try:
        deadline = time.monotonic() + 120
        while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        loser = next(p for p in processes if p.poll() is not None)
        winner = next(p for p in processes if p is not loser)
        _, err = loser.communicate(timeout=30)
        assert loser.returncode == 2, err
        assert len(err.strip().splitlines()) == 1 and f"pid {winner.pid}" in err, err
        assert winner.poll() is None  # still training
        wait_for(lambda: (run / "checkpoint" / "trainer.json").exists(), winner)
        winner.send_signal(signal.SIGINT)
        _, err = winner.communicate(timeout=120)
        assert winner.returncode == 130, err
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    load_model(run)


@pytest.mark.slow
def test_a_lock_being_written_is_not_stolen(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A holder that has created train.lock but not yet written its pid still owns the folder."""
    fcntl = pytest.importorskip("fcntl")
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / "train.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run_cli(
            ["train", "--data", str(text_file), *TINY_TRAIN, "--steps", "1", "--out", str(run)], capsys
        )
        assert code == 2 and "another glactl train" in err and len(err.strip().splitlines()) == 1, err
        assert not (run / "checkpoint").exists()
    finally:
        os.close(fd)
    code, _, err = run_cli(["train", "--data", str(text_file), *TINY_TRAIN, "--steps", "1", "--out", str(run)], capsys)
    assert code == 0, err  # the holder is gone: the lock is free again
    assert not (run / "train.lock").exists()


# ---- disk full ---------------------------------------------------------------------------------------
def _enospc_after(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls_ok: int) -> None:
    real = getattr(module, name)
    count = {"n": 0}

    def failing(*args: object, **kwargs: object) -> object:
        count["n"] += 1
        if count["n"] > calls_ok:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("where", ["weights", "config", "fsync"])
def test_disk_full_during_save_keeps_the_previous_checkpoint(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ck"
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.tiny(d_model=32, n_layers=1, n_heads=2))
    save_model(folder, model)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    if where == "weights":
        _enospc_after(monkeypatch, checkpoint, "save_file", 0)
    elif where == "config":
        _enospc_after(monkeypatch, checkpoint, "write_json", 0)
    else:
        _enospc_after(monkeypatch, atomic.os, "fsync", 0)
    with pytest.raises(RunFailure) as info:
        save_model(folder, model)
    assert info.value.exit_code == 1 and "no space left" in str(info.value).lower() and "\n" not in str(info.value)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no half-written staging folder left
    load_model(folder)


def test_disk_full_through_the_cli_is_exit_1(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(text_file), *TINY_TRAIN, "--steps", "2", "--out", str(run)], capsys)[0] == 0
    before = load_file(str(run / "checkpoint" / "model.safetensors"))
    _enospc_after(monkeypatch, checkpoint, "save_file", 0)
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4"], capsys)
    assert code == 1 and "no space left" in final_error_line(err).lower(), err
    monkeypatch.undo()
    after = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert trainer_step(run) == 2 and not (run / "train.lock").exists()
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4"], capsys)  # space again: it goes on
    assert code == 0, err
    assert trainer_step(run) == 4


# ---- numerical faults -----------------------------------------------------------------------------------
def test_inf_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path, text_file: Path) -> None:
    """The NaN case is test_training.py::test_nan_loss_stops_and_saves_nothing_new; this one is +inf, via the CLI path."""
    run = tmp_path / "run"

    def spike(trainer: Trainer) -> None:
        if trainer.progress.step == 4:
            with torch.no_grad():
                trainer.parts.model.embed.weight.fill_(float("inf"))

    options = TrainOptions(
        data=[str(text_file)],
        preset="tiny",
        d_model=32,
        n_layers=1,
        n_heads=2,
        seq_len=16,
        batch_size=2,
        eval_windows=2,
        steps=10,
        save_every=2,
        eval_every=100,
        out=str(run),
        dtype="float32",
        threads=1,
    )
    with pytest.raises(RunFailure, match=r"at step 5\b") as info:
        train(options, on_step=spike)
    assert "last good checkpoint" in str(info.value) and "\n" not in str(info.value)
    assert trainer_step(run) == 4
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bfloat16_without_hardware_support_falls_back_with_a_warning(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    run = tmp_path / "run"
    flags = [f for f in TINY_TRAIN if f not in ("--dtype", "float32")]
    code, out, err = run_cli(
        [
            "train",
            "--data",
            str(text_file),
            *flags,
            "--dtype",
            "bfloat16",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--out",
            str(run),
        ],
        capsys,
    )
    assert code == 0, err
    shown = out + err
    assert "warning" in shown.lower() and "bfloat16" in shown and "float32" in shown
    assert json.loads((run / "checkpoint" / "config.json").read_text())["training"]["dtype"] == "float32"
    # where bfloat16 is supported it is used as asked
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    assert devices.select_precision("bfloat16", torch.device("cpu")).name == "bfloat16"

"""Resuming training exactly, Ctrl-C saving a loadable checkpoint, the run lock and corrupt trainer state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import final_error_line, run_cli
from safetensors.torch import load_file

from glactl.storage.checkpoint import load_model
from glactl.training.options import TrainOptions
from glactl.training.trainer import Trainer, TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--preset",
    "tiny",
    "--d-model",
    "64",
    "--n-layers",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--eval-windows",
    "4",
    "--eval-every",
    "10",
    "--save-every",
    "7",
    "--threads",
    "1",
    "--dtype",
    "float32",
]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}: the rain in spain stays mainly in the plain.\n" for i in range(400)))
    return path


def tensors(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / name))


def assert_identical(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = tensors(a, name), tensors(b, name)
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key} differs"


def test_steps_20_then_resume_to_40_is_bit_identical(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The schedule must not depend on where a run stops, so this uses a constant rate after a fixed warmup.
    common = ["train", "--data", str(text_file), *FAST, "--schedule", "constant", "--warmup", "5"]
    assert run_cli([*common, "--steps", "40", "--out", str(tmp_path / "one")], capsys)[0] == 0
    assert run_cli([*common, "--steps", "20", "--out", str(tmp_path / "two")], capsys)[0] == 0
    code, out, err = run_cli(["train", "--steps", "40", "--out", str(tmp_path / "two"), "--resume"], capsys)
    assert code == 0, err
    assert "resuming" in err and "from step 20" in err and out == ""  # logs on stderr
    assert_identical(tmp_path / "one", tmp_path / "two")
    trainer = json.loads((tmp_path / "two" / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 40 and trainer["tokens_seen"] == 40 * 16 * 2


def test_interrupted_cosine_run_resumes_bit_identical(tmp_path: Path, text_file: Path) -> None:
    def options(out: Path, **extra: object) -> TrainOptions:
        return TrainOptions(
            data=[str(text_file)],
            preset="tiny",
            d_model=64,
            n_layers=1,
            seq_len=16,
            batch_size=2,
            eval_windows=4,
            eval_every=10,
            save_every=100,
            steps=40,
            out=str(out),
            threads=1,
            dtype="float32",
            **extra,
        )

    train(options(tmp_path / "one"))

    def stop_at_20(trainer: Trainer) -> None:
        if trainer.progress.step == 20:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted, match="--resume") as info:
        train(options(tmp_path / "two"), on_step=stop_at_20)
    assert info.value.exit_code == 130
    assert json.loads((tmp_path / "two" / "checkpoint" / "trainer.json").read_text())["step"] == 20
    train(options(tmp_path / "two", resume=True))
    assert_identical(tmp_path / "one", tmp_path / "two")


def train_lrs(run: Path) -> dict[int, float]:
    """Step -> the learning rate of the update that made it (every step logged with --log-every 1)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if r["kind"] == "train"}


def test_resume_with_more_steps_continues_the_cosine_down_to_the_floor(tmp_path: Path, text_file: Path) -> None:
    """40 steps, then --resume --steps 80: the rate never rises after warmup and ends at the floor; a resume cut
    short and resumed again continues the same curve (trainer.json records where it was extended)."""

    def options(out: Path, steps: int | None, **extra: object) -> TrainOptions:
        given = (
            dict(data=[str(text_file)], preset="tiny", d_model=64, n_layers=1, dtype="float32") if steps == 40 else {}
        )
        common = dict(seq_len=16, batch_size=2, eval_windows=4, eval_every=100, save_every=100, log_every=1)
        return TrainOptions(out=str(out), steps=steps, threads=1, **given, **common, **extra)

    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        train(options(run, 40))
    train(options(one, 80, resume=True))
    lrs = [lr for _, lr in sorted(train_lrs(one).items())]
    peak, warmup = 1e-3, 4  # gla's default rate; the default warmup of 40 steps, kept on resume
    assert len(lrs) == 80 and lrs[warmup - 1] == pytest.approx(peak)
    assert all(b <= a for a, b in zip(lrs[warmup - 1 :], lrs[warmup:]))  # 4.53e-04 at step 50 was the bug
    assert lrs[40] <= lrs[39] and lrs[-1] == pytest.approx(0.1 * peak, rel=1e-3)
    schedule = json.loads((one / "checkpoint" / "trainer.json").read_text())["schedule"]
    assert schedule["total_steps"] == 80 and schedule["warmup"] == warmup
    assert schedule["extended_at"]["step"] == 39 and schedule["extended_at"]["lr"] == lrs[39]

    def stop_at_60(trainer: Trainer) -> None:
        if trainer.progress.step == 60:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        train(options(two, 80, resume=True), on_step=stop_at_60)
    train(options(two, None, resume=True))  # the same end (80, from trainer.json): the extended curve goes on
    assert train_lrs(two) == train_lrs(one)
    assert_identical(one, two)


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_saves_a_loadable_checkpoint_and_the_lock_refuses_a_second_run(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(text_file),
        *FAST,
        "--steps",
        "100000",
        "--log-every",
        "1",
        "--save-every",
        "100000",
        "--eval-every",
        "100000",
        "--out",
        str(run),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "glactl", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and '"kind": "train"' in metrics.read_text():
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        # A second run on the same folder is refused while the first holds the lock.
        code, _, err = run_cli(
            ["train", "--data", str(text_file), *FAST, "--steps", "5", "--out", str(run), "--resume"], capsys
        )
        assert code == 2 and f"pid {process.pid}" in err and len(err.strip().splitlines()) == 1
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "--resume" in final_error_line(err)  # the training log, then one error line
    step = json.loads((run / "checkpoint" / "trainer.json").read_text())["step"]
    assert step >= 1
    model, document = load_model(run)
    assert document["training"]["steps"] == step and torch.isfinite(model.embed.weight).all()
    assert not (run / "train.lock").exists()
    code, out, err = run_cli(["train", "--out", str(run), "--resume", "--steps", str(step + 2)], capsys)
    assert code == 0, err
    assert json.loads((run / "checkpoint" / "trainer.json").read_text())["step"] == step + 2


def test_corrupt_trainer_state_is_one_line(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(text_file), *FAST, "--steps", "2", "--out", str(run)], capsys)[0] == 0
    optimizer = run / "checkpoint" / "optimizer.safetensors"
    good = optimizer.read_bytes()
    optimizer.write_bytes(good[: len(good) // 2])
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4"], capsys)
    assert code == 2 and "optimizer.safetensors" in err and len(err.strip().splitlines()) == 1
    optimizer.write_bytes(good)
    (run / "checkpoint" / "trainer.json").write_text("{not json")
    code, _, err = run_cli(["train", "--out", str(run), "--resume", "--steps", "4"], capsys)
    assert code == 2 and "trainer.json" in err and len(err.strip().splitlines()) == 1
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))

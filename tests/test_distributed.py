"""`torchrun --nproc-per-node 2 -m glactl train` on CPU (gloo on loopback): the same updates as one process.

Each optimizer step's windows are drawn from (seed, step) as in one process and split across the
ranks, and DDP averages the gradients, so two processes must land on the weights of one process with
the same global batch (float32; only the order of summation differs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glactl.cli.app import main

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with the gloo backend",
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Global batch 4 windows x 2 micro-batches: each rank takes 2 windows of each micro-batch.
ARGS = [
    "--preset",
    "tiny",
    "--d-model",
    "64",
    "--n-layers",
    "1",
    "--seq-len",
    "16",
    "--batch-size",
    "4",
    "--grad-accum",
    "2",
    "--eval-windows",
    "4",
    "--eval-every",
    "10",
    "--save-every",
    "10",
    "--log-every",
    "5",
    "--threads",
    "1",
    "--dtype",
    "float32",
    "--device",
    "cpu",
    "--lr",
    "3e-3",
    "--warmup",
    "4",
    "--schedule",
    "constant",
]  # constant after warmup: a run stopped at step 10 and resumed to 20 matches one of 20


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs. " * 200)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """`python -m torch.distributed.run --nproc-per-node N -m glactl train ARGS` on loopback."""
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "glactl",
        "train",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT)


def one_process(args: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str]:
    """`glactl train ARGS` in this process (no torchrun variables): exit code and stderr."""
    with pytest.raises(SystemExit) as info:
        main(["train", *args])
    err = capsys.readouterr().err if capsys is not None else ""
    return int(info.value.code or 0), err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """One process, 20 steps: the run two processes must reproduce."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert one_process(["--data", str(text_file), *ARGS, "--steps", "20", "--out", str(run)])[0] == 0
    return run


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(
    tmp_path: Path, text_file: Path, reference: Path
) -> None:
    run = tmp_path / "run"
    result = torchrun(["--data", str(text_file), *ARGS, "--steps", "20", "--out", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "over 2 processes (gloo)" in result.stderr  # the training log is on stderr
    # Rank 0 alone writes: one checkpoint, one best, one metrics file without duplicated records, no lock left.
    assert sorted(p.name for p in run.iterdir()) == ["best", "checkpoint", "metrics.jsonl"]
    assert result.stderr.count("done: step 20") == 1
    log = records(run)
    train_steps = [r["step"] for r in log if r["kind"] == "train"]
    assert train_steps == [5, 10, 15, 20]
    assert [r["step"] for r in log if r["kind"] == "eval"] == [0, 10, 20]
    trainer = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 20 and trainer["tokens_seen"] == 20 * 16 * 4 * 2
    # Training loss falls, and the weights are those of one process.
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 0.5
    assert max_difference(weights(run), weights(reference)) < 1e-5
    # The logged losses are the global batch's, so they match one process too.
    single = [r["loss"] for r in records(reference) if r["kind"] == "train"]
    assert losses == pytest.approx(single, abs=1e-4)
    # No DDP `module.` prefixes: the checkpoint loads as a plain model.
    assert not any(k.startswith("module.") for k in weights(run))


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_two_process_run_resumes_on_one_process(tmp_path: Path, text_file: Path, reference: Path) -> None:
    run = tmp_path / "run"
    result = torchrun(["--data", str(text_file), *ARGS, "--steps", "10", "--out", str(run)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert one_process(["--out", str(run), "--resume", "--steps", "20"])[0] == 0
    assert json.loads((run / "checkpoint" / "trainer.json").read_text())["step"] == 20
    assert max_difference(weights(run), weights(reference)) < 1e-5


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_one_process_run_resumes_on_two_processes(tmp_path: Path, text_file: Path, reference: Path) -> None:
    run = tmp_path / "run"
    assert one_process(["--data", str(text_file), *ARGS, "--steps", "10", "--out", str(run)])[0] == 0
    result = torchrun(["--out", str(run), "--resume", "--steps", "20"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming" in result.stderr and result.stderr.count("resuming") == 1
    assert max_difference(weights(run), weights(reference)) < 1e-5


def test_a_global_batch_that_does_not_split_is_one_line(
    tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What torchrun sets for rank 0 of 2; the check comes before joining the process group.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["--data", str(text_file), *ARGS, "--steps", "2", "--out", str(tmp_path / "run")]
    args[args.index("--batch-size") + 1] = "3"
    code, err = one_process(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--batch-size 3 (the global batch) must be divisible by the 2 processes" in err
    assert not (tmp_path / "run").exists()

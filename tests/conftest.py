"""Shared test helpers: offline mode, the shared data folder, relative error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from glactl.cli.app import main
from glactl.storage import checkpoint

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault(
    "GLACTL_CALIBRATE", "0"
)  # --precision auto keeps its fixed rule; tests of the measurement turn it on
# Tiny models run fastest on one thread, and two threads fight badly on a loaded 2-core machine.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# A tiny model on one thread in float32: the train flags of tests that need a quick, repeatable run.
TINY_TRAIN = ["--preset", "tiny", "--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--seq-len", "16"]
TINY_TRAIN += ["--batch-size", "2", "--eval-windows", "2", "--threads", "1", "--dtype", "float32"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """docs/design.md §3.1: max|a - b| / max|b| over the whole tensor (b is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or skip the test with a reason when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's glactl cache out of the user's home."""
    monkeypatch.setenv("GLACTL_CACHE", str(tmp_path_factory.getbasetemp() / "glactl-cache"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step tiny GLA run folder, trained once for the whole session: copy it before changing it."""
    from glactl.training.options import TrainOptions
    from glactl.training.trainer import train

    text = tmp_path_factory.mktemp("tiny-run-text") / "text.txt"
    text.write_text("".join(f"line {i}: the rain in spain stays mainly in the plain.\n" for i in range(300)))
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    options = TrainOptions(
        data=[str(text)], preset="tiny", d_model=32, n_layers=1, n_heads=2, seq_len=16, batch_size=2,
        steps=2, eval_windows=2, out=str(run), threads=1, dtype="float32",
    )  # fmt: skip
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch, open(os.devnull, "w") as quiet:
        patch.setenv("GLACTL_CACHE", str(tmp_path_factory.getbasetemp() / "glactl-cache"))
        patch.setattr(sys, "stderr", quiet)
        train(options)
    torch.set_num_threads(threads)
    return run


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    """Commands set torch's thread count; put it back for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make glactl.load (and so the CLI) run checkpoints in float64, for exact comparisons."""
    original = checkpoint.load_model

    def load64(path, device="cpu"):  # noqa: ANN001, ANN202
        model, document = original(path, device)
        return model.double(), document

    monkeypatch.setattr(checkpoint, "load_model", load64)


def make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 0o555 `folder`; where that does not stop this user (root writes anywhere), glactl's writability probe
    (glactl.storage.atomic.folder_writable) is made to answer as for a read-only folder instead."""
    from glactl.storage import atomic

    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # running as root
        probe = atomic.folder_writable
        monkeypatch.setattr(
            atomic, "folder_writable", lambda path: Path(path).resolve() != folder.resolve() and probe(path)
        )


@pytest.fixture
def fake_compiler(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """--compile without a compiler: "building" a package sleeps `seconds` and the package runs the model's eager step."""
    import time

    from glactl.inference import compiled_step

    built: dict[str, Any] = {"seconds": 0.2, "count": 0}

    def build(model: Any, batch: int, path: Path) -> None:
        time.sleep(built["seconds"])
        built["count"] += 1
        built[str(path)] = model.step

    monkeypatch.setattr(compiled_step, "build_package", build)
    monkeypatch.setattr(compiled_step, "load_package", lambda path: built[str(path)])
    return built


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run glactl in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    """Bad input: exit 2, nothing on stdout, one `glactl: error:` line on stderr naming each word."""
    assert code == 2, (code, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glactl: error:") and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


def final_error_line(err: str) -> str:
    """A failure after work began: stderr holds the logs, then exactly one `glactl: error:` line, last; returns it."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("glactl: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


# A glactl CLI run in a child process that reports its own peak RSS (ru_maxrss of RUSAGE_SELF).
CHILD = """
import resource, sys
from glactl.cli.app import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
sys.stderr.write("\\nMAXRSS_KB %d %s\\n" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, code))
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env


def start_child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
    )


def child_result(process: subprocess.Popen, timeout: float = 240) -> tuple[str, float]:
    """The child's stdout and its own peak RSS in MB (as the child reported it)."""
    out, err = process.communicate(timeout=timeout)
    found = re.search(rb"MAXRSS_KB (\d+) (\S+)", err)
    assert found, err.decode(errors="replace")[-2000:]
    assert found.group(2) in (b"0", b"None"), err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace"), int(found.group(1)) / 1024

"""The shipped checkpoints in weights/: they load, generate, score WikiText sanely, and install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shared_file

import glactl
from glactl.storage.model_paths import DEFAULT_WEIGHTS, resolve_model

SHIPPED = ("gla-enwiki", "transformer-enwiki")
WEIGHTS = REPO_ROOT / "weights"


def _require(name: str) -> Path:
    folder = WEIGHTS / name
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"shipped weights {name} not in this checkout")
    return folder


def test_default_model_is_the_shipped_gla() -> None:
    _require(DEFAULT_WEIGHTS)
    assert resolve_model(None).name == DEFAULT_WEIGHTS
    assert glactl.load(device="cpu").config.mixer == "gla"


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_generates_and_scores_wikitext(name: str) -> None:
    """Sanity bound from the issue: the first 50 KB of wiki.test.raw under 2.1 bits per byte."""
    _require(name)
    model = glactl.load(name, device="cpu", threads=2)
    text = model.generate("The history of", max_new_tokens=200, seed=0)
    assert isinstance(text, str) and len(text.encode("utf-8", "replace")) >= 150
    data = shared_file("wikitext-103-raw/wiki.test.raw").read_bytes()[:50_000]
    metrics = model.perplexity(data)
    assert metrics["bytes"] == 50_000
    assert metrics["bits_per_byte"] < 2.1


def test_model_cards_name_data_and_results() -> None:
    for name in SHIPPED:
        card = (_require(name) / "README.md").read_text()
        for needle in ("CC BY-SA", "enwiki-2015", "wiki.test.raw", "enwiki-2021-heldout", "bits per byte"):
            assert needle in card, (name, needle)


@pytest.mark.subprocess
@pytest.mark.slow
def test_regular_install_ships_the_weights(tmp_path: Path) -> None:
    """A wheel (what `pip install .` installs) carries weights/ as glactl/weights/ and finds the default."""
    _require(DEFAULT_WEIGHTS)
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (the test extra brings it)")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("glactl-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert f"glactl/weights/{DEFAULT_WEIGHTS}/model.safetensors" in archive.namelist()
        archive.extractall(site)
    probe = "import glactl.storage.model_paths as p; print(p.resolve_model(None))"
    run = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert Path(run.stdout.strip()).resolve() == (site / "glactl" / "weights" / DEFAULT_WEIGHTS).resolve()

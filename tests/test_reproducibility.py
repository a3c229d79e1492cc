"""Reproducibility: same seed, same flags, same machine, --threads 1 -> identical weights and text.

What is and is not promised across machines and thread counts is in README.md, "Reproducibility".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY_TRAIN, run_cli
from safetensors.torch import load_file

TRAIN = [
    *TINY_TRAIN,
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--seed",
    "7",
]


@pytest.mark.subprocess
@pytest.mark.slow
def test_same_seed_same_flags_same_weights_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "text.txt"
    data.write_text("".join(f"{i} green bottles hanging on the wall\n" for i in range(200)))
    for name in ("a", "b"):
        code, _, err = run_cli(["train", "--data", str(data), *TRAIN, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
    for file in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoint" / file))
        b = load_file(str(tmp_path / "b" / "checkpoint" / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    evals = [
        [
            json.loads(line)["val_bpb"]
            for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "eval"
        ]
        for n in ("a", "b")
    ]
    assert evals[0] == evals[1]
    # a different seed gives different weights (the seed is really used)
    code, _, err = run_cli(
        ["train", "--data", str(data), *TRAIN[:-2], "--seed", "8", "--out", str(tmp_path / "c")], capsys
    )
    assert code == 0, err
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    c = load_file(str(tmp_path / "c" / "checkpoint" / "model.safetensors"))
    assert not torch.equal(c["embed.weight"], a["embed.weight"])

    def generate() -> dict:
        code, out, err = run_cli(
            [
                "generate",
                "9 green",
                "--model",
                str(tmp_path / "a"),
                "--max-new-tokens",
                "40",
                "--seed",
                "3",
                "--threads",
                "1",
                "--num-samples",
                "2",
                "--json",
            ],
            capsys,
        )
        assert code == 0, err
        return json.loads(out)

    first, second = generate(), generate()
    assert first["samples"] == second["samples"] and first["seed"] == 3
    # and in a fresh process (no state carried over from this one)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "glactl",
            "generate",
            "9 green",
            "--model",
            str(tmp_path / "a"),
            "--max-new-tokens",
            "40",
            "--seed",
            "3",
            "--threads",
            "1",
            "--num-samples",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == first["samples"]

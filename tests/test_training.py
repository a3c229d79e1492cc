"""`glactl train`: learning on real text, the summary it saves, flags, failures and progress output."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli, shared_file
from rich.console import Console
from safetensors.torch import load_file

from glactl.errors import InputError, RunFailure
from glactl.storage.checkpoint import load_model
from glactl.training.options import TrainOptions, default_warmup, parse_duration
from glactl.training.schedule import Schedule, continue_schedule
from glactl.training.trainer import Trainer, train

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
    "--threads",
    "1",
    "--dtype",
    "float32",
]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 300)
    return path


@pytest.mark.shared_data
@pytest.mark.slow
def test_200_steps_on_tinyshakespeare_lower_bits_per_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_file("prose/tinyshakespeare.txt")
    run = tmp_path / "run"
    code, out, err = run_cli(
        [
            "train",
            "--data",
            str(data),
            "--preset",
            "tiny",
            "--seq-len",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "200",
            "--eval-every",
            "100",
            "--eval-windows",
            "8",
            "--log-every",
            "50",
            "--dtype",
            "float32",
            "--threads",
            "1",
            "--out",
            str(run),
        ],
        capsys,
    )
    assert code == 0, err
    evals = [m for m in metrics(run) if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 100, 200]
    assert evals[0]["val_bpb"] - evals[-1]["val_bpb"] >= 1.0
    trains = [m for m in metrics(run) if m["kind"] == "train"]
    assert [m["step"] for m in trains] == [50, 100, 150, 200]
    assert all({"loss", "bpb", "lr", "tokens_per_s", "tokens", "wall_time"} <= set(m) for m in trains)
    assert (
        "step 200/200" in err and "val bpb" in err and out == ""
    )  # plain log lines on stderr; stdout holds results only
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    summary = config["training"]
    assert summary["steps"] == 200 and summary["tokens_seen"] == 200 * 32 * 4
    assert summary["data"][0]["source"] == str(data)
    assert math.isclose(summary["val_bits_per_byte"], evals[-1]["val_bpb"], rel_tol=1e-5)
    assert summary["wall_time_seconds"] > 0 and summary["glactl_version"] and "--steps 200" in summary["command"]
    assert {p.name for p in (run / "checkpoint").iterdir()} == {
        "model.safetensors",
        "config.json",
        "optimizer.safetensors",
        "trainer.json",
    }
    assert {p.name for p in (run / "best").iterdir()} == {"model.safetensors", "config.json"}
    assert not (run / "train.lock").exists()
    model, _ = load_model(run)
    assert model.config.d_model == 128


def test_grad_accum_matches_a_bigger_batch(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["train", "--data", str(text_file), *FAST, "--steps", "3", "--eval-every", "100"]
    assert run_cli([*common, "--out", str(tmp_path / "a"), "--batch-size", "4"], capsys)[0] == 0
    assert run_cli([*common, "--out", str(tmp_path / "b"), "--batch-size", "2", "--grad-accum", "2"], capsys)[0] == 0
    a = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_nan_loss_stops_and_saves_nothing_new(tmp_path: Path, text_file: Path) -> None:
    run = tmp_path / "run"

    def poison(trainer: Trainer) -> None:
        if trainer.progress.step == 3:
            with torch.no_grad():
                trainer.parts.model.embed.weight.fill_(float("nan"))

    options = TrainOptions(
        data=[str(text_file)],
        preset="tiny",
        d_model=64,
        n_layers=1,
        seq_len=16,
        batch_size=2,
        eval_windows=4,
        steps=10,
        save_every=2,
        eval_every=100,
        out=str(run),
        dtype="float32",
        threads=1,
    )
    with pytest.raises(RunFailure, match="step 4") as info:
        train(options, on_step=poison)
    assert info.value.exit_code == 1 and "\n" not in str(info.value)
    assert json.loads((run / "checkpoint" / "trainer.json").read_text())["step"] == 2
    model, _ = load_model(run)  # the last good checkpoint loads (finite weights)
    assert torch.isfinite(model.embed.weight).all()
    assert max(m["step"] for m in metrics(run)) <= 3
    assert not (run / "train.lock").exists()


@pytest.mark.slow
def test_time_budget_counts_across_resumes(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(text_file), *FAST, "--time", "2s", "--out", str(run)], capsys)
    assert code == 0, err
    first = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert first["elapsed_seconds"] >= 2.0 and first["schedule"]["time_budget_seconds"] == 2.0
    code, out, err = run_cli(["train", "--out", str(run), "--resume"], capsys)
    assert code == 0, err
    second = json.loads((run / "checkpoint" / "trainer.json").read_text())
    assert second["step"] == first["step"]  # the budget was already spent: no new steps


def test_init_from_starts_from_weights_with_a_fresh_optimizer(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    assert run_cli(["train", "--data", str(text_file), *FAST, "--steps", "6", "--out", str(base)], capsys)[0] == 0
    tuned = tmp_path / "tuned"
    code, _, err = run_cli(
        [
            "train",
            "--data",
            str(text_file),
            "--init-from",
            str(base),
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--eval-windows",
            "4",
            "--dtype",
            "float32",
            "--threads",
            "1",
            "--steps",
            "2",
            "--out",
            str(tuned),
        ],
        capsys,
    )
    assert code == 0, err
    base_final = [m for m in metrics(base) if m["kind"] == "eval"][-1]["val_bpb"]
    tuned_start = [m for m in metrics(tuned) if m["kind"] == "eval"][0]
    assert tuned_start["step"] == 0 and math.isclose(tuned_start["val_bpb"], base_final, rel_tol=1e-4)
    trainer = json.loads((tuned / "checkpoint" / "trainer.json").read_text())
    assert trainer["step"] == 2
    optimizer = load_file(str(tuned / "checkpoint" / "optimizer.safetensors"))
    assert {v.item() for k, v in optimizer.items() if k.endswith(".step")} == {2.0}
    summary = json.loads((tuned / "checkpoint" / "config.json").read_text())["training"]
    assert summary["init_from"].endswith("checkpoint")
    code, _, err = run_cli(
        [
            "train",
            "--data",
            str(text_file),
            "--init-from",
            str(base),
            "--d-model",
            "128",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "bad"),
        ],
        capsys,
    )
    assert code == 2 and "d_model" in err


def test_rich_progress_on_a_terminal(tmp_path: Path, text_file: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    options = TrainOptions(
        data=[str(text_file)],
        preset="tiny",
        d_model=64,
        n_layers=1,
        seq_len=16,
        batch_size=2,
        eval_windows=4,
        steps=4,
        log_every=1,
        out=str(tmp_path / "run"),
        dtype="float32",
        threads=1,
    )
    summary = train(options, console)
    assert summary["steps"] == 4
    shown = buffer.getvalue()
    assert "\x1b[" in shown and "tok/s" in shown and "val bpb" in shown


def test_run_folder_rules(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "--data", str(text_file), *FAST, "--steps", "2", "--out", str(run)]
    code, _, err = run_cli(["train", "--data", str(text_file), "--steps", "2", "--out", str(run), "--resume"], capsys)
    assert code == 2 and "no checkpoint" in err and len(err.strip().splitlines()) == 1
    assert run_cli(base, capsys)[0] == 0
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "--resume" in err and "--force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*base, "--force"], capsys)
    assert code == 0, err
    assert [m["step"] for m in metrics(run) if m["kind"] == "eval"] == [0, 2]  # started over
    code, _, err = run_cli(
        [*base[:-2], "--out", str(run), "--resume", "--steps", "4", "--model", "gla", "--n-layers", "3"], capsys
    )
    assert code == 2 and "n_layers" in err


def test_stale_lock_is_taken_over(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text("999999999\n")  # no such process
    code, _, err = run_cli(["train", "--data", str(text_file), *FAST, "--steps", "1", "--out", str(run)], capsys)
    assert code == 0, err
    assert not (run / "train.lock").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--time", "ten minutes"], "--time"),
        (["--dtype", "float64"], "--dtype"),
        (["--device", "tpu"], "--device"),
        (["--schedule", "linear"], "--schedule"),
        (["--preset", "huge"], "preset"),
        (["--model", "nope"], "nope"),
    ],
)
def test_bad_flags_are_one_line(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code, _, err = run_cli(
        ["train", "--data", str(text_file), "--steps", "2", "--threads", "1", "--out", str(tmp_path / "r"), *flags],
        capsys,
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_lists_the_choices(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        ["train", "--data", str(text_file), "--steps", "2", "--device", "cuda", "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2 and "valid choices" in err and "cpu" in err


def test_bad_data_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli(["train", "--data", str(empty), "--steps", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "empty" in err and len(err.strip().splitlines()) == 1


def test_wikitext_offline_no_cache_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _, err = run_cli(["train", "--data", "wikitext-103", "--steps", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--data PATH" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_schedule_and_durations() -> None:
    cosine = Schedule(1.0, warmup=10, total_steps=110, time_budget=None)
    assert cosine.lr(0, 0) == pytest.approx(0.1) and cosine.lr(9, 0) == pytest.approx(1.0)
    assert cosine.lr(10, 0) == pytest.approx(1.0) and cosine.lr(110, 0) == pytest.approx(0.1)
    assert cosine.lr(60, 0) == pytest.approx(0.55)
    timed = Schedule(1.0, warmup=0, total_steps=None, time_budget=100.0)
    assert timed.lr(5, 50.0) == pytest.approx(0.55) and timed.lr(5, 100.0) == pytest.approx(0.1)
    assert Schedule(1.0, 2, 100, None, "constant").lr(50, 0) == 1.0
    # A time budget alone: warmup ends after 100 steps or 2% of the budget (here 2 s of 100 s), whichever first.
    short = Schedule(1.0, warmup=100, total_steps=None, time_budget=100.0, warmup_seconds=2.0)
    assert short.lr(0, 0.5) == pytest.approx(0.25) and short.lr(5, 1.0) == pytest.approx(0.5)
    assert short.lr(30, 2.0) == pytest.approx(timed.lr(30, 2.0))  # past the time warmup: the cosine
    assert short.lr(50, 1.0) == pytest.approx(0.51)  # the step ramp when it is ahead of the time ramp
    assert default_warmup(200) == 10 and default_warmup(40) == 4 and default_warmup(10**6) == 1000
    # an architecture's own share (GLA warms up over 10% of its steps), within the same bounds
    assert default_warmup(2500, 0.1) == 250 and default_warmup(400, 0.1) == 40 and default_warmup(10**6, 0.1) == 1000
    assert default_warmup(50, 0.1) == 5  # at most a tenth of the run
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("2h") == 7200
    with pytest.raises(InputError):
        parse_duration("0m")


@pytest.mark.parametrize(("mixer", "warmup"), [("gla", 50), ("transformer", 10), ("mingru", 10)])
def test_a_new_run_warms_up_for_its_architectures_share(tmp_path: Path, mixer: str, warmup: int) -> None:
    """GLA warms up over 10% of the steps, the others over 2% (within 10..1000); --warmup still decides."""
    task = dict(task="sort", task_options={"sort_count": 4, "sort_range": 3}, preset="tiny", d_model=32, n_layers=1)
    common = dict(model=mixer, steps=500, batch_size=2, dtype="float32", threads=1, **task)
    for given, expected in ((None, warmup), (7, 7)):
        trainer = Trainer(TrainOptions(out=str(tmp_path / f"{mixer}-{given}"), warmup=given, **common))
        trainer.setup()
        try:
            assert trainer.parts.schedule.warmup == expected
        finally:
            trainer.lock.release()


def test_a_resumed_schedule_with_a_new_end_continues_from_the_current_rate() -> None:
    """Same end: the saved curve, unchanged. A new end (steps or time) after warmup: from the last rate down to the
    floor, never up. A new end during warmup: the warmup goes on, then the cosine over the new end."""
    before = Schedule(1.0, warmup=4, total_steps=40, time_budget=None)
    same = continue_schedule(before, Schedule(1.0, 4, 40, None), 20, 3.0)
    assert [same.lr(s, 0) for s in range(60)] == [before.lr(s, 0) for s in range(60)] and same.extended_at is None
    longer = continue_schedule(before, Schedule(1.0, 4, 80, None), 40, 3.0)
    assert longer.extended_at == {"step": 39, "elapsed_seconds": 3.0, "lr": before.lr(39, 0)}
    rates = [longer.lr(s, 0) for s in range(39, 81)]
    assert rates[0] == before.lr(39, 0) and all(b < a for a, b in zip(rates, rates[1:])) and rates[-1] == 0.1
    again = continue_schedule(Schedule.from_dict(longer.to_dict(), "trainer.json"), Schedule(1.0, 4, 80, None), 60, 9.0)
    assert again.extended_at == longer.extended_at  # a second resume with the same end: the same extended curve
    shorter = continue_schedule(before, Schedule(1.0, 4, 30, None), 20, 3.0)
    assert shorter.lr(20, 0) <= before.lr(19, 0) and shorter.lr(30, 0) == pytest.approx(0.1)
    early = continue_schedule(before, Schedule(1.0, 4, 80, None), 2, 0.5)  # still warming up
    assert early.extended_at is None and early.lr(2, 0) == before.lr(2, 0) and early.lr(4, 0) == 1.0
    timed = Schedule(1.0, warmup=0, total_steps=None, time_budget=100.0)
    more_time = continue_schedule(timed, Schedule(1.0, 0, None, 200.0), 50, 60.0)
    assert more_time.lr(50, 60.0) == timed.lr(49, 60.0) and more_time.lr(80, 200.0) == pytest.approx(0.1)
    assert more_time.lr(60, 120.0) < more_time.lr(55, 90.0) < timed.lr(49, 60.0)
    constant = Schedule(1.0, 4, 40, None, "constant")
    assert continue_schedule(constant, Schedule(1.0, 4, 80, None, "constant"), 20, 1.0).extended_at is None
    for bad in ({**longer.to_dict(), "warmup": "4"}, {**longer.to_dict(), "extended_at": {"step": 1}}, None):
        with pytest.raises(InputError, match="trainer.json: missing or bad field 'schedule'"):
            Schedule.from_dict(bad, "trainer.json")


def test_task_run_trains_on_answers_resumes_and_loads(tmp_path: Path) -> None:
    """A probe task through the same loop: eval records with accuracy, no bits per byte; resume; best/ by answer loss."""
    run = tmp_path / "sort"
    options = dict(
        task="sort",
        task_options={"sort_count": 4, "sort_range": 3},
        model="gla",
        preset="tiny",
        d_model=64,
        n_layers=1,
        batch_size=4,
        eval_windows=8,
        eval_every=2,
        save_every=2,
        out=str(run),
        dtype="float32",
        threads=1,
    )
    summary = train(TrainOptions(steps=2, **options))
    assert summary["task"] == {
        "task": "sort",
        "seq_len": 8,
        "sort_count": 4,
        "sort_range": 3,
    }  # seq_len: the task's default
    assert summary["val_bits_per_byte"] is None and summary["data"] == []
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["sequence_accuracy"] <= 1 and summary["val_loss"] > 0
    summary = train(TrainOptions(steps=4, resume=True, out=str(run), threads=1))  # the task comes from trainer.json
    assert summary["steps"] == 4 and summary["task"]["sort_count"] == 4
    evals = [m for m in metrics(run) if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 2, 4]
    assert all({"val_loss", "accuracy", "sequence_accuracy"} <= set(m) and "val_bpb" not in m for m in evals)
    assert all("bpb" not in m for m in metrics(run))
    best = json.loads((run / "best" / "config.json").read_text())["training"]
    assert best["val_loss"] == min(m["val_loss"] for m in evals[1:])
    model, _ = load_model(run)
    assert model.config.context == 8


def test_short_conv_and_performer_rope_flags(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["train", "--data", str(text_file), *FAST, "--steps", "1", "--short-conv", "0", "--out", str(tmp_path / "a")],
        capsys,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "a" / "checkpoint" / "config.json").read_text())["architecture"]["short_conv"] == 0
    for flags, word in (
        (["--model", "transformer", "--short-conv", "4"], "short_conv"),
        (["--performer-rope"], "performer_rope"),
    ):
        code, _, err = run_cli(
            ["train", "--data", str(text_file), *FAST, "--steps", "1", *flags, "--out", str(tmp_path / "b")], capsys
        )
        assert code == 2 and word in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "b").exists()


def test_model_options_reach_a_new_model_and_are_validated() -> None:
    """TrainOptions.model_options (ablations such as benchmarks/gla_levers.py) set ModelConfig fields of a new model."""
    from glactl.training.setup import new_model_config

    config = new_model_config(
        TrainOptions(
            model="gla", preset="tiny", n_heads=2, model_options={"gla_gate_normalizer": 8.0, "gla_gate_rank": 64}
        )
    )
    assert (config.n_heads, config.gla_gate_normalizer, config.gla_gate_rank) == (2, 8.0, 64)
    with pytest.raises(InputError):
        new_model_config(TrainOptions(model="gla", preset="tiny", model_options={"gla_gate_normalizer": -1.0}))

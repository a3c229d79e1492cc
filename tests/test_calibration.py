"""--precision auto measured on this machine: the choice among the timings, the cache (kept, keyed, rewritten
when damaged), the fixed rule where it cannot measure, and every choice computing what float32 computes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import glactl
from glactl.errors import InputError
from glactl.inference import calibration
from glactl.inference.precision import AUTO_BPB_BOUND
from glactl.models import LanguageModel, ModelConfig

TEXT = b"The history of the city: its rivers, roads and bridges, year by year. "


def tiny(d_model: int = 32) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.tiny(mixer="gla", d_model=d_model, n_layers=2, n_heads=4))


class StandIn:
    """A timer that answers given seconds per precision and counts its calls (the prepared copy is the precision's
    name: `prepare` below)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds, self.calls = seconds, []

    def __call__(self, precision: str, work: str, threads: int) -> float:
        self.calls.append((precision, work, threads))
        return self.seconds[precision]


def by_name(model: Any, precision: str) -> str:
    return precision


@pytest.fixture
def measuring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLACTL_CALIBRATE", "1")
    monkeypatch.setenv("GLACTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration, "candidates", lambda device: ["float32", "bfloat16", "int8"])


def test_the_fastest_precision_within_the_cost_bound_is_chosen() -> None:
    one = lambda seconds: {(p, 1): s for p, s in seconds.items()}  # noqa: E731
    assert calibration.choose(one({"float32": 3.0, "bfloat16": 2.0, "int8": 1.0})) == ("int8", 1)
    assert calibration.choose(one({"float32": 1.0, "bfloat16": 2.0, "int8": 1.5})) == ("float32", 1)
    assert calibration.choose(one({"float32": 1.0, "int8": 1.0})) == ("float32", 1)  # a tie keeps the exact one
    costly = {"float32": 0.0, "bfloat16": AUTO_BPB_BOUND * 2, "int8": AUTO_BPB_BOUND}
    assert calibration.choose(one({"float32": 3.0, "bfloat16": 1.0, "int8": 2.0}), costly) == ("int8", 1)
    assert all(cost <= AUTO_BPB_BOUND for cost in calibration.BPB_COST.values())
    # thread counts: the fastest pair wins; a tie keeps the first count given (the rule's)
    pairs = {("float32", 1): 3.0, ("int8", 1): 2.0, ("float32", 2): 2.5, ("int8", 2): 1.0}
    assert calibration.choose(pairs) == ("int8", 2)
    assert calibration.choose({("float32", 1): 1.0, ("float32", 2): 1.0}) == ("float32", 1)
    assert calibration.choose({("float32", 2): 1.0, ("float32", 1): 1.0}) == ("float32", 2)


def test_a_calibration_is_measured_once_and_cached_per_work_and_threads(
    measuring: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, timer = tiny(), StandIn({"float32": 3.0, "bfloat16": 2.0, "int8": 1.0})
    first = calibration.calibrate(model, "decode", 1, tmp_path, timer, by_name)
    assert first is not None and (first.precision, first.threads, first.cached, first.speedup) == (
        "int8",
        1,
        False,
        3.0,
    )
    assert sorted(timer.calls) == sorted([(p, "decode", 1) for p in ("float32", "bfloat16", "int8")] * 4)
    assert "measured decode" in capsys.readouterr().err
    again = calibration.calibrate(
        model, "decode", 1, tmp_path, StandIn({}), by_name
    )  # a timer that would fail if called
    assert again is not None and (again.precision, again.cached, again.seconds) == ("int8", True, first.seconds)
    scoring = StandIn({"float32": 1.0, "bfloat16": 2.0, "int8": 1.5})
    assert calibration.calibrate(model, "score", 1, tmp_path, scoring, by_name).precision == "float32"
    assert calibration.calibrate(model, "score", 2, tmp_path, scoring, by_name).precision == "float32"
    assert calibration.calibrate(tiny(d_model=48), "score", 2, tmp_path, scoring, by_name).precision == "float32"
    assert len(scoring.calls) == 3 * 3 * 4  # a new measurement for other threads and for another shape
    document = json.loads((tmp_path / calibration.CALIBRATION_FILE).read_text())
    assert len(document) == 4 and {e["work"] for e in document.values()} == {"decode", "score"}
    assert all(e["machine"] == calibration.machine() for e in document.values())


class ThreadStandIn(StandIn):
    """Seconds per (precision, threads): a second thread halves float32 and bfloat16 but slows int8 here."""

    def __call__(self, precision: str, work: str, threads: int) -> float:
        self.calls.append((precision, work, threads))
        return self.seconds[precision] * ({"int8": 1.5} if threads == 2 else {}).get(
            precision, 0.5 if threads == 2 else 1
        )


def test_thread_counts_are_timed_with_each_precision_and_the_fastest_pair_kept(
    measuring: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, timer = tiny(), ThreadStandIn({"float32": 3.0, "bfloat16": 2.0, "int8": 1.2})
    chosen = calibration.calibrate(model, "score", (1, 2), tmp_path, timer, by_name)
    assert chosen is not None and (chosen.precision, chosen.threads, chosen.thread_counts) == ("bfloat16", 2, (1, 2))
    assert chosen.speedup == 3.0  # float32 on 1 thread (the rule's count) against bfloat16 on 2
    assert sorted(timer.calls) == sorted([(p, "score", t) for p in ("float32", "bfloat16", "int8") for t in (1, 2)] * 4)
    assert "bfloat16 on 2 threads" in capsys.readouterr().err
    cached = calibration.calibrate(model, "score", (1, 2), tmp_path, StandIn({}), by_name)
    assert cached is not None and cached.cached and (cached.precision, cached.threads) == ("bfloat16", 2)
    one = calibration.calibrate(model, "score", (1,), tmp_path, timer, by_name)  # other counts: measured again
    assert one is not None and not one.cached and (one.precision, one.threads) == ("int8", 1)


def test_load_runs_the_thread_count_auto_measured_faster(
    measuring: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from glactl.runtime import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(calibration, "time_run", lambda probe, work, count: 1.0 / count)
    monkeypatch.setattr(threads, "idle_cores", lambda: (2, "2 idle cores"))
    try:
        fast = glactl.load(None, threads=(1, 2), precision="auto")
        assert fast.threads == 2 and fast.calibration is not None and fast.calibration.threads == 2
        monkeypatch.setattr(threads, "idle_cores", lambda: (1, "1 idle core"))  # busy now: never oversubscribed
        assert glactl.load(None, threads=(1, 2), precision="auto").threads == 1
        exact = glactl.load(None, threads=(1, 2), precision="float32")  # auto does not measure: the first count
        assert exact.threads == 1 and exact.calibration is None
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="threads"):
        glactl.load(None, threads=(), precision="float32")


def test_thread_choices_time_one_and_the_cores_unless_a_count_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from glactl.runtime import threads

    monkeypatch.setattr(threads, "_ENVIRONMENT_THREADS", "")
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "idle_cores", lambda: (3, "3 idle cores of 4"))
    assert threads.thread_choices("decoding", None) == ((1, 4), "4 cores")
    assert threads.thread_choices("scoring", None) == ((3, 1), "3 idle cores of 4")
    assert threads.thread_choices("scoring", 2) == ((2,), "")
    monkeypatch.setattr(threads, "_ENVIRONMENT_THREADS", "2")
    assert threads.thread_choices("decoding", None)[0] == (2,)
    monkeypatch.setattr(threads, "_ENVIRONMENT_THREADS", "")
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    monkeypatch.setattr(threads, "idle_cores", lambda: (1, "1 idle core of 1"))
    assert threads.thread_choices("decoding", None)[0] == (1,) and threads.thread_choices("scoring", None)[0] == (1,)
    line = threads.chosen_line("scoring", (3, 1), "3 idle cores of 4", 3, True)
    assert (
        line
        == "threads: 3 threads for scoring: measured faster here than 1 (3 idle cores of 4) (--threads N to choose)"
    )
    assert threads.chosen_line("scoring", (2,), "", 2, True) == ""


@pytest.mark.parametrize("damage", ["not json {", "[1, 2]", '{"x": 1}'])
def test_a_damaged_cache_is_ignored_and_written_again(measuring: None, tmp_path: Path, damage: str) -> None:
    model = tiny()
    timer = StandIn({"float32": 1.0, "bfloat16": 3.0, "int8": 2.0})
    calibration.calibrate(model, "decode", 1, tmp_path, timer, by_name)
    path = tmp_path / calibration.CALIBRATION_FILE
    key = next(iter(json.loads(path.read_text())))
    path.write_text(damage if damage != '{"x": 1}' else json.dumps({key: {"precision": "fp4", "seconds": {}}}))
    result = calibration.calibrate(model, "decode", 1, tmp_path, timer, by_name)
    assert result is not None and not result.cached and result.precision == "float32"
    assert json.loads(path.read_text())[key]["precision"] == "float32"


def test_without_a_writable_cache_or_when_turned_off_the_fixed_rule_holds(
    measuring: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    timer = StandIn({"float32": 1.0, "bfloat16": 1.0, "int8": 1.0})
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert calibration.calibrate(tiny(), "decode", 1, tmp_path, timer, by_name) is None
    assert "cannot write the glactl cache" in capsys.readouterr().err and timer.calls == []
    monkeypatch.undo()
    monkeypatch.setenv("GLACTL_CALIBRATE", "0")
    assert calibration.calibrate(tiny(), "decode", 1, tmp_path, timer, by_name) is None and timer.calls == []
    with pytest.raises(ValueError):
        calibration.calibrate(tiny(), "train", 1, tmp_path, timer, by_name)


def test_the_real_timer_times_each_precision_on_the_models_own_weights() -> None:
    model = tiny()
    for work in calibration.WORKS:
        for precision in calibration.candidates(torch.device("cpu")):
            seconds = calibration.time_run(calibration.prepared(model, precision), work, 1)
            assert 0 < seconds < 5, (work, precision)
    assert all(type(m).__name__ != "Int8Linear" for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("forced", ["float32", "bfloat16", "int8"])
def test_every_choice_of_auto_reads_as_float32_does(
    measuring: None, forced: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped model loaded with auto, each precision forced as the measured winner: its bits per byte stay
    within the bound of float32's, and the precision is the one chosen."""
    monkeypatch.setattr(calibration, "time_run", lambda probe, work, threads: 1.0 if probe.precision == forced else 2.0)
    monkeypatch.setattr(calibration, "candidates", lambda device: ["float32", "bfloat16", "int8"])
    model = glactl.load(None, threads=1, precision="auto", work="score")
    assert model.precision == forced
    exact = glactl.load(None, threads=1, precision="float32")
    bpb, reference = model.perplexity(TEXT * 4)["bits_per_byte"], exact.perplexity(TEXT * 4)["bits_per_byte"]
    assert abs(bpb - reference) < AUTO_BPB_BOUND


def test_info_machine_shows_the_cached_choices(
    measuring: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import run_cli

    code, out, _ = run_cli(["info", "--machine"], capsys)
    assert code == 0 and "no calibration cached" in out
    calibration.calibrate(
        tiny(), "score", 2, tmp_path / "cache", StandIn({"float32": 2.0, "bfloat16": 1.0, "int8": 4.0}), by_name
    )
    code, out, _ = run_cli(["info", "--machine", "--json"], capsys)
    document = json.loads(out)
    assert code == 0 and document["machine"] == calibration.machine() and document["calibration"] == "on"
    (entry,) = document["calibrations"]
    assert (entry["work"], entry["threads"], entry["threads_timed"], entry["precision"]) == (
        "score",
        2,
        [2],
        "bfloat16",
    )
    assert entry["speed_vs_float32"] == {"float32@2": 1.0, "bfloat16@2": 2.0, "int8@2": 0.5}
    code, out, _ = run_cli(["info", "--machine"], capsys)
    assert code == 0 and "gla d32 x 2 layers, score: bfloat16 on 2 thread(s) (bfloat16@2 2.00x, int8@2 0.50x" in out

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
    assert calibration.choose({"float32": 3.0, "bfloat16": 2.0, "int8": 1.0}) == "int8"
    assert calibration.choose({"float32": 1.0, "bfloat16": 2.0, "int8": 1.5}) == "float32"
    assert calibration.choose({"float32": 1.0, "int8": 1.0}) == "float32"  # a tie keeps the exact one
    costly = {"float32": 0.0, "bfloat16": AUTO_BPB_BOUND * 2, "int8": AUTO_BPB_BOUND}
    assert calibration.choose({"float32": 3.0, "bfloat16": 1.0, "int8": 2.0}, costly) == "int8"
    assert all(cost <= AUTO_BPB_BOUND for cost in calibration.BPB_COST.values())


def test_a_calibration_is_measured_once_and_cached_per_work_and_threads(
    measuring: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, timer = tiny(), StandIn({"float32": 3.0, "bfloat16": 2.0, "int8": 1.0})
    first = calibration.calibrate(model, "decode", 1, tmp_path, timer, by_name)
    assert first is not None and (first.precision, first.cached, first.speedup) == ("int8", False, 3.0)
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
    assert (entry["work"], entry["threads"], entry["precision"]) == ("score", 2, "bfloat16")
    assert entry["speed_vs_float32"] == {"float32": 1.0, "bfloat16": 2.0, "int8": 0.5}
    code, out, _ = run_cli(["info", "--machine"], capsys)
    assert code == 0 and "gla d32 x 2 layers, score, 2 thread(s): bfloat16 (bfloat16 2.00x, int8 0.50x" in out

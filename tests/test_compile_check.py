"""--compile auto keeps a compiled step only where it measured faster than eager here: the verdict (with a stand-in
timer), its cache, the rule where nothing may be measured, and the stepper following a cached verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from glactl.inference import compile_check, compiled_step
from glactl.models import LanguageModel, ModelConfig


def tiny() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.tiny(mixer="gla", d_model=32, n_layers=2, n_heads=4)).eval()


class StandIn:
    """Answers seconds per step by which step it is given (the compiled one, or the model's eager step)."""

    def __init__(self, compiled: float, eager: float) -> None:
        self.compiled, self.eager, self.calls = compiled, eager, 0

    def __call__(self, step: Any, model: Any, batch: int) -> float:
        self.calls += 1
        return self.eager if step == model.step else self.compiled


def compiled_stand_in(tokens: torch.Tensor, state: Any) -> Any:
    raise AssertionError("a stand-in timer never runs the step")


@pytest.fixture
def measuring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("GLACTL_CALIBRATE", "1")
    monkeypatch.setenv("GLACTL_CACHE", str(tmp_path))
    return tmp_path


def test_the_verdict_is_measured_once_and_cached_per_batch(measuring: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny()
    assert compile_check.cached_verdict(model, 1) is None
    timer = StandIn(compiled=1.0, eager=2.0)
    assert compile_check.compiled_pays(model, 1, compiled_stand_in, timer=timer) is True
    assert timer.calls == 2 * (1 + compile_check.REPEATS)
    assert "2.00x eager's speed" in capsys.readouterr().err
    assert compile_check.cached_verdict(model, 1) is True
    assert compile_check.compiled_pays(model, 1, compiled_stand_in, timer=StandIn(9.0, 1.0)) is True  # cached
    slower = StandIn(compiled=3.0, eager=2.0)
    assert compile_check.compiled_pays(model, 4, compiled_stand_in, timer=slower) is False  # another batch
    assert "steps run eager" in capsys.readouterr().err
    document = json.loads((measuring / compile_check.COMPILE_FILE).read_text())
    assert sorted((e["batch"], e["compiled_faster"]) for e in document.values()) == [(1, True), (4, False)]


def test_a_damaged_cache_is_measured_again_and_turned_off_keeps_the_rule(
    measuring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny()
    (measuring / compile_check.COMPILE_FILE).write_text("not json {")
    assert compile_check.cached_verdict(model, 1) is None
    assert compile_check.compiled_pays(model, 1, compiled_stand_in, timer=StandIn(3.0, 2.0)) is False
    assert compile_check.cached_verdict(model, 1) is False
    monkeypatch.setenv("GLACTL_CALIBRATE", "0")
    timer = StandIn(3.0, 2.0)
    assert compile_check.cached_verdict(model, 1) is None
    assert compile_check.compiled_pays(model, 1, compiled_stand_in, timer=timer) is True and timer.calls == 0


def test_the_stepper_runs_eager_where_eager_measured_faster(measuring: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that loses to eager here is dropped for this run, and later auto runs do not build one; --compile on
    still compiles."""
    model = tiny()
    compiled_step.configure(model, "auto")
    built: list[int] = []

    def build(self: compiled_step.CompiledStep) -> Any:
        built.append(self.batch)
        return self.model.step  # stands in for the package: same (tokens, state) -> (logits, state)

    monkeypatch.setattr(compiled_step.CompiledStep, "_build", build)
    monkeypatch.setattr(compile_check, "time_steps", lambda step, m, batch: 2.0 if step is not m.step else 1.0)
    steps = compiled_step.COMPILE_MIN_STEPS
    step = compiled_step.stepper(model, 1, steps)
    assert isinstance(step, compiled_step.CompiledStep)
    assert step.prepare(model.init_state(1)) is False and step.eager_faster and built == [1]
    assert step.prepare(model.init_state(1)) is False and built == [1]  # not built again
    tokens = torch.tensor([65])
    with torch.inference_mode():
        logits, _ = step(tokens, model.init_state(1))
        expected, _ = model.step(tokens, model.init_state(1))
    assert torch.equal(logits, expected)
    fresh = tiny()
    compiled_step.configure(fresh, "auto")
    assert compiled_step.should_compile(fresh, 1, steps) is False  # the cached verdict: no build at all
    compiled_step.configure(fresh, "on")
    assert compiled_step.should_compile(fresh, 1, steps) is True


@pytest.mark.parametrize("mixer", ["gla", "transformer"])
def test_the_real_timer_steps_a_fresh_state_of_each_form(mixer: str) -> None:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.tiny(mixer=mixer, d_model=32, n_layers=1, n_heads=2, context=16)).eval()
    assert 0 < compile_check.time_steps(model.step, model, 3) < 5


def test_info_machine_shows_the_cached_verdicts(measuring: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import run_cli

    model = tiny()
    compile_check.compiled_pays(model, 4, compiled_stand_in, timer=StandIn(compiled=3.0, eager=2.0))
    capsys.readouterr()
    code, out, _ = run_cli(["info", "--machine", "--json"], capsys)
    (check,) = json.loads(out)["compile_checks"]
    assert code == 0 and (check["batch"], check["compiled_kept"], check["speed_vs_eager"]) == (4, False, 0.667)
    code, out, _ = run_cli(["info", "--machine"], capsys)
    assert code == 0 and "gla d32 x 2 layers, float32, batch 4, " in out and "0.67x eager's speed, eager runs" in out

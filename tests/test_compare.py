"""`glactl compare`: result files with the documented keys, resumable runs, seeds, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from glactl.compare.measure import training_speed, validation_curve
from glactl.compare.options import parse_contexts, parse_models, parse_seeds
from glactl.compare.summary import RESULT_KEYS, SPREAD_KEYS, summarize
from glactl.errors import InputError
from glactl.inference.precision import resolve_precision
from glactl.models import LanguageModel
from glactl.models.config import ModelConfig
from glactl.models.registry import MIXERS

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 30 KB of varied English-like text (no shared data needed)."""
    words = (
        "the of and to in a is that for it as was with be by on not he this are or his from at which "
        "but have an they you were her she there been one all we their has would when what if more"
    ).split()
    lines, state = [], 12345
    for i in range(700):
        state = (state * 1103515245 + 12345) % (1 << 31)
        count = 5 + state % 9
        line = " ".join(words[(state >> (3 + j)) % len(words)] for j in range(count))
        lines.append(line.capitalize() + ("." if i % 3 else ","))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_args(corpus: Path, out: Path, models: str, *extra: str) -> list[str]:
    return [
        "compare",
        "--models",
        models,
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--contexts",
        "64,256",
        "--eval-windows",
        "2",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--threads",
        "1",
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_compare_writes_results_then_skips_finished_runs(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three models: four files with the exact keys; a rerun skips all; other settings need --force."""
    out = tmp_path / "cmp"
    code, stdout, stderr = run_cli(tiny_args(corpus, out, "gla,transformer,mingru"), capsys)
    assert code == 0, stderr
    for name in ("results.json", "results.md", "loss.png", "scaling.png"):
        assert (out / name).is_file(), name
    for name in ("loss.png", "scaling.png"):
        assert (out / name).read_bytes()[:8] == PNG
    entries = json.loads((out / "results.json").read_text())
    assert [e["model"] for e in entries] == ["gla", "transformer", "mingru"]
    for e in entries:
        assert list(e) == list(RESULT_KEYS)
        assert e["parameters"] > 0 and e["train_tokens_per_second"] > 0
        assert set(e["generate_tokens_per_second"]) == set(e["state_bytes"]) == {"64", "256"}
        assert all(v > 0 for v in e["generate_tokens_per_second"].values())
        assert [p["step"] for p in e["curve"]] == [0, 1, 2, 3]
        assert e["curve"][-1]["val_bits_per_byte"] == e["val_bits_per_byte"]
        assert isinstance(e["sample"], str) and e["sample"]
        # default flags: the weights' format generate's --precision auto picks; a 3-step run is too short to compile
        assert e["decode"] == {"precision": resolve_precision("auto", torch.device("cpu")), "compiled": False}
        assert e["parameters"] == LanguageModel(ModelConfig.from_dict(e["config"])).num_parameters()
        assert (out / f"{e['model']}-seed0" / "checkpoint" / "model.safetensors").is_file()
    by_name = {e["model"]: e for e in entries}
    assert by_name["gla"]["state_bytes"]["64"] == by_name["gla"]["state_bytes"]["256"]  # constant state
    # The KV cache (2 layers x k and v x d 128 x float32 per token) stops at the training window, --seq-len 32.
    window_cache = 2 * 2 * 128 * 4 * 32
    assert by_name["transformer"]["state_bytes"]["64"] == by_name["transformer"]["state_bytes"]["256"] == window_cache
    markdown = (out / "results.md").read_text()
    assert "| model | params | train tok/s | dtype | val bpb |" in markdown and "loss.png" in markdown
    assert f"Every run trained in {entries[0]['dtype']['name']} (" in markdown
    assert all(f"### {name}" in markdown for name in by_name)
    assert "| gla |" in stdout  # the table, as plain lines when piped
    # stdout holds the result only (`glactl compare ... > table.md`); every log line went to stderr
    assert stdout.splitlines()[0].startswith("| model |") and len(stdout.splitlines()) == 2 + len(entries)
    assert "training in" in stderr and "wrote" in stderr
    code, stdout, stderr = run_cli(tiny_args(corpus, out, "gla,transformer,mingru", "--json"), capsys)
    assert code == 0 and json.loads(stdout) == entries

    metrics = {name: (out / f"{name}-seed0" / "metrics.jsonl").read_text() for name in by_name}
    code, stdout, stderr = run_cli(tiny_args(corpus, out, "gla,transformer,mingru"), capsys)
    assert code == 0, stderr
    assert stderr.count("already finished") == 3 and "training in" not in stderr and "already" not in stdout
    assert metrics == {name: (out / f"{name}-seed0" / "metrics.jsonl").read_text() for name in by_name}
    assert json.loads((out / "results.json").read_text()) == entries

    code, stdout, stderr = run_cli(tiny_args(corpus, out, "gla", "--lr", "0.01"), capsys)
    assert code == 2 and stderr.count("\n") == 1 and "--force" in stderr and "lr" in stderr

    code, stdout, stderr = run_cli(tiny_args(corpus, out, "gla", "--force"), capsys)
    assert code == 0, stderr
    assert "training in" in stderr and "already finished" not in stderr
    assert [e["model"] for e in json.loads((out / "results.json").read_text())] == ["gla"]


@pytest.mark.slow
def test_compare_seeds_report_mean_and_spread(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seeds 0,1: one entry per model with the spread keys; each seed is its own run folder."""
    out = tmp_path / "seeds"
    code, _, stderr = run_cli(tiny_args(corpus, out, "minlstm", "--seeds", "0,1"), capsys)
    assert code == 0, stderr
    (entry,) = json.loads((out / "results.json").read_text())
    assert list(entry) == list(RESULT_KEYS) + list(SPREAD_KEYS)
    assert [s["seed"] for s in entry["seeds"]] == [0, 1]
    values = [s["val_bits_per_byte"] for s in entry["seeds"]]
    assert entry["val_bits_per_byte"] == pytest.approx(sum(values) / 2, abs=1e-6)
    assert entry["val_bits_per_byte_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5, abs=1e-5)
    assert (out / "minlstm-seed0").is_dir() and (out / "minlstm-seed1").is_dir()


def test_unknown_model_is_one_line_listing_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run_cli(
        ["compare", "--models", "gla,lsmt", "--steps", "1", "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "'lsmt'" in stderr and all(name in stderr for name in MIXERS)
    assert not (tmp_path / "x").exists()


def test_default_data_offline_without_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --data means wikitext-103; offline with no cache it exits 2 with one line pointing at --data PATH."""
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "offline"
    code, _, stderr = run_cli(
        ["compare", "--models", "gla", "--preset", "tiny", "--steps", "1", "--out", str(out)], capsys
    )
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert "wikitext-103" in stderr and "--data PATH" in stderr and "--task" in stderr  # both ways out
    assert not out.exists() or not any(out.iterdir())


def test_missing_budget_and_seed_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run_cli(["compare", "--models", "gla", "--data", "x.txt"], capsys)
    assert code == 2 and "--steps" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli(["compare", "--models", "gla", "--steps", "1", "--seed", "1", "--seeds", "0,1"], capsys)
    assert code == 2 and "--seeds" in stderr


def test_parsers() -> None:
    assert parse_contexts("1k, 8k,32k") == [1024, 8192, 32768]
    assert parse_contexts("256,64,256") == [64, 256]
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_models(" gla , mingru") == ["gla", "mingru"]
    for bad in ("", "1m", "0", "-5"):
        with pytest.raises(InputError):
            parse_contexts(bad)
    for bad in ("0,0", "a", "1,,2", "-1"):
        with pytest.raises(InputError):
            parse_seeds(bad)
    with pytest.raises(InputError, match="more than once"):
        parse_models("gla,gla")


def test_training_speed_leaves_evaluations_out() -> None:
    """Windows that close with a training record count; time spent in evaluations does not; the first is dropped."""
    records = [
        {"kind": "eval", "step": 0, "tokens": 0, "val_bpb": 8.0, "wall_time": 0.0},
        {"kind": "train", "step": 10, "tokens": 1000, "wall_time": 9.0},  # start-up + eval 0: dropped
        {"kind": "eval", "step": 10, "tokens": 1000, "val_bpb": 5.0, "wall_time": 14.0},  # a 5 s evaluation
        {"kind": "train", "step": 20, "tokens": 2000, "wall_time": 16.0},
        {"kind": "train", "step": 30, "tokens": 3000, "wall_time": 18.0},
        {"kind": "eval", "step": 30, "tokens": 3000, "val_bpb": 4.0, "wall_time": 25.0},
        {"kind": "eval", "step": 30, "tokens": 3000, "val_bpb": 3.9, "wall_time": 26.0},  # re-evaluated after a resume
    ]
    assert training_speed(records) == pytest.approx(2000 / 4.0)
    curve = validation_curve(records)
    assert [(p["step"], p["val_bits_per_byte"]) for p in curve] == [(0, 8.0), (10, 5.0), (30, 3.9)]


def test_summarize_single_seed_has_exactly_the_result_keys() -> None:
    result = {
        "parameters": 10,
        "train_tokens_per_second": 100.0,
        "val_bits_per_byte": 3.0,
        "curve": [
            {"step": 0, "tokens": 0, "val_bits_per_byte": 8.0},
            {"step": 5, "tokens": 50, "val_bits_per_byte": 3.0},
        ],
        "generate_tokens_per_second": {"64": 10.0},
        "decode": {"precision": "float32", "compiled": False},
        "state_bytes": {"64": 512},
        "sample": "x",
        "run": "out/gla-seed0",
    }
    dtype = {"name": "float32", "chosen": "given: --dtype float32", "bfloat16_speedup": None}
    assert list(summarize("gla", [result], False, dtype)) == list(RESULT_KEYS)
    two = summarize("gla", [result, {**result, "val_bits_per_byte": 4.0, "run": "out/gla-seed1"}], True, dtype)
    assert two["val_bits_per_byte"] == 3.5 and two["val_bits_per_byte_std"] == pytest.approx(0.707107, abs=1e-6)
    assert [s["seed"] for s in two["seeds"]] == [0, 1]


# ---- --task probes ---------------------------------------------------------------------------------------
TASK_SETTINGS = {"mqar": {"pairs": 2}, "selective-copy": {}, "sort": {"sort_count": 6, "sort_range": 3}}
TASK_ARGS = {
    "mqar": ["--pairs", "2", "--seq-len", "16"],
    "selective-copy": ["--seq-len", "32"],
    "sort": ["--sort-count", "6", "--sort-range", "3", "--seq-len", "12"],
}


def task_args(out: Path, task: str, models: str, *extra: str) -> list[str]:
    return [
        "compare",
        "--task",
        task,
        "--models",
        models,
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--eval-windows",
        "8",
        "--out",
        str(out),
        "--threads",
        "1",
        "--device",
        "cpu",
        *TASK_ARGS[task],
        *extra,
    ]


@pytest.mark.parametrize("task", ["mqar", "selective-copy", "sort"])
def test_compare_task_rows_have_accuracy_and_no_bits_per_byte(
    task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny --task run: rows with task, accuracy (sequence accuracy for sort and selective-copy), the full config."""
    from glactl import load
    from glactl.compare.summary import TASK_RESULT_KEYS
    from glactl.data.tasks import make_task

    out = tmp_path / task
    code, stdout, stderr = run_cli(task_args(out, task, "gla,transformer"), capsys)
    assert code == 0, stderr
    entries = json.loads((out / "results.json").read_text())
    assert [e["model"] for e in entries] == ["gla", "transformer"]
    whole = task != "mqar"
    seq_len = int(TASK_ARGS[task][TASK_ARGS[task].index("--seq-len") + 1])
    for e in entries:
        assert list(e) == [k for k in TASK_RESULT_KEYS if whole or k != "sequence_accuracy"]
        assert e["task"] == task and 0.0 <= e["accuracy"] <= 1.0 and e["val_loss"] > 0
        assert "val_bits_per_byte" not in e and "sample" not in e and "generate_tokens_per_second" not in e
        assert e["parameters"] > 0 and e["train_tokens_per_second"] > 0
        assert list(e["state_bytes"]) == [str(seq_len)] and e["state_bytes"][str(seq_len)] > 0
        assert e["task_settings"]["task"] == task and e["task_settings"]["seq_len"] == seq_len
        assert e["config"]["mixer"] == e["model"] and e["config"]["context"] == seq_len and "short_conv" in e["config"]
        assert [p["step"] for p in e["curve"]] == [0, 1, 2, 3] and e["curve"][-1]["accuracy"] == e["accuracy"]
        records = [
            json.loads(line) for line in (out / f"{e['model']}-seed0" / "metrics.jsonl").read_text().splitlines()
        ]
        assert all("val_bpb" not in r and "bpb" not in r for r in records)
        model = load(str(out / f"{e['model']}-seed0"))  # a task run's checkpoint loads like any other
        assert model.config.to_dict() == e["config"]
    assert (out / "accuracy.png").read_bytes()[:8] == PNG and not (out / "loss.png").exists()
    markdown = (out / "results.md").read_text()
    assert f"--task {task}" in markdown and "| accuracy |" in markdown.replace(" (± sd)", "")
    assert ("sequence accuracy" in markdown) == whole and "bpb" not in markdown
    assert "| gla |" in stdout
    # The task's floors on the same 8 test sequences: in every entry, as the last two table rows, in the plot.
    floors = make_task(task, seq_len, **TASK_SETTINGS[task]).baselines(8)
    assert all(e["baselines"] == floors for e in entries) and set(floors) == {"chance", "trivial"}
    assert ("sequence_accuracy" in floors["trivial"]) == whole
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[-2].startswith(f"| chance | - | - | - | {floors['chance']['accuracy']:.4f} |")
    assert rows[-1].startswith(
        f"| trivial ({floors['trivial']['rule']}) | - | - | - | {floors['trivial']['accuracy']:.4f} |"
    )
    assert stdout.splitlines()[-1].startswith("| trivial (") and "| chance |" in stdout
    assert entries[0]["dtype"]["name"] in ("float32", "bfloat16") and "Every run trained in" in markdown


def test_compare_task_rerun_with_another_config_is_not_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same --out, other --short-conv (or a record without the resolved config, as older glactl wrote): --force needed."""
    out = tmp_path / "rerun"
    assert run_cli(task_args(out, "mqar", "gla", "--short-conv", "0"), capsys)[0] == 0
    code, stdout, stderr = run_cli(task_args(out, "mqar", "gla", "--short-conv", "0"), capsys)
    assert code == 0 and "already finished" in stdout + stderr
    code, stdout, stderr = run_cli(task_args(out, "mqar", "gla", "--short-conv", "4"), capsys)
    assert code == 2 and stderr.count("\n") == 1 and "config" in stderr and "--force" in stderr
    code, _, stderr = run_cli(task_args(out, "mqar", "gla", "--short-conv", "0", "--pairs", "3"), capsys)
    assert code == 2 and "task" in stderr and "--force" in stderr
    record_path = out / "gla-seed0" / "compare.json"
    record = json.loads(record_path.read_text())
    assert record["training"]["config"]["short_conv"] == 0 and record["training"]["task"]["pairs"] == 2
    for key in ("config", "task"):  # what a record from before these fields looks like
        del record["training"][key]
    record_path.write_text(json.dumps(record))
    code, _, stderr = run_cli(task_args(out, "mqar", "gla", "--short-conv", "0"), capsys)
    assert code == 2 and "config" in stderr and "--force" in stderr
    code, stdout, stderr = run_cli(task_args(out, "mqar", "gla", "--short-conv", "4", "--force"), capsys)
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())[0]["config"]["short_conv"] == 4


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--task", "mqar", "--models", "transformer", "--short-conv", "4"], ["--short-conv", "gla only"]),
        (["--task", "mqar", "--models", "gla", "--performer-rope"], ["--performer-rope", "performer only"]),
        (["--task", "mqar", "--models", "gla", "--short-conv", "1"], ["short_conv"]),
        (["--task", "lm", "--models", "gla", "--pairs", "4"], ["--pairs", "mqar"]),
        (["--task", "sort", "--models", "gla", "--pairs", "4"], ["--pairs", "mqar"]),
        (["--task", "sort", "--models", "gla", "--seq-len", "100"], ["--seq-len >= 200"]),
        (["--task", "mqar", "--models", "gla", "--data", "x.txt"], ["--data", "--task mqar"]),
        (["--task", "copy", "--models", "gla"], ["--task", "selective-copy"]),
    ],
)
def test_compare_task_flags_bad_input_is_one_line(
    flags: list[str], words: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad"
    code, stdout, stderr = run_cli(["compare", *flags, "--preset", "tiny", "--steps", "1", "--out", str(out)], capsys)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert all(w in stderr for w in words), stderr
    assert not out.exists()


def test_summarize_task_means_and_spread_over_seeds() -> None:
    from glactl.compare.summary import TASK_RESULT_KEYS, TASK_SPREAD_KEYS, summarize_task
    from glactl.data.tasks import make_task

    task = make_task("sort", 12, sort_count=6)
    curve = [
        {"step": 0, "tokens": 0, "val_loss": 3.0, "accuracy": 0.1, "sequence_accuracy": 0.0},
        {"step": 5, "tokens": 60, "val_loss": 1.0, "accuracy": 0.5, "sequence_accuracy": 0.25},
    ]
    result = {
        "parameters": 10,
        "train_tokens_per_second": 100.0,
        "accuracy": 0.5,
        "sequence_accuracy": 0.25,
        "val_loss": 1.0,
        "curve": curve,
        "state_bytes": {"12": 64},
        "config": {"mixer": "gla"},
        "run": "o/gla-seed0",
    }
    other = {
        **result,
        "accuracy": 0.7,
        "sequence_accuracy": 0.75,
        "run": "o/gla-seed1",
        "curve": [curve[0], {**curve[1], "accuracy": 0.7, "sequence_accuracy": 0.75}],
    }
    dtype = {"name": "float32", "chosen": "given: --dtype float32", "bfloat16_speedup": None}
    floors = task.baselines(8)
    assert list(summarize_task("gla", [result], False, task, dtype, floors)) == list(TASK_RESULT_KEYS)
    two = summarize_task("gla", [result, other], True, task, dtype, floors)
    assert list(two) == list(TASK_RESULT_KEYS) + list(TASK_SPREAD_KEYS)
    assert two["accuracy"] == pytest.approx(0.6) and two["sequence_accuracy"] == pytest.approx(0.5)
    assert two["accuracy_std"] == pytest.approx(0.141421, abs=1e-6)
    assert two["curve"][1] == {"step": 5, "tokens": 60, "val_loss": 1.0, "accuracy": 0.6, "sequence_accuracy": 0.5}
    assert [s["seed"] for s in two["seeds"]] == [0, 1] and two["task_settings"] == task.settings()
    assert two["dtype"] == dtype and two["baselines"] == floors


def test_architecture_option_reaches_only_the_models_that_have_it() -> None:
    """--short-conv 0 with gla,transformer: GLA without the convolution beside an unchanged Transformer."""
    from glactl.compare.options import CompareOptions, check_options, train_options
    from glactl.training.setup import new_model_config

    options = CompareOptions(models=["gla", "transformer"], steps=1, preset="tiny", seq_len=64, short_conv=0)
    check_options(options)
    assert new_model_config(train_options(options, "gla", 0)).short_conv == 0
    assert new_model_config(train_options(options, "transformer", 0)).short_conv == 0  # off: it has none
    with pytest.raises(InputError, match="--short-conv applies to gla only"):
        check_options(CompareOptions(models=["transformer"], steps=1, preset="tiny", seq_len=64, short_conv=4))


def test_dtype_choice_says_how_it_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """A given --dtype passes through; auto measures the first model once on a bfloat16 CPU, else follows the rule."""
    from glactl.compare.options import CompareOptions
    from glactl.compare.runner import choose_dtype
    from glactl.report.progress import Reporter
    from glactl.runtime import devices

    measured: list[str] = []

    def fake_measurement(model, seq_len, batch_size, cache=None):  # noqa: ANN001, ANN202
        measured.append(model.config.mixer)
        return "float32", 0.7312, False

    monkeypatch.setattr(devices, "cpu_dtype_by_measurement", fake_measurement)
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)
    options = CompareOptions(models=["transformer", "gla"], steps=1, preset="tiny", seq_len=32, device="cpu")
    assert choose_dtype(options, Reporter(None)) == {
        "name": "float32",
        "chosen": "auto: bfloat16 autocast measured 0.73x float32 (on transformer)",
        "bfloat16_speedup": 0.731,
    }
    assert measured == ["transformer"]
    options.dtype = "bfloat16"
    assert choose_dtype(options, Reporter(None)) == {
        "name": "bfloat16",
        "chosen": "given: --dtype bfloat16",
        "bfloat16_speedup": None,
    }
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: False)
    assert choose_dtype(options, Reporter(None))["name"] == "float32"  # asked for, but this CPU has none
    options.dtype = None
    assert choose_dtype(options, Reporter(None))["chosen"] == "auto: float32 (this CPU has no native bfloat16)"
    assert measured == ["transformer"]


@pytest.mark.slow
def test_compare_trains_every_run_in_one_recorded_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models train in the dtype chosen once; results and comparison.json record it; a rerun keeps it."""
    from glactl.runtime import devices

    measured: list[str] = []

    def measurement(name: str, speedup: float):  # noqa: ANN202
        def fake(model, seq_len, batch_size, cache=None):  # noqa: ANN001, ANN202
            measured.append(model.config.mixer)
            return name, speedup, False

        return fake

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: True)  # auto measures, on any CPU
    monkeypatch.setattr(devices, "cpu_dtype_by_measurement", measurement("float32", 0.73))
    out = tmp_path / "dtype"

    def trained_in(model: str) -> tuple[str, str]:
        config = json.loads((out / f"{model}-seed0" / "checkpoint" / "config.json").read_text())
        record = json.loads((out / f"{model}-seed0" / "compare.json").read_text())
        return config["training"]["dtype"], record["training"]["dtype"]

    code, stdout, stderr = run_cli(task_args(out, "mqar", "gla,transformer"), capsys)
    assert code == 0, stderr
    chosen = {
        "name": "float32",
        "chosen": "auto: bfloat16 autocast measured 0.73x float32 (on gla)",
        "bfloat16_speedup": 0.73,
    }
    assert measured == ["gla"] and json.loads((out / "comparison.json").read_text()) == {"dtype": chosen}
    assert trained_in("gla") == trained_in("transformer") == ("float32", "float32")
    entries = json.loads((out / "results.json").read_text())
    assert [e["dtype"] for e in entries] == [chosen, chosen]
    markdown = (out / "results.md").read_text()
    assert f"Every run trained in float32 ({chosen['chosen']})." in markdown
    assert "| model | params | train tok/s | dtype | accuracy |" in markdown and "| float32 |" in stdout

    # Measured now, auto would pick bfloat16: the rerun keeps float32 and trains the added model in it too.
    measured.clear()
    monkeypatch.setattr(devices, "cpu_dtype_by_measurement", measurement("bfloat16", 1.11))
    code, stdout, stderr = run_cli(task_args(out, "mqar", "gla,transformer,mingru"), capsys)
    assert code == 0, stderr
    assert measured == [] and stderr.count("already finished") == 2 and "; chosen before)" in stderr
    assert trained_in("mingru") == ("float32", "float32")
    assert [e["dtype"] for e in json.loads((out / "results.json").read_text())] == [chosen] * 3

    code, _, stderr = run_cli(task_args(out, "mqar", "gla", "--dtype", "bfloat16"), capsys)
    assert code == 2 and stderr.count("\n") == 1 and "float32" in stderr and "--force" in stderr
    code, _, stderr = run_cli(task_args(out, "mqar", "gla", "--force"), capsys)  # --force chooses again
    assert code == 0, stderr
    assert measured == ["gla"] and trained_in("gla") == ("bfloat16", "bfloat16")
    assert json.loads((out / "comparison.json").read_text())["dtype"]["name"] == "bfloat16"


def test_compile_for_the_speed_columns_follows_the_training_time() -> None:
    """--compile auto compiles the measured step only after a run long enough to pay for it; on/off as given."""
    from glactl.compare.measure import COMPILE_MIN_TRAINING_SECONDS, measurement_compile
    from glactl.compare.options import CompareOptions, check_options

    short = [{"kind": "train", "step": 10, "wall_time": COMPILE_MIN_TRAINING_SECONDS - 1.0}]
    long = [*short, {"kind": "eval", "step": 20, "wall_time": COMPILE_MIN_TRAINING_SECONDS + 5.0}]
    assert measurement_compile("auto", short) == "off" and measurement_compile("auto", long) == "on"
    assert measurement_compile("on", short) == "on" and measurement_compile("off", long) == "off"
    with pytest.raises(InputError, match="--compile 'sometimes'"):
        check_options(CompareOptions(models=["gla"], steps=1, compile="sometimes"))


@pytest.mark.compile
def test_speed_columns_time_the_compiled_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """With compile on, every timed step goes through the compiled step (here a counting stand-in for the package)."""
    from glactl.compare.measure import measure_generation
    from glactl.inference import compiled_step

    model = LanguageModel(ModelConfig(mixer="gla", d_model=32, n_layers=1, n_heads=2)).eval()
    calls = []

    def stand_in(self: compiled_step.CompiledStep) -> object:
        def run(tokens: torch.Tensor, state: object) -> object:
            calls.append(tokens.shape[0])
            return self.model.step(tokens, state)

        return run

    monkeypatch.setattr(compiled_step.CompiledStep, "_build", stand_in)
    compiled_step.configure(model, "on")
    speeds, sizes, compiled = measure_generation(model, bytes(range(65, 91)) * 4, [16, 64], decode_steps=5)
    assert compiled and set(speeds) == {"16", "64"} and all(v > 0 for v in speeds.values())
    assert calls == [1] * 2 * (5 + 2)  # two contexts x (timed + warm-up steps), batch 1
    compiled_step.configure(model, "off")
    calls.clear()
    assert measure_generation(model, bytes(range(65, 91)) * 4, [16], decode_steps=5)[2] is False and not calls

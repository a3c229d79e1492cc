"""`glactl info` and the Python API (`glactl.load`): the same results as the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli

import glactl
import glactl.storage.model_paths as paths
from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model

TRAINING = {"steps": 3, "bits_per_byte": 7.5, "tokens": 4096, "data": ["tiny.txt"]}
PROMPT = "The history of"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("info")
    configs = {
        "gla": ModelConfig.tiny(d_model=32, n_layers=2, n_heads=2, gla_gate_rank=4),
        "transformer": ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=2),
        "windowed": ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=2, context=32),
    }
    out = {}
    for i, (name, config) in enumerate(configs.items()):
        torch.manual_seed(30 + i)
        out[name] = save_model(root / name, LanguageModel(config), training=TRAINING)
    # A run folder holds its checkpoint in checkpoint/.
    torch.manual_seed(30)
    save_model(root / "run" / "checkpoint", LanguageModel(configs["gla"]), training=TRAINING)
    out["run"] = root / "run"
    return out


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run_cli([*argv, "--threads", "1", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def cli_json_exact(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """cli_json with the library's defaults (float32 weights, eager): the CLI's auto precision may run int8."""
    code, out, err = run_cli([*argv, "--threads", "1", "--json", "--precision", "float32", "--compile", "off"], capsys)
    assert code == 0, err
    return json.loads(out)


# ---- info ----------------------------------------------------------------------------------
def test_info_json_for_a_recurrent_model(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = folders["gla"]
    described = cli_json(capsys, "info", str(folder))
    model = load_model(folder)[0]
    config = model.config
    assert Path(described["model"]).resolve() == folder.resolve()
    assert described["architecture"] == config.to_dict()
    assert described["architecture"]["mixer"] == "gla"
    unique = {id(p): p.numel() for p in model.parameters()}  # the tied embedding once
    assert described["parameters"] == sum(unique.values())
    state = described["state"]
    # GLA: one [heads, d/2/heads, d/heads] float32 matrix per layer, whatever the context length,
    # plus the short convolution's last (short_conv - 1) q, k, v inputs (2 * d/2 + d channels) per layer.
    assert config.short_conv == 4  # the default for new GLA models, so the buffer is counted below
    matrix = config.n_heads * (config.d_model // 2 // config.n_heads) * (config.d_model // config.n_heads)
    conv = (config.short_conv - 1) * (2 * (config.d_model // 2) + config.d_model)
    gla_state = config.n_layers * (matrix + conv) * 4
    assert state["growth"] == "constant"
    assert state["bytes_after_10_tokens"] == state["bytes_after_100_tokens"] == gla_state
    assert state["bytes_per_token"] == 0
    with torch.no_grad():
        _, after_1000 = model(torch.full((1, 1000), 32))
    assert model.state_nbytes(after_1000) == gla_state
    assert described["training"] == TRAINING
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    assert described["files"] == files and {"config.json", "model.safetensors"} <= set(files)
    assert described["total_file_bytes"] == sum(files.values())


@pytest.mark.parametrize("name", ["transformer", "windowed"])
def test_info_json_for_attention_grows_per_token_of_context(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str], name: str
) -> None:
    described = cli_json(capsys, "info", str(folders[name]))
    config = load_model(folders[name])[0].config
    per_token = 2 * config.n_layers * config.d_model * 4  # a float32 key and value per layer
    state = described["state"]
    assert state["growth"] == "growing"
    assert state["bytes_per_token"] == per_token
    assert state["bytes_after_10_tokens"] == 10 * per_token
    assert state["bytes_after_100_tokens"] == min(100, config.context or 100) * per_token
    assert state["context"] == config.context


def test_info_table(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["info", str(folders["gla"]), "--threads", "1"], capsys)
    assert code == 0, err
    params = load_model(folders["gla"])[0].num_parameters()
    flat = re.sub(r"\s+", " ", re.sub(r"[│┃║|]", " ", out))
    assert "gla" in flat and f"{params:,}" in flat
    assert "constant" in flat
    assert "3 steps" in flat and "data tiny.txt" in flat  # one fact per row; a bare source name is shown too
    assert "config.json" in flat and "model.safetensors" in flat
    code, out, err = run_cli(["info", "--model", str(folders["windowed"]), "--threads", "1"], capsys)
    assert code == 0, err
    flat = re.sub(r"\s+", " ", re.sub(r"[│┃║|]", " ", out))
    assert "growing" in flat and "2,048 bytes per token" not in flat  # d 32: 512 bytes per token
    assert "512 bytes per token" in flat and "32-token window" in flat


def test_info_of_a_run_folder_describes_its_checkpoint(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    described = cli_json(capsys, "info", str(folders["run"]))
    assert Path(described["model"]).resolve() == (folders["run"] / "checkpoint").resolve()
    assert described["training"] == TRAINING
    assert "model.safetensors" in described["files"]


def test_info_bad_input(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_cli(["info", str(tmp_path / "missing")], capsys)
    assert_one_line_error(code, out, err, "missing")
    code, out, err = run_cli(["info", str(folders["gla"]), "--model", str(folders["transformer"])], capsys)
    assert_one_line_error(code, out, err, "MODEL")
    monkeypatch.setattr(paths, "weights_dirs", lambda: [])
    code, out, err = run_cli(["info"], capsys)
    assert_one_line_error(code, out, err, "--model")


# ---- the Python API ------------------------------------------------------------------------------
def test_load_returns_a_model_with_the_operations(folders: dict[str, Path]) -> None:
    lm = glactl.load(folders["gla"], threads=1)
    for name in ("generate", "complete", "perplexity", "stream", "info"):
        assert callable(getattr(lm, name))
    assert Path(lm.path).resolve() == folders["gla"].resolve()
    assert lm.config.mixer == "gla"
    assert str(lm.device) == "cpu" or torch.cuda.is_available()
    assert glactl.load(str(folders["run"]), threads=1).config.mixer == "gla"


def test_api_generate_matches_the_cli(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(folders["gla"])
    lm = glactl.load(folder, device="cpu", threads=1)
    document = cli_json_exact(
        capsys, "generate", PROMPT, "--model", folder, "--device", "cpu", "--max-new-tokens", "40", "--seed", "7"
    )
    text = lm.generate(PROMPT, max_new_tokens=40, seed=7)
    assert isinstance(text, str) and text == document["samples"][0]
    assert lm.generate(PROMPT.encode(), max_new_tokens=40, seed=7) == text
    document = cli_json_exact(
        capsys,
        "generate",
        PROMPT,
        "--model",
        folder,
        "--device",
        "cpu",
        "--max-new-tokens",
        "20",
        "--num-samples",
        "2",
        "--seed",
        "8",
        "--temperature",
        "1.3",
        "--top-k",
        "50",
        "--top-p",
        "0.9",
        "--repetition-penalty",
        "1.2",
        "--stop",
        "e",
    )
    samples = lm.generate(
        PROMPT,
        max_new_tokens=20,
        num_samples=2,
        seed=8,
        temperature=1.3,
        top_k=50,
        top_p=0.9,
        repetition_penalty=1.2,
        stop=["e"],
    )
    assert samples == document["samples"] and len(samples) == 2
    greedy = lm.generate(PROMPT, max_new_tokens=30, temperature=0)
    assert (
        greedy
        == cli_json_exact(
            capsys, "generate", PROMPT, "--model", folder, "--max-new-tokens", "30", "--temperature", "0"
        )["samples"][0]
    )


def test_api_complete_matches_the_cli(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(folders["gla"])
    lm = glactl.load(folder, threads=1)
    for until in ("word", "line"):
        document = cli_json_exact(
            capsys, "complete", PROMPT, "--model", folder, "--n", "3", "--max-chars", "5", "--until", until
        )
        found = lm.complete(PROMPT, n=3, max_chars=5, until=until)
        assert len(found) == 3
        assert [c.text for c in found] == [row["text"] for row in document["completions"]]
        assert [c.logprob for c in found] == pytest.approx(
            [row["logprob"] for row in document["completions"]], rel=1e-9
        )
        assert [c.probability for c in found] == pytest.approx(
            [row["probability"] for row in document["completions"]], rel=1e-9
        )


def test_api_perplexity_matches_the_cli(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "The history of the world is long.\n  Caf\u00e9 na\u00efve \u4e2d\u6587  text\n" * 5
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8", newline="")
    for name in ("gla", "windowed"):
        folder = str(folders[name])
        lm = glactl.load(folder, threads=1)
        document = cli_json_exact(capsys, "perplexity", str(path), "--model", folder, "--window", "64")
        expected = {k: v for k, v in document["files"][str(path)].items() if k != "tokens_per_second"}
        for source in ({"text": path}, {"path": str(path)}, {"path": path}, {"text": text}, {"text": text.encode()}):
            metrics = lm.perplexity(**source, window=64)
            assert set(metrics) == set(document["total"])
            assert {k: v for k, v in metrics.items() if k != "tokens_per_second"} == pytest.approx(expected, rel=1e-9)
        default_window = lm.perplexity(path)  # the windowing does not change the score (beyond float32 rounding)
        assert default_window["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-5)


def test_api_reads_a_str_as_text_and_a_file_only_when_asked(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A str is always the text; a file is path= (str or PathLike) or a Path; a missing file raises, never scores."""
    monkeypatch.chdir(tmp_path)
    text = "Alice was beginning to get very tired of sitting by her sister on the bank.\n" * 3
    Path("alice8k.txt").write_text(text)
    lm = glactl.load(folders["gla"], threads=1)
    # The case: a mistyped name, as path= or as a Path, raises instead of scoring the 10-byte name.
    for mistyped in ({"path": "alice8k.tx"}, {"text": Path("alice8k.tx")}, {"path": Path("alice8k.tx")}):
        with pytest.raises(InputError, match="alice8k.tx: no such file"):
            lm.perplexity(**mistyped)
    # A str that happens to name an existing file is still the text itself.
    assert lm.perplexity("alice8k.txt")["bytes"] == len("alice8k.txt")

    # The file, asked for explicitly, scores like its text.
    def scores(metrics: dict) -> dict:
        return {key: value for key, value in metrics.items() if key != "tokens_per_second"}

    by_text = scores(lm.perplexity(text, window=64))
    for source in ({"path": "alice8k.txt"}, {"path": Path("alice8k.txt")}, {"text": Path("alice8k.txt")}):
        assert scores(lm.perplexity(**source, window=64)) == pytest.approx(by_text, rel=1e-9)
    # The same rule for every call that reads text.
    assert lm.read(path="alice8k.txt").bytes_read == len(text.encode())
    options = {"max_new_tokens": 12, "seed": 3}
    assert lm.generate(path=Path("alice8k.txt"), **options) == lm.generate(Path("alice8k.txt"), **options)
    assert lm.generate(Path("alice8k.txt"), **options) == lm.generate(text, **options)
    assert [c.text for c in lm.complete(path="alice8k.txt", n=2, max_chars=4)] == [
        c.text for c in lm.complete(text, n=2, max_chars=4)
    ]
    for call in (lm.read, lm.generate, lm.complete, lm.score):
        with pytest.raises(InputError, match="no such file"):
            call(path="alice8k.tx")
    with pytest.raises(InputError, match="not both"):
        lm.perplexity("some text", path="alice8k.txt")
    with pytest.raises(InputError, match="directory"):
        lm.read(path=tmp_path)


def test_api_info_matches_the_cli(folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("gla", "windowed"):
        described = cli_json(capsys, "info", str(folders[name]))
        assert json.loads(json.dumps(glactl.load(folders[name], threads=1).info(), default=str)) == described
        for precision in (
            "int8",
            "bfloat16",
        ):  # run-time weights (int8 buffers, a tied head's copy) count as the checkpoint's
            assert (
                glactl.load(folders[name], threads=1, precision=precision).info()["parameters"]
                == described["parameters"]
            )


def test_api_context_override_and_errors(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert glactl.load(folders["windowed"], threads=1, context=16).config.context == 16
    with pytest.raises(InputError, match="context"):
        glactl.load(folders["windowed"], threads=1, context=0)
    with pytest.raises(InputError, match="no such"):
        glactl.load(tmp_path / "missing", threads=1)
    with pytest.raises(InputError, match="--device"):
        glactl.load(folders["gla"], device="tpu")
    lm = glactl.load(folders["gla"], threads=1)
    with pytest.raises(InputError, match="--temperature"):
        lm.generate(PROMPT, temperature=-1)
    with pytest.raises(InputError, match="empty"):
        lm.perplexity("")
    monkeypatch.setattr(paths, "weights_dirs", lambda: [])
    with pytest.raises(InputError, match="--model"):
        glactl.load()

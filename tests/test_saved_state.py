"""Saved states and the start rule: exact continuation for every architecture, hostile files, the API.

Every exactness check goes through a file written and read back: continuing from a state equals
reading the whole text (float64 logits within 1e-10, the same sampled text, log-likelihoods that
add up), for every mixer in the registry, so a new architecture is covered when it registers.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_one_line_error, child_env, final_error_line, make_read_only, rel_err, run_cli
from safetensors.torch import save_file

import glactl
import glactl.cli.generate as generate_cli
from glactl.errors import InputError
from glactl.inference.generation import model_context
from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import MIXERS
from glactl.report.display import human_bytes
from glactl.storage.checkpoint import save_model

LN2 = math.log(2.0)
TEXT_A = "The history of the world is long.\n Caf\u00e9 na\u00efve \u4e2d\u6587 and more words to read "
TEXT_B = "then it goes on: a second part.\nEnd"
# Small sizes that still exercise each architecture's state: infinity-former segments close, Reflex reuses keys.
OVERRIDES: dict[str, dict[str, Any]] = {
    "gla": {"gla_gate_rank": 4},
    "performer": {"performer_features": 16},
    "infinite": {"infinite_segment": 16, "infinite_basis": 4, "infinite_samples": 8},
}
ARCHITECTURES = [*MIXERS, "transformer-window"]


def config_for(name: str) -> ModelConfig:
    """A tiny config of architecture `name` (transformer-window: attention with a 16-token window and 2 sinks)."""
    if name == "transformer-window":
        return ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=2, n_heads=4, context=16, sink_tokens=2)
    return ModelConfig.tiny(mixer=name, d_model=32, n_layers=3, n_heads=4, **OVERRIDES.get(name, {}))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("states")
    out = {}
    for i, name in enumerate(ARCHITECTURES):
        torch.manual_seed(100 + i)
        out[name] = save_model(root / name, LanguageModel(config_for(name)), training={"steps": 0})
    return out


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run_cli([*argv, "--threads", "1", "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def loglik(document: dict) -> float:
    total = document["total"]
    return -total["bits_per_byte"] * total["bytes"] * LN2


def direct_logits(model: torch.nn.Module, data: bytes) -> torch.Tensor:
    """Logits [T, V] of one forward pass over "\\n" + data: the reference every path must match."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([list(b"\n" + data)]))
    return logits[0]


def snapshot(state: Any) -> list[torch.Tensor | Any]:
    """Every leaf of a nested state, copied."""
    if isinstance(state, torch.Tensor):
        return [state.clone()]
    if isinstance(state, dict):
        return [x for key in state for x in snapshot(state[key])]
    if isinstance(state, (list, tuple)):
        return [x for value in state for x in snapshot(value)]
    return [state]


def same_leaves(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y) for x, y in zip(a, b)
    )


# ---- the start rule --------------------------------------------------------------------------------
def test_every_text_is_read_after_exactly_one_newline() -> None:
    assert model_context(b"abc") == b"\nabc"
    assert model_context(b"\nabc") == b"\n\nabc"  # a prompt that begins with "\n" still gets its own START
    assert model_context(b"") == b"\n"


def test_prompt_beginning_with_newline_reads_like_perplexity(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    folder = folders["gla"]
    model = glactl.load(folder, threads=1)
    prompt = b"\nabc def"
    reference = direct_logits(model.model, prompt)
    # generate: greedy bytes equal the argmax of a full forward over "\n" + prompt (+ what came before).
    context, expected = list(b"\n" + prompt), []
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model.model(torch.tensor([context + expected]))
            expected.append(int(logits[0, -1].argmax()))
    document = cli_json(
        capsys, "generate", prompt.decode(), "--model", str(folder), "--temperature", "0", "--max-new-tokens", "12"
    )
    assert document["samples"] == [bytes(expected).decode("utf-8", errors="replace")]
    # The state generate/complete start from is the one perplexity scores with.
    assert rel_err(model.read(prompt).logits, reference[-1]) < 1e-10
    # perplexity of the same text: every byte from the logits of the same forward, the first from "\n" alone.
    logprobs = torch.log_softmax(reference[:-1].double(), -1).gather(-1, torch.tensor(list(prompt))[:, None]).sum()
    assert model.score(prompt).loglik == pytest.approx(float(logprobs), abs=1e-9)


# ---- exactness through files, every architecture ----------------------------------------------------
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_continuing_from_a_saved_state_equals_reading_the_whole_text(
    name: str, folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], float64_loading: None
) -> None:
    folder = folders[name]
    a, b = TEXT_A.encode(), TEXT_B.encode()
    model = glactl.load(folder, threads=1)
    reference = direct_logits(model.model, a + b)

    # perplexity A --save-state: the file holds the state after "\n" + A and the logits for the next byte.
    state_a = tmp_path / "a.state"
    (tmp_path / "a.txt").write_bytes(a)
    (tmp_path / "b.txt").write_bytes(b)
    (tmp_path / "ab.txt").write_bytes(a + b)
    ll_a = loglik(
        cli_json(capsys, "perplexity", str(tmp_path / "a.txt"), "--model", str(folder), "--save-state", str(state_a))
    )
    loaded = model.load_state(state_a)
    assert loaded.bytes_read == len(a)
    assert rel_err(loaded.logits, reference[len(a)]) < 1e-10
    # The API's read writes a file that loads to the same logits.
    model.read(a).save(tmp_path / "api.state")
    assert rel_err(model.load_state(tmp_path / "api.state").logits, reference[len(a)]) < 1e-10
    # Reading B after the loaded state: the logits of every later byte.
    continued = model.read(b, state=loaded)
    assert rel_err(continued.logits, reference[-1]) < 1e-10

    # perplexity B --state A: its first byte too; ll(B | A) = ll(AB) - ll(A).
    ll_ab = loglik(cli_json(capsys, "perplexity", str(tmp_path / "ab.txt"), "--model", str(folder)))
    document = cli_json(
        capsys, "perplexity", str(tmp_path / "b.txt"), "--model", str(folder), "--state", str(state_a), "--window", "7"
    )
    assert document["total"]["bytes"] == len(b)
    assert loglik(document) == pytest.approx(ll_ab - ll_a, abs=1e-8)

    # generate from the state equals generate after the whole text: same seed, same sampled text.
    whole = cli_json(
        capsys, "generate", (a + b).decode(), "--model", str(folder), "--seed", "5", "--max-new-tokens", "30"
    )
    prompt_b = cli_json(
        capsys,
        "generate",
        b.decode(),
        "--model",
        str(folder),
        "--seed",
        "5",
        "--max-new-tokens",
        "30",
        "--state",
        str(state_a),
    )
    assert prompt_b["samples"] == whole["samples"]

    # Chained: --state A --save-state B saves after B and the generated bytes (greedy, so we know them).
    state_b = tmp_path / "b.state"
    greedy = cli_json(
        capsys,
        "generate",
        b.decode(),
        "--model",
        str(folder),
        "--temperature",
        "0",
        "--max-new-tokens",
        "9",
        "--state",
        str(state_a),
        "--save-state",
        str(state_b),
    )
    run = model.stream(b, state=loaded, temperature=0, max_new_tokens=9)
    for _ in run:
        pass
    generated = run.stats.sample_bytes[0]
    assert greedy["samples"] == run.stats.samples and len(generated) == 9
    after = model.load_state(state_b)
    assert after.bytes_read == len(a) + len(b) + 9
    assert rel_err(after.logits, direct_logits(model.model, a + b + generated)[-1]) < 1e-10
    # complete --save-state saves after the prefix.
    state_c = tmp_path / "c.state"
    code, out, err = run_cli(
        [
            "complete",
            b.decode(),
            "--model",
            str(folder),
            "--threads",
            "1",
            "--json",
            "--n",
            "2",
            "--max-chars",
            "4",
            "--state",
            str(state_a),
            "--save-state",
            str(state_c),
        ],
        capsys,
    )
    assert code == 0, err
    assert rel_err(model.load_state(state_c).logits, reference[-1]) < 1e-10
    # info describes the file without loading a model.
    described = cli_json(capsys, "info", str(state_b))
    assert described["bytes_read"] == len(a) + len(b) + 9 and described["precision"] == "float64"
    assert described["model"]["mixer"] == config_for(name).mixer and described["format_version"] == 1
    assert described["file_bytes"] == state_b.stat().st_size


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_float32_state_within_1e5_of_float64(name: str, folders: dict[str, Path], tmp_path: Path) -> None:
    a, b = TEXT_A.encode(), TEXT_B.encode()
    model = glactl.load(folders[name], threads=1)
    model.read(a).save(tmp_path / "a.state")
    continued = model.read(b, state=model.load_state(tmp_path / "a.state"))
    reference = direct_logits(model.model.double(), a + b)[-1]
    assert rel_err(continued.logits, reference) < 1e-5


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_call_never_changes_the_callers_state(name: str, folders: dict[str, Path]) -> None:
    model = glactl.load(folders[name], threads=1)
    state = model.read(TEXT_A)
    before, logits = snapshot(state.reading.state), state.logits.clone()
    model.generate("x", state=state, max_new_tokens=20, seed=1)
    model.generate(state=state, max_new_tokens=20, num_samples=3, seed=1, repetition_penalty=1.3)
    model.complete(" th", state=state, n=2, max_chars=5)
    model.perplexity(TEXT_B, state=state, window=5)
    model.read(TEXT_B, state=state)
    model.read("", state=state)
    # The mixers themselves update states out of place (the calls above also work on copies).
    with torch.no_grad():
        model.model.step(torch.tensor([65]), state.reading.state)
        model.model(torch.tensor([[65, 66, 67]]), state.reading.state)
    assert same_leaves(snapshot(state.reading.state), before)
    assert torch.equal(state.logits, logits)


def test_generate_from_a_state_needs_no_prompt_and_api_returns_the_state(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    model = glactl.load(folders["gla"], threads=1)
    state = model.read(TEXT_A)
    text, after = model.generate(state=state, max_new_tokens=15, temperature=0, return_state=True)
    assert model.generate(TEXT_A, max_new_tokens=15, temperature=0) == text
    assert after.bytes_read == len(TEXT_A.encode()) + 15
    assert after.tail == (b"\n" + TEXT_A.encode() + text.encode())[-64:]
    assert rel_err(after.logits, model.read(TEXT_A + text).logits) < 1e-5
    with pytest.raises(InputError, match="num-samples 1"):
        model.generate(state=state, max_new_tokens=5, num_samples=2, return_state=True)
    other = glactl.load(folders["mingru"], threads=1)
    with pytest.raises(InputError, match="another model"):
        other.generate(state=state, max_new_tokens=5)
    with pytest.raises(InputError, match="another model|other weights"):
        other.load_state(state.save(tmp_path / "gla.state"))


# ---- interruptions: what was generated so far is saved ------------------------------------------------
@pytest.mark.parametrize(("failure", "code"), [(BrokenPipeError, 0), (KeyboardInterrupt, 130)])
def test_interrupted_generation_saves_what_was_generated(
    folders: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    float64_loading: None,
    failure: type,
    code: int,
) -> None:
    folder = folders["gla"]
    model = glactl.load(folder, threads=1)
    prompt = "Once upon"
    writes = {"n": 0}
    original = generate_cli.write

    def failing_write(stream, text: str) -> None:  # noqa: ANN001
        writes["n"] += 1
        if writes["n"] == 6:
            raise failure()
        original(stream, text)

    monkeypatch.setattr(generate_cli, "write", failing_write)
    target = tmp_path / "story.state"
    exit_code, _, err = run_cli(
        [
            "generate",
            prompt,
            "--model",
            str(folder),
            "--threads",
            "1",
            "--temperature",
            "0",
            "--max-new-tokens",
            "40",
            "--save-state",
            str(target),
        ],
        capsys,
    )
    assert exit_code == code, err
    assert not torch.is_inference_mode_enabled()  # the interrupted generation was closed, not left holding it
    saved = model.load_state(target)
    # The note says the state was saved (and where), before the one error line of an interruption.
    lines = err.strip().splitlines()
    assert lines[0] == f"interrupted: state after {saved.bytes_read:,} bytes saved to {target} " + (
        f"({human_bytes(target.stat().st_size)})"
    )
    assert lines[1:] == (["glactl: error: interrupted"] if failure is KeyboardInterrupt else [])
    generated = saved.bytes_read - len(prompt)
    assert 5 <= generated < 40
    full = model.stream(prompt, max_new_tokens=40, temperature=0)
    for _ in full:
        pass
    expected = prompt.encode() + full.stats.sample_bytes[0][:generated]
    assert rel_err(saved.logits, model.read(expected).logits) < 1e-10
    assert not [p for p in tmp_path.iterdir() if p.name != "story.state"]  # no temporary file left behind


# ---- hostile and wrong state files -------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_state(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "a.state"
    glactl.load(folders["transformer-window"], threads=1).read(TEXT_A).save(path)
    return path


class _Exploit:
    """Unpickling this writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def _rewrite(source: Path, target: Path, change_tensors: Any = None, change_document: Any = None) -> Path:
    """A copy of a state file with its tensors and/or metadata document changed (a crafted file)."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = f.metadata()
    document = json.loads(metadata["glactl_state"])
    if change_tensors:
        change_tensors(tensors)
    if change_document:
        change_document(document)
    save_file(tensors, str(target), metadata={"glactl_state": json.dumps(document)})
    return target


def _hostile_files(root: Path, good: Path, folders: dict[str, Path]) -> dict[str, tuple[Path, list[str], list[str]]]:
    """name -> (file, extra CLI options, words the error must contain)."""
    data = good.read_bytes()
    files: dict[str, tuple[Path, list[str], list[str]]] = {}

    def put(name: str, content: bytes, options: list[str] | None = None, words: list[str] | None = None) -> None:
        path = root / f"{name}.state"
        path.write_bytes(content)
        files[name] = (path, options or [], words or [])

    put("empty", b"", words=["empty"])
    put("truncated-head", data[:5], words=["truncated"])
    put("truncated-data", data[: len(data) - 40])
    put("truncated-header", data[:200])
    put("random", bytes(range(256)) * 40, words=["not a glactl state file"])
    put("text", b"The history of the world is long.\n" * 50, words=["not a glactl state file"])
    put("huge-header-claim", struct.pack("<Q", 1 << 60) + b"{}")
    put("json-garbage", struct.pack("<Q", 10) + b"not json!!" + b"\0" * 10)
    put("pickle", pickle.dumps(_Exploit(root / "pwned")), words=["pickle"])
    put("torch-save-zip", b"PK\x03\x04" + b"\0" * 100, words=["pickle"])
    weights = folders["transformer-window"] / "model.safetensors"
    files["checkpoint-weights"] = (weights, [], ["not a glactl state file"])
    files["directory"] = (root, [], ["directory"])
    files["missing"] = (root / "nope.state", [], ["no such"])
    files["wrong-shape"] = (
        _rewrite(good, root / "shape.state", lambda t: t.update({"state.0.k": torch.cat([t["state.0.k"]] * 2, dim=1)})),
        [],
        ["state.0.k"],
    )
    files["extra-layer"] = (
        _rewrite(good, root / "extra.state", None, lambda d: d["structure"]["list"].append(d["structure"]["list"][0])),
        [],
        ["list of 2"],
    )
    files["bad-position"] = (
        _rewrite(
            good,
            root / "pos.state",
            None,
            lambda d: d["structure"]["list"][0]["dict"][2].__setitem__(1, {"int": 10**9}),
        ),
        [],
        ["count"],
    )
    files["future-format"] = (
        _rewrite(good, root / "future.state", None, lambda d: d.update(format_version=99)),
        [],
        ["format_version"],
    )
    files["nan"] = (
        _rewrite(good, root / "nan.state", lambda t: t["state.1.v"].view(-1)[0:1].fill_(math.nan)),
        [],
        ["NaN"],
    )
    files["other-window"] = (good, ["--context", "32"], ["window", "--context 16"])
    return files


def test_hostile_state_files_exit_2_with_one_line(
    folders: dict[str, Path], good_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = folders["transformer-window"]
    # The good file loads: every failure below is the file's fault.
    code, out, err = run_cli(
        [
            "generate",
            "x",
            "--model",
            str(folder),
            "--threads",
            "1",
            "--max-new-tokens",
            "3",
            "--state",
            str(good_state),
        ],
        capsys,
    )
    assert code == 0, err
    for name, (path, options, words) in _hostile_files(tmp_path, good_state, folders).items():
        for command in (["generate", "x", "--max-new-tokens", "3"], ["perplexity", str(good_state)]):
            code, out, err = run_cli(
                [*command, "--model", str(folder), "--threads", "1", "--state", str(path), *options], capsys
            )
            assert_one_line_error(code, out, err, *words)
        if name not in ("other-window", "checkpoint-weights", "directory", "missing"):
            code, out, err = run_cli(["info", str(path)], capsys)
            if name not in ("wrong-shape", "extra-layer", "bad-position", "nan"):  # need a model to tell
                assert_one_line_error(code, out, err)
    assert not (tmp_path / "pwned").exists()


def test_state_bytes_in_memory_are_checked_as_a_file_is(
    folders: dict[str, Path], good_state: Path, tmp_path: Path
) -> None:
    """An upload or a stored session is read from memory: the same state as from the file, the same refusals."""
    from glactl.storage.state_file import load_state, state_from_bytes

    lm = glactl.load(folders["transformer-window"], threads=1)
    owner = lm.state_owner()
    from_file = load_state(good_state, lm.model, owner).reading
    from_bytes = state_from_bytes(good_state.read_bytes(), "uploaded state", lm.model, owner).reading
    assert same_leaves(snapshot(from_bytes.state), snapshot(from_file.state))
    assert torch.equal(from_bytes.logits, from_file.logits) and from_bytes.tail == from_file.tail
    for name, (path, options, words) in _hostile_files(tmp_path, good_state, folders).items():
        if options or not path.is_file():  # a window option or a path problem: nothing to read from memory
            continue
        with pytest.raises(InputError) as error:
            state_from_bytes(path.read_bytes(), "uploaded state", lm.model, owner)
        message = str(error.value)
        assert message.startswith("uploaded state: ") and "\n" not in message, name
        assert all(word in message for word in words if word not in path.name), (name, message)  # not the name
    assert not (tmp_path / "pwned").exists()


def test_state_of_another_model_or_other_weights_is_refused(
    folders: dict[str, Path], good_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another architecture and config.
    code, out, err = run_cli(["generate", "x", "--model", str(folders["gla"]), "--state", str(good_state)], capsys)
    assert_one_line_error(code, out, err, "another model")
    # The same config with other weights: only model.safetensors' hash differs.
    torch.manual_seed(999)
    other = save_model(tmp_path / "other", LanguageModel(config_for("transformer-window")), training={"steps": 0})
    for command in (["generate", "x"], ["complete", "x"], ["perplexity", str(good_state)]):
        code, out, err = run_cli([*command, "--model", str(other), "--state", str(good_state)], capsys)
        assert_one_line_error(code, out, err, "other weights")


def test_save_state_usage_errors(folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(folders["gla"])
    (tmp_path / "a.txt").write_text("a text")
    cases = [
        (["generate", "x", "--num-samples", "2", "--save-state", str(tmp_path / "s")], "--num-samples 1"),
        (
            ["perplexity", str(tmp_path / "a.txt"), str(tmp_path / "a.txt") + "x", "--save-state", str(tmp_path / "s")],
            "a.txtx",
        ),
        (["generate", "x", "--save-state", str(tmp_path / "no-folder" / "s")], "does not exist"),
        (["generate", "x", "--save-state", str(tmp_path)], "directory"),
    ]
    (tmp_path / "b.txt").write_text("b text")
    cases.append(
        (
            ["perplexity", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--save-state", str(tmp_path / "s")],
            "exactly one",
        )
    )
    for argv, word in cases:
        code, out, err = run_cli([*argv, "--model", folder, "--threads", "1"], capsys)
        assert_one_line_error(code, out, err, word)
    assert not (tmp_path / "s").exists()


def test_a_saved_state_is_reported_on_stderr_with_its_size(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.txt").write_text(TEXT_A)
    target = tmp_path / "s.state"
    for argv, bytes_read in (
        (["generate", "ab", "-n", "3"], 5),
        (["complete", "ab", "-n", "1", "--max-chars", "2"], 2),
        (["perplexity", str(tmp_path / "a.txt")], len(TEXT_A.encode())),
    ):
        code, out, err = run_cli(
            [*argv, "--model", str(folders["gla"]), "--threads", "1", "--save-state", str(target)], capsys
        )
        assert code == 0 and out, err
        size = human_bytes(target.stat().st_size)
        assert f"state after {bytes_read:,} bytes saved to {target} ({size})\n" in err, err


def test_an_unwritable_save_state_folder_is_refused_before_any_work(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import glactl.api.loading

    (tmp_path / "a.txt").write_text(TEXT_A)
    read_only = tmp_path / "ro"
    read_only.mkdir()
    make_read_only(read_only, monkeypatch)  # as root, through the writability probe (chmod does not stop root)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(glactl.api.loading, "load", no_work)
    try:
        for argv in (["generate", "x"], ["complete", "x"], ["perplexity", str(tmp_path / "a.txt")]):
            code, out, err = run_cli(
                [*argv, "--model", str(folders["gla"]), "--save-state", str(read_only / "y.state")], capsys
            )
            assert_one_line_error(code, out, err, "ro/y.state", "cannot create files in", str(read_only))
    finally:
        read_only.chmod(0o755)


def test_a_save_failing_at_the_end_still_prints_the_results(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder became unwritable while the model worked: results on stdout, then one error line, exit 2."""
    import glactl.storage.atomic

    def denied(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            raise PermissionError(13, "Permission denied")
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(glactl.storage.atomic, "open", denied, raising=False)  # the state file's own writes
    (tmp_path / "a.txt").write_text(TEXT_A)
    target = tmp_path / "y.state"
    for argv, printed in (
        (["perplexity", str(tmp_path / "a.txt"), "--json"], '"bits_per_byte"'),
        (["perplexity", str(tmp_path / "a.txt")], "bits/byte"),
        (["complete", "ab", "-n", "1", "--max-chars", "2", "--json"], '"completions"'),
        (["generate", "ab", "-n", "3"], "ab"),
    ):
        code, out, err = run_cli(
            [*argv, "--model", str(folders["gla"]), "--threads", "1", "--save-state", str(target)], capsys
        )
        assert code == 2 and printed in out, (out, err)
        assert final_error_line(err) == f"glactl: error: {target}: could not save the state (Permission denied)"
        assert list(tmp_path.iterdir()) == [tmp_path / "a.txt"]  # no state, no temporary file


def test_state_files_name_their_model(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = str(folders["gla"])
    target = tmp_path / "s.state"
    code, out, err = run_cli(
        ["generate", "ab", "-n", "3", "-m", folder, "--threads", "1", "--save-state", str(target)], capsys
    )
    assert code == 0, err
    assert cli_json(capsys, "info", str(target))["model"]["name"] == folder  # the model as it was given
    code, out, err = run_cli(["info", str(target)], capsys)
    assert code == 0 and (re.search(rf"│ model\s+│ {re.escape(folder)} ", out) or f"\nmodel: {folder}\n" in out), out
    # The wrong-model error says which model the state belongs to, and what to pass to load it.
    code, out, err = run_cli(["generate", "x", "-m", str(folders["mingru"]), "--state", str(target)], capsys)
    assert_one_line_error(code, out, err, f"another model, {folder} (gla,", f"; pass -m {folder}")
    api_state = glactl.load(folders["gla"], threads=1).read("ab").save(tmp_path / "api.state")
    assert cli_json(capsys, "info", str(api_state))["model"]["name"] == str(folders["gla"])
    # A file saved before names were recorded still loads; the messages do without the name.
    old = _rewrite(target, tmp_path / "old.state", None, lambda d: d["model"].pop("name"))
    code, out, err = run_cli(["generate", "x", "-n", "2", "-m", folder, "--threads", "1", "--state", str(old)], capsys)
    assert code == 0, err
    code, out, err = run_cli(["info", str(old)], capsys)
    assert code == 0 and "not recorded" in out
    code, out, err = run_cli(["generate", "x", "-m", str(folders["mingru"]), "--state", str(old)], capsys)
    assert_one_line_error(code, out, err, "another model (gla,")
    assert "pass -m" not in err
    # The same name with other files since: no advice to pass what was passed.
    torch.manual_seed(5)
    changed = save_model(tmp_path / "changing", LanguageModel(config_for("gla")), training={"steps": 0})
    glactl.load(changed, threads=1).read("ab").save(tmp_path / "c.state")
    torch.manual_seed(6)
    save_model(changed, LanguageModel(config_for("gla")), training={"steps": 0})
    code, out, err = run_cli(["generate", "x", "-m", str(changed), "--state", str(tmp_path / "c.state")], capsys)
    assert_one_line_error(code, out, err, f"other weights, {changed} as it was then (")
    assert "pass -m" not in err


def test_model_names_are_shipped_names_or_the_path_as_given(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import glactl.storage.model_paths as paths

    shutil.copytree(folders["gla"], tmp_path / "tiny-shipped")
    monkeypatch.setattr(paths, "weights_dirs", lambda: [tmp_path])
    shipped = tmp_path / "tiny-shipped"
    for given in ("tiny-shipped", str(shipped), shipped):
        assert paths.model_name(given, paths.resolve_model(given)) == "tiny-shipped"
    monkeypatch.chdir(tmp_path)
    assert paths.model_name("./tiny-shipped/", Path("./tiny-shipped/")) == "tiny-shipped"
    run = Path("runs") / "mine"
    shutil.copytree(folders["gla"], run / "checkpoint")
    assert paths.model_name("runs/mine", run / "checkpoint") == "runs/mine"
    assert glactl.load("runs/mine", threads=1).state_owner().name == "runs/mine"
    assert glactl.load("tiny-shipped", threads=1).state_owner().name == "tiny-shipped"


def test_a_text_file_as_state_says_it_is_not_a_state_file(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("The history of the world is long.\n" * 50)
    for argv in (["generate", "x", "-m", str(folders["gla"]), "--state", str(text)], ["info", str(text)]):
        code, out, err = run_cli(argv, capsys)
        assert_one_line_error(code, out, err, "notes.txt: not a glactl state file")
        assert "safetensors header claims" not in err


def test_info_table_for_a_state_file(good_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["info", str(good_state)], capsys)
    assert code == 0, err
    for word in (
        "saved state",
        "transformer",
        "bytes read",
        f"{len(TEXT_A.encode()):,}",
        "16 tokens (2 sinks)",
        "float32",
        "version 1",
    ):
        assert word in out, out


@pytest.mark.subprocess
def test_import_glactl_stays_light() -> None:
    code = "import sys, glactl; glactl.__version__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())

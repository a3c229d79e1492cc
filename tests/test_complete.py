"""Beam-search completion: exact probabilities, ranking, boundaries, UTF-8 validity, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, run_cli
from typer.testing import CliRunner

from glactl.cli.app import app
from glactl.inference.completion import complete
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import save_model

runner = CliRunner()
SPACE, PUNCT = b" \t\n\r\x0b\x0c", b'.,;:!?"()[]{}'


class Bigram(torch.nn.Module):
    """A stand-in model whose next-byte distribution depends only on the last byte (state = last byte)."""

    def __init__(self, probs: dict[int, dict[int, float]]) -> None:
        super().__init__()
        table = torch.full((256, 256), -1e4, dtype=torch.float64)
        for prev, row in probs.items():
            for byte, p in row.items():
                table[prev, byte] = math.log(p)
        self.table = torch.log_softmax(table, dim=-1)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, idx: torch.Tensor, state: object = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[idx], idx[:, -1]

    def step(self, idx: torch.Tensor, state: object) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[idx], idx

    def logp(self, prev: int, byte: int) -> float:
        return float(self.table[prev, byte])


def reference(model: Bigram, prefix: bytes, alphabet: bytes, until: str, max_chars: int) -> dict[str, float]:
    """Every completion over `alphabet` (ASCII) with its exact log-probability, by exhaustive search."""
    out: dict[str, float] = {}

    def ends(text: bytes, byte: int) -> bool:
        content = any(c not in SPACE for c in text)
        if not content:
            return False
        if until == "word":
            return byte in SPACE or byte in PUNCT
        if until == "line":
            return byte in b"\n\r"
        terminal = text.rstrip(b"\"')]}")[-1:] in (b".", b"!", b"?")
        return byte in b"\n\r" or (byte in SPACE and terminal)

    def walk(text: bytes, logp: float) -> None:
        prev = (prefix + text)[-1]
        for byte in alphabet:
            lp = logp + model.logp(prev, byte)
            if ends(text, byte):
                key = text.decode()
                if until == "sentence" and text.rstrip(b"\"')]}")[-1:] not in (b".", b"!", b"?"):
                    key += "\n"  # a sentence cut by a newline without . ! ? shows that newline
                old = out.get(key, -math.inf)
                out[key] = max(old, lp) + math.log1p(math.exp(-abs(old - lp))) if old > -math.inf else lp
            elif len(text) + 1 == max_chars:
                out[(text + bytes([byte])).decode()] = lp
            else:
                walk(text + bytes([byte]), lp)

    walk(b"", 0.0)
    return out


def chain(spec: dict[str, dict[str, float]]) -> Bigram:
    return Bigram({ord(a): {ord(b): p for b, p in row.items()} for a, row in spec.items()})


WORDS = chain(
    {
        "x": {" ": 0.7, "a": 0.2, ".": 0.1},
        " ": {"a": 0.5, "b": 0.3, " ": 0.2},
        "a": {"b": 0.4, " ": 0.3, ".": 0.2, "a": 0.1},
        "b": {"a": 0.5, ".": 0.3, "\n": 0.2},
        ".": {" ": 0.6, "\n": 0.3, "a": 0.1},
        "\n": {"a": 1.0},
    }
)
ALPHABET = b"ab .\n"


@pytest.mark.parametrize("until", ["word", "line", "sentence"])
def test_wide_beam_finds_the_exact_top_completions(until: str) -> None:
    exact = reference(WORDS, b"x", ALPHABET, until, max_chars=5)
    best = sorted(exact.items(), key=lambda kv: kv[1], reverse=True)[:5]
    found = complete(WORDS, b"x", n=5, beam=2000, until=until, max_chars=5)
    # Completions of equal probability (' ab' and ' abab' here) may come in either order: float rounding decides.
    assert [c.logprob for c in found] == pytest.approx([lp for _, lp in best], abs=1e-9)
    for c in found:
        assert c.logprob == pytest.approx(exact[c.text], abs=1e-9)


@pytest.mark.parametrize("until", ["word", "line", "sentence"])
def test_default_beam_reports_exact_probabilities_ranked_and_distinct(until: str) -> None:
    exact = reference(WORDS, b"x", ALPHABET, until, max_chars=6)
    found = complete(WORDS, b"x", n=4, until=until, max_chars=6)
    assert found and len({c.text for c in found}) == len(found)
    assert [c.logprob for c in found] == sorted((c.logprob for c in found), reverse=True)
    for c in found:
        assert c.logprob == pytest.approx(exact[c.text], abs=1e-9)
        assert 0 < c.probability <= 1


def test_a_sentence_ended_by_a_newline_without_punctuation_shows_the_newline() -> None:
    found = complete(WORDS, b"x", n=10, beam=200, until="sentence", max_chars=6)
    bare = [c.text for c in found if not c.text.rstrip("\"')]}\n").endswith((".", "!", "?"))]
    assert bare and all(text.endswith("\n") for text in bare)
    assert all(not c.text.endswith("\n") for c in found if c.text.rstrip("\n").endswith("."))


def test_leading_whitespace_does_not_end_a_word() -> None:
    found = complete(WORDS, b"x", n=3, until="word", max_chars=10)
    assert found[0].text.startswith(" ") and found[0].text.strip()
    assert all(c.text.strip() for c in found)


def test_invalid_utf8_beams_are_dropped_and_characters_counted_not_bytes() -> None:
    # After "x": 0xFF (never valid) is most likely, then a lead byte 0xC3 that is usually followed
    # by an invalid "(" and only sometimes by 0xA9 (completing "é").
    model = Bigram(
        {
            ord("x"): {0xFF: 0.6, 0xC3: 0.3, ord("o"): 0.1},
            0xC3: {ord("("): 0.9, 0xA9: 0.1},
            0xA9: {0xC3: 0.5, ord(" "): 0.5},
            ord("o"): {ord(" "): 1.0},
            0xFF: {ord(" "): 1.0},
            ord("("): {ord(" "): 1.0},
        }
    )
    found = complete(model, b"x", n=5, beam=50, until="word", max_chars=3)
    texts = [c.text for c in found]
    assert texts and all("\ufffd" not in t for t in texts)
    assert "é" in texts and "o" in texts
    assert max(len(t) for t in texts) <= 3
    by_text = {c.text: c.logprob for c in found}
    assert by_text["é"] == pytest.approx(math.log(0.3 * 0.1 * 0.5), rel=1e-6)
    assert "ééé" in texts  # three characters (six bytes) reach --max-chars


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("complete") / "tiny"
    save_model(folder, LanguageModel(ModelConfig.tiny()), training={"steps": 0})
    return folder


def test_real_model_completions_match_a_direct_forward() -> None:
    torch.manual_seed(4)
    model = LanguageModel(ModelConfig.tiny()).double().eval()
    prefix, max_chars = b"The history of", 4
    found = complete(model, prefix, n=5, until="word", max_chars=max_chars)
    assert len(found) == 5 and len({c.text for c in found}) == 5
    boundary = sorted(set(SPACE) | set(PUNCT))
    with torch.no_grad():
        for c in found:
            body = c.text.encode()
            logits, _ = model(torch.tensor([list(b"\n" + prefix + body)]))
            lp = torch.log_softmax(logits[0], -1)
            n = len(b"\n" + prefix)
            path = sum(float(lp[n - 1 + i, byte]) for i, byte in enumerate(body))
            if len(c.text) == max_chars:
                expected = path
            else:
                expected = path + float(torch.logsumexp(lp[-1, boundary], 0))
            assert c.logprob == pytest.approx(expected, abs=1e-8)


def test_cli_json_and_table(tiny_checkpoint: Path) -> None:
    result = runner.invoke(app, ["complete", "The history of", "--model", str(tiny_checkpoint), "--n", "3", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"prefix", "completions", "until", "model", "seconds"}
    assert document["prefix"] == "The history of" and len(document["completions"]) == 3
    for row in document["completions"]:
        assert set(row) == {"text", "probability", "logprob"}
        assert row["probability"] == pytest.approx(math.exp(row["logprob"]))
    table = runner.invoke(app, ["complete", "The history of", "--model", str(tiny_checkpoint), "--n", "3"])
    assert table.exit_code == 0
    assert "probability" in table.stdout and "log-prob" in table.stdout
    assert json.dumps(document["completions"][0]["text"], ensure_ascii=False) in table.stdout


@pytest.mark.parametrize("args", [["--until", "paragraph"], ["--n", "0"], ["--beam", "0"], ["--max-chars", "0"]])
def test_cli_bad_values_exit_2(tiny_checkpoint: Path, args: list[str], capsys: pytest.CaptureFixture) -> None:
    from glactl.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["complete", "abc", "--model", str(tiny_checkpoint), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_takes_the_loading_options_and_continues_a_windowed_state(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's case: a state read with --context 8 needs --context 8 on complete too, and complete takes it."""
    torch.manual_seed(4)
    config = ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=1, n_heads=2, context=16, sink_tokens=2)
    folder = save_model(tmp_path / "windowed", LanguageModel(config), training={"steps": 0})
    state = tmp_path / "c8.state"
    common = [
        "--model",
        str(folder),
        "--threads",
        "1",
        "--precision",
        "float32",
        "--compile",
        "off",
        "--kernels",
        "torch",
    ]
    code, out, err = run_cli(
        ["complete", "The history of", *common, "--context", "8", "--save-state", str(state)], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(["complete", " and", *common, "--state", str(state)], capsys)
    assert_one_line_error(code, out, err, "use --context 8")
    code, out, err = run_cli(["complete", " and", *common, "--context", "8", "--state", str(state), "--json"], capsys)
    assert code == 0, err
    continued = json.loads(out)["completions"]
    code, out, err = run_cli(["complete", "The history of and", *common, "--context", "8", "--json"], capsys)
    assert code == 0, err
    assert [c["text"] for c in json.loads(out)["completions"]] == [c["text"] for c in continued]

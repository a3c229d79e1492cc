"""Untrusted weights: only safetensors + JSON are read, and every bad file is one line, exit 2.

Pickle files are refused without being opened as pickles; crafted config.json files are rejected
before any real allocation; corrupt or lying safetensors files are rejected; and a hypothesis fuzz
of the loader shows it either loads a well-formed model or raises InputError, never anything else.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import glactl.storage.checkpoint as checkpoint
import glactl.storage.safe_read as safe_read
from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model

TINY = ModelConfig.tiny(d_model=32, n_layers=1, n_heads=2)


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose name does not repeat the test's name, so messages are checked, not paths."""
    return tmp_path_factory.mktemp("case")


def make_checkpoint(folder: Path, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(TINY)
    save_model(folder, model)
    return model


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A valid tiny checkpoint and its state dict."""
    folder = tmp_path_factory.mktemp("valid") / "ck"
    model = make_checkpoint(folder)
    return folder, {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Exploit:
    """Unpickling this writes a marker file: proof that something called pickle.load on it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


# ---- pickle files --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.pt", "pytorch_model.bin", "weights.pkl", "model.ckpt", "model.pth"])
def test_pickle_file_as_model_is_refused_unread(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Exploit(marker)))
    code, _, err = run_cli(["info", "--model", str(path)], capsys)
    assert_one_line(code, err, "pickle")
    assert not marker.exists()
    with pytest.raises(InputError, match="pickle"):
        load_model(path)
    assert not marker.exists()


def test_folder_with_only_a_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(marker)))
    code, _, err = run_cli(["generate", "hi", "--model", str(folder), "--max-new-tokens", "2"], capsys)
    assert_one_line(code, err, "pickle", "safetensors")
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_or_config(
    tmp_path: Path, valid: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    (folder / "model.safetensors").write_bytes(pickle.dumps(_Exploit(marker)))
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "model.safetensors")
    torch.save({"x": torch.zeros(3)}, folder / "model.safetensors")  # a real torch zip-pickle
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "model.safetensors")
    make_checkpoint(folder)
    (folder / "config.json").write_bytes(pickle.dumps(_Exploit(marker)))
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "config.json")
    assert not marker.exists()


# ---- crafted config.json -------------------------------------------------------------------------
def _config_with(folder: Path, **architecture: Any) -> None:
    document = json.loads((folder / "config.json").read_text())
    document["architecture"].update(architecture)
    (folder / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"d_model": 10**12}, "d_model"),
        ({"n_layers": 1 << 40}, "n_layers"),
        ({"vocab_size": 2**62}, "vocab_size"),
        ({"d_model": -64}, "d_model"),
        ({"n_heads": 0}, "n_heads"),
        ({"chunk_size": -16}, "chunk_size"),
        ({"context": -1}, "context"),
        ({"mixer": "evil"}, "evil"),
        ({"mixer": ["gla"]}, "mixer"),
        ({"d_model": "32"}, "d_model"),
        ({"d_model": 32.0}, "d_model"),
        ({"tie_embeddings": "yes"}, "tie_embeddings"),
        ({"n_layers": True}, "n_layers"),
        ({"dropout": float("nan")}, "dropout"),
        ({"norm_eps": float("inf")}, "norm_eps"),
        ({"__class__": "os.system"}, "unknown fields"),
        # inside the per-field limits, but far larger than the weights file: rejected by shape, not allocated
        ({"d_model": 16384, "n_layers": 256, "n_heads": 256}, "do not match"),
    ],
)
def test_crafted_config_is_rejected_before_allocation(
    tmp_path: Path, change: dict, needle: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    _config_with(folder, **change)
    built_on: list[str] = []
    real = checkpoint.LanguageModel

    def spy(config: ModelConfig) -> LanguageModel:
        built_on.append(torch.empty(0).device.type)  # "meta" inside expected_tensors, "cpu" for a real build
        return real(config)

    monkeypatch.setattr(checkpoint, "LanguageModel", spy)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, needle, "config.json" if needle != "do not match" else "model.safetensors")
    assert "cpu" not in built_on  # nothing real was built


@pytest.mark.parametrize(
    "document, needle",
    [
        ("[1, 2, 3]", "not a JSON object"),
        ('{"format_version": 99, "architecture": {}}', "format_version"),
        ('{"format_version": "1", "architecture": {}}', "format_version"),
        ('{"format_version": 1, "architecture": "gla"}', "config"),
        ('{"format_version": 1, "architecture": {}, "tokenizer": "gpt2"}', "tokenizer"),
        ('{"format_version": 1, "architecture": {}, "training": []}', "training"),
        ("{" * 100_000, "config.json"),  # nesting deep enough to overflow a recursive parser
        ("\xff\xfe not utf-8", "config.json"),
        ("", "config.json"),
    ],
)
def test_malformed_config_documents(
    tmp_path: Path, document: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    (folder / "config.json").write_bytes(
        document.encode("utf-8", errors="surrogateescape") if document[:1] != "\xff" else b"\xff\xfe not utf-8"
    )
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, needle)


def test_ten_megabyte_config_is_rejected_unparsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    document = json.loads((folder / "config.json").read_text())
    document["training"] = {"padding": "x" * (10 << 20)}
    (folder / "config.json").write_text(json.dumps(document))
    parsed: list[int] = []
    real_loads = safe_read.json.loads
    monkeypatch.setattr(safe_read.json, "loads", lambda s, *a, **k: parsed.append(len(s)) or real_loads(s, *a, **k))
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "config.json", "larger")
    assert not any(n > 1 << 20 for n in parsed)


# ---- lying or broken safetensors -------------------------------------------------------------------
def _header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_safetensors(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_header_claiming_more_than_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    weights = folder / "model.safetensors"
    header, data = _header(weights)
    good = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 1 << 60) + good[8:])  # header length beyond the file
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "header")
    begin, _ = header["embed.weight"]["data_offsets"]
    header["embed.weight"]["data_offsets"] = [begin, begin + 10**12]  # a tensor far beyond the end of the file
    header["embed.weight"]["shape"] = [10**12 // 4]
    _write_safetensors(weights, header, data)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "embed.weight")


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1000, -1])
def test_truncated_weights(tmp_path: Path, keep: int, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "model.safetensors")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights(tmp_path: Path, value: float, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ck"
    model = make_checkpoint(folder)
    with torch.no_grad():
        model.blocks[0].mlp_norm.weight[3] = value
    save_model(folder, model)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "blocks.0.mlp_norm.weight", "NaN or inf")


def test_wrong_dtype_and_shape_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ck"
    make_checkpoint(folder)
    weights = folder / "model.safetensors"
    header, data = _header(weights)
    begin, end = header["norm.weight"]["data_offsets"]  # 32 float32 values
    # A self-consistent file (64 F16 values fill the same bytes) whose dtype and shape disagree with config.json.
    header["norm.weight"].update(dtype="F16", shape=[(end - begin) // 2])
    _write_safetensors(weights, header, data)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "norm.weight")
    header["norm.weight"].update(dtype="F16", shape=[32])  # right shape, wrong dtype, span too long: a lie
    _write_safetensors(weights, header, data)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "norm.weight")
    # Fully consistent F16 tensor of the right shape (the file's other tensors stay F32): named as a dtype mismatch.
    half = dict(header)
    half["norm.weight"] = {"dtype": "F16", "shape": [32], "data_offsets": [len(data), len(data) + 64]}
    _write_safetensors(weights, half, data + torch.ones(32, dtype=torch.float16).numpy().tobytes())
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "wrong dtype", "norm.weight", "F16")
    document = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**document, "weights_dtype": "int8"}))
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "weights_dtype")
    (folder / "config.json").write_text(json.dumps(document))
    header["norm.weight"].update(dtype=["F32"], shape=[32])  # unhashable dtype (found by the fuzz below)
    _write_safetensors(weights, header, data)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "norm.weight", "dtype")
    header["norm.weight"].update(dtype="F32", shape=[32])
    header["bogus"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    _write_safetensors(weights, header, data)
    code, _, err = run_cli(["info", str(folder)], capsys)
    assert_one_line(code, err, "bogus")


# ---- fuzzing the loader ---------------------------------------------------------------------------------
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)


def _check_outcome(folder: Path, original: dict[str, torch.Tensor], weights_unchanged: bool) -> None:
    """The property: a loaded model is well formed (and identical when its weights file is), else InputError."""
    try:
        model, _ = load_model(folder)
    except InputError as e:
        assert "\n" not in str(e)
        return
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in original.items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    if weights_unchanged:
        assert all(torch.equal(state[k], original[k]) for k in original)


@settings(FUZZ, max_examples=100)
@given(blob=st.binary(max_size=4096), which=st.sampled_from(["model.safetensors", "config.json"]))
def test_fuzz_random_bytes(
    tmp_path_factory: pytest.TempPathFactory, valid: tuple[Path, dict], blob: bytes, which: str
) -> None:
    source, original = valid
    folder = tmp_path_factory.mktemp("fuzz") / "ck"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes(blob if name == which else (source / name).read_bytes())
    with pytest.raises(InputError):
        load_model(folder)


@st.composite
def mutations(draw: st.DrawFn, size: int, hot: int) -> list[tuple[str, int, int]]:
    """Byte edits, mostly in the first `hot` bytes (the header), mostly in place so the structure often survives."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.one_of(st.integers(0, min(hot, size) - 1), st.integers(0, size - 1)))
        kind = draw(st.sampled_from(["set", "set", "flip", "flip", "flip", "delete", "insert"]))
        edits.append((kind, where, draw(st.integers(0, 255))))
    return edits


def truncations(size: int) -> st.SearchStrategy[int | None]:
    """No cut three times in four; otherwise anywhere in the file."""
    return st.one_of(st.none(), st.none(), st.none(), st.integers(0, size))


def _apply(raw: bytes, edits: list[tuple[str, int, int]], cut: int | None) -> bytes:
    data = bytearray(raw)
    for kind, where, value in edits:
        where = min(where, max(len(data) - 1, 0))
        if kind == "set" and data:
            data[where] = value
        elif kind == "flip" and data:
            data[where] ^= 1 << (value % 8)
        elif kind == "delete" and data:
            del data[where]
        else:
            data.insert(where, value)
    return bytes(data[:cut] if cut is not None else data)


def _fuzz_file(
    tmp_path_factory: pytest.TempPathFactory, valid: tuple[Path, dict], name: str, edits: list, cut: int | None
) -> None:
    source, original = valid
    folder = tmp_path_factory.mktemp("fuzz") / "ck"
    folder.mkdir()
    for other in ("model.safetensors", "config.json"):
        raw = (source / other).read_bytes()
        (folder / other).write_bytes(_apply(raw, edits, cut) if other == name else raw)
    unchanged = (folder / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    _check_outcome(folder, original, unchanged)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_fuzz_mutated_weights(
    tmp_path_factory: pytest.TempPathFactory, valid: tuple[Path, dict], data: st.DataObject
) -> None:
    size = (valid[0] / "model.safetensors").stat().st_size
    edits = data.draw(mutations(size, 2048))
    cut = data.draw(truncations(size))
    _fuzz_file(tmp_path_factory, valid, "model.safetensors", edits, cut)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_fuzz_mutated_config(
    tmp_path_factory: pytest.TempPathFactory, valid: tuple[Path, dict], data: st.DataObject
) -> None:
    size = (valid[0] / "config.json").stat().st_size
    edits = data.draw(mutations(size, size))
    cut = data.draw(truncations(size))
    _fuzz_file(tmp_path_factory, valid, "config.json", edits, cut)


_FIELD_VALUES = st.one_of(
    st.integers(-(2**63), 2**64),
    st.integers(-2, 10**6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3"]),
    st.lists(st.integers(-5, 10**5), max_size=4),
)


@settings(FUZZ, max_examples=100)
@given(data=st.data())
def test_fuzz_structured_header(
    tmp_path_factory: pytest.TempPathFactory, valid: tuple[Path, dict], data: st.DataObject
) -> None:
    """Well-formed JSON headers with lying fields: shapes, dtypes and offsets replaced by arbitrary values."""
    source, original = valid
    header, payload = _header(source / "model.safetensors")
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names))
        field = data.draw(
            st.sampled_from(["shape", "dtype", "data_offsets", "data_offsets.0", "data_offsets.1", "shape.0", "entry"])
        )
        value = data.draw(_FIELD_VALUES)
        if field == "entry":
            header[name] = value
        elif "." in field:
            key, index = field.split(".")
            if (
                isinstance(header[name], dict)
                and isinstance(header[name].get(key), list)
                and int(index) < len(header[name][key])
            ):
                header[name][key][int(index)] = value
        elif isinstance(header[name], dict):
            header[name][field] = value
    payload = payload[: data.draw(st.one_of(st.none(), st.integers(0, len(payload))))]
    folder = tmp_path_factory.mktemp("fuzz") / "ck"
    folder.mkdir()
    (folder / "config.json").write_bytes((source / "config.json").read_bytes())
    try:
        _write_safetensors(folder / "model.safetensors", header, payload)
    except ValueError:  # json.dumps refuses nothing here, but out-of-range floats may be written as NaN/Infinity
        return
    _check_outcome(folder, original, False)


def test_the_fuzz_reference_loads(valid: tuple[Path, dict]) -> None:
    """Sanity for the property above: the unmutated checkpoint loads into the same weights."""
    _check_outcome(valid[0], valid[1], True)

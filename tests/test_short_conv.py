"""GLA's short causal convolution (docs/design.md §3.2): the op against a plain loop, the mixer contract with
a carried buffer (pieces of any length, even shorter than the kernel), per-architecture defaults for
new models and legacy defaults for older checkpoints (docs/design.md §3.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.config import LEGACY_DEFAULTS, NEW_MODEL_DEFAULTS
from glactl.models.gla import GatedLinearAttention
from glactl.ops.conv import causal_conv, causal_conv_step, conv_buffer
from glactl.storage.checkpoint import load_model, save_model

KERNEL = 4


def naive_conv(x: torch.Tensor, weight: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """y_t[c] = sum_i w[c, i] x_{t - (W - 1) + i}[c], inputs before the start read from the buffer, one loop."""
    history = torch.cat([buffer, x], dim=1)
    width = weight.shape[1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(width):
            out[:, t] += weight[:, i] * history[:, t + i]
    return out


def split(x: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < x.shape[1]}), x.shape[1]]
    return [x[:, a:b] for a, b in zip(bounds, bounds[1:])]


def tiny_gla(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> LanguageModel:
    """A tiny GLA model with short_conv=4; random gate biases and a larger conv, so both matter."""
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.tiny(mixer="gla", short_conv=KERNEL, **overrides))
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.gate_proj.bias, std=20.0)
        torch.nn.init.normal_(block.mixer.conv_weight, std=1.0)
    return model.to(dtype).eval()


def model_pieces(model: LanguageModel, idx: torch.Tensor, cuts: list[int], state=None) -> tuple[torch.Tensor, object]:
    outputs = []
    for piece in split(idx, cuts):
        logits, state = model(piece, state)
        outputs.append(logits)
    return torch.cat(outputs, dim=1), state


def model_steps(model: LanguageModel, idx: torch.Tensor, state=None) -> tuple[torch.Tensor, object]:
    state = model.init_state(idx.shape[0]) if state is None else state
    outputs = []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1), state


# ---- the op ----------------------------------------------------------------------------------
@settings(deadline=None, max_examples=30)
@given(
    length=st.integers(1, 12),
    width=st.integers(2, 6),
    cuts=st.lists(st.integers(1, 11), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_conv_op_matches_the_naive_loop_in_one_call_pieces_and_steps(
    length: int, width: int, cuts: list[int], seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(5, width, generator=g, dtype=torch.float64)
    buffer = torch.randn(2, width - 1, 5, generator=g, dtype=torch.float64)
    reference = naive_conv(x, weight, buffer)
    full, final = causal_conv(x, weight, buffer)
    assert rel_err(full, reference) < 1e-12
    assert torch.equal(final, torch.cat([buffer, x], dim=1)[:, -(width - 1) :])
    pieces, carried = [], buffer
    for piece in split(x, cuts):
        y, carried = causal_conv(piece, weight, carried)
        pieces.append(y)
    assert rel_err(torch.cat(pieces, dim=1), reference) < 1e-12 and torch.equal(carried, final)
    steps, carried = [], buffer
    for t in range(length):
        y, carried = causal_conv_step(x[:, t], weight, carried)
        steps.append(y)
    assert rel_err(torch.stack(steps, dim=1), reference) < 1e-12 and torch.equal(carried, final)


def test_conv_op_fresh_buffer_is_zeros_and_causal() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 9, 3, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y, _ = causal_conv(x, weight)
    assert torch.equal(y, causal_conv(x, weight, conv_buffer(1, 4, 3, dtype=torch.float64))[0])
    changed = x.clone()
    changed[:, 5:] += 1.0
    y2, _ = causal_conv(changed, weight)
    assert torch.equal(y[:, :5], y2[:, :5]) and not torch.equal(y[:, 5:], y2[:, 5:])


# ---- the GLA mixer with short_conv=4 ---------------------------------------------------------
@torch.no_grad()
def test_gla_short_conv_one_call_pieces_and_steps_agree_float64() -> None:
    model = tiny_gla()
    idx = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(2))
    full, state = model(idx)
    # Pieces of 1, 2 and 3 tokens (shorter than the kernel) around a chunk boundary, then longer ones.
    pieces, state_pieces = model_pieces(model, idx, [1, 3, 4, 6, 9, 63, 64, 66, 129])
    assert rel_err(pieces, full) < 1e-10
    steps, state_steps = model_steps(model, idx)
    assert rel_err(steps, full) < 1e-10
    for layer, layer_pieces, layer_steps in zip(state, state_pieces, state_steps):
        for name in ("S", "conv"):
            assert rel_err(layer_pieces[name], layer[name]) < 1e-10 and rel_err(layer_steps[name], layer[name]) < 1e-10


@torch.no_grad()
@pytest.mark.parametrize("length", [1, 2, 3, 70])
def test_gla_short_conv_float32_matches_float64_reference(length: int) -> None:
    reference, model = tiny_gla(torch.float64), tiny_gla(torch.float32)
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, 256, (2, 5), generator=g)
    idx = torch.randint(0, 256, (2, length), generator=g)
    _, ref_state = reference(prefix)
    ref, _ = reference(idx, ref_state)
    _, state = model(prefix)
    assert rel_err(model(idx, state)[0], ref) < 1e-5
    assert rel_err(model_pieces(model, idx, [1, 2], state)[0], ref) < 1e-5
    assert rel_err(model_steps(model, idx, state)[0], ref) < 1e-5


@settings(deadline=None, max_examples=20)
@given(
    batch=st.integers(1, 2),
    length=st.integers(1, 100),
    cuts=st.lists(st.integers(1, 99), max_size=6),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_property_gla_short_conv_split_points_do_not_change_logits(
    batch: int, length: int, cuts: list[int], seed: int
) -> None:
    model = tiny_gla(seed=seed % 5)
    idx = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))
    full, state = model(idx)
    pieces, state_pieces = model_pieces(model, idx, cuts)
    assert rel_err(pieces, full) < 1e-10
    for layer, layer_pieces in zip(state, state_pieces):
        assert rel_err(layer_pieces["conv"], layer["conv"]) < 1e-10 and rel_err(layer_pieces["S"], layer["S"]) < 1e-10


@torch.no_grad()
def test_gla_short_conv_state_is_fixed_size_batch_first_and_zero_at_start() -> None:
    model = tiny_gla(torch.float32)
    mixer = model.blocks[0].mixer
    fresh = model.init_state(3)
    assert fresh[0]["conv"].shape == (3, KERNEL - 1, 2 * mixer.key_dim + mixer.value_dim)
    assert fresh[0]["S"].shape[0] == 3 and not fresh[0]["conv"].any()
    g = torch.Generator().manual_seed(4)
    _, state_10 = model(torch.randint(0, 256, (1, 10), generator=g))
    _, state_1000 = model(torch.randint(0, 256, (1, 1000), generator=g))
    assert model.state_nbytes(state_10) == model.state_nbytes(state_1000) == model.state_nbytes(model.init_state(1)) > 0
    _, state_step = model.step(torch.tensor([5]), state_1000)
    assert model.state_nbytes(state_step) == model.state_nbytes(state_10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, 256, (2, 20), generator=g))
    assert all(t.dtype == torch.float32 for layer in state for t in layer.values())
    assert torch.isfinite(logits.float()).all()


def test_gla_short_conv_weights_and_the_off_switch() -> None:
    on = GatedLinearAttention(ModelConfig.tiny(mixer="gla", short_conv=KERNEL), 0)
    assert on.conv_weight.shape == (2 * on.key_dim + on.value_dim, KERNEL)
    assert on.conv_weight.abs().max() <= KERNEL**-0.5 and on.conv_weight.std() > 0
    off = GatedLinearAttention(ModelConfig.tiny(mixer="gla", short_conv=0), 0)
    assert not hasattr(off, "conv_weight")
    state = off.init_state(2)
    assert isinstance(state, torch.Tensor) and state.shape == (2, off.n_heads, off.head_k, off.head_v)
    y, state = off(torch.randn(2, 5, 128), state)
    assert isinstance(state, torch.Tensor)


# ---- config: new-model defaults, bounds, refusals ----------------------------------------------
def test_new_model_defaults_are_per_architecture_and_resolved() -> None:
    gla_default = NEW_MODEL_DEFAULTS["short_conv"].get("gla", 0)
    assert ModelConfig(mixer="gla").short_conv == ModelConfig.small(mixer="gla").short_conv == gla_default
    assert ModelConfig.preset("tiny").short_conv == gla_default
    assert ModelConfig.to_dict(ModelConfig(mixer="gla"))["short_conv"] == gla_default
    assert ModelConfig(mixer="transformer").short_conv == 0 and ModelConfig(mixer="mingru").performer_rope is False
    rope_default = NEW_MODEL_DEFAULTS["performer_rope"].get("performer", False)
    assert ModelConfig.tiny(mixer="performer").performer_rope is rope_default
    assert ModelConfig.tiny(mixer="performer", performer_rope=False).performer_rope is False
    config = ModelConfig.tiny(mixer="gla", short_conv=8)
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "fields",
    [
        {"mixer": "transformer", "short_conv": 4},
        {"mixer": "performer", "short_conv": 2},
        {"mixer": "gla", "short_conv": 1},
        {"mixer": "gla", "short_conv": 65},
        {"mixer": "gla", "short_conv": -4},
        {"mixer": "gla", "short_conv": True},
        {"mixer": "gla", "short_conv": 4.0},
        {"mixer": "gla", "short_conv": None},
        {"mixer": "gla", "performer_rope": True},
        {"mixer": "performer", "performer_rope": 1},
    ],
)
def test_bad_short_conv_and_performer_rope_are_input_errors(fields: dict) -> None:
    with pytest.raises(InputError):
        ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), **fields})


def test_transformer_refuses_short_conv_with_a_clear_message() -> None:
    with pytest.raises(InputError, match="short_conv is not supported by the transformer model"):
        LanguageModel(ModelConfig.tiny(mixer="transformer", short_conv=4))


# ---- older checkpoints (item 4) --------------------------------------------------------------
def _save_in_todays_format(model: LanguageModel, folder: Path) -> None:
    """Save, then drop the fields that checkpoints written without the short convolution do not have."""
    save_model(folder, model)
    path = folder / "config.json"
    document = json.loads(path.read_text())
    for name in LEGACY_DEFAULTS:
        del document["architecture"][name]
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("mixer", ["gla", "performer"])
@torch.no_grad()
def test_checkpoint_without_the_new_fields_loads_and_scores_exactly_as_before(mixer: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    old = LanguageModel(ModelConfig.tiny(mixer=mixer, **LEGACY_DEFAULTS)).eval()
    _save_in_todays_format(old, tmp_path / "old")
    assert "short_conv" not in json.loads((tmp_path / "old" / "config.json").read_text())["architecture"]
    loaded, _ = load_model(tmp_path / "old")
    assert loaded.config.short_conv == 0 and loaded.config.performer_rope is False
    idx = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(6))
    assert torch.equal(loaded(idx)[0], old(idx)[0])
    state = loaded.init_state(2)
    assert all(isinstance(s, torch.Tensor) if mixer == "gla" else "pos" not in s for s in state)
    if mixer == "performer":
        # The same weights with rotary positions (the new-model default) would score differently.
        rotated = LanguageModel(ModelConfig.tiny(mixer=mixer, performer_rope=True)).eval()
        rotated.load_state_dict(old.state_dict())
        assert not torch.allclose(rotated(idx)[0], old(idx)[0])

"""LSTM and GRU mixers (docs/design.md §3.8): the equations written out, the mixer contract, float32 states
outside autocast, constant state size, registry entries."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.models import LanguageModel, ModelConfig
from glactl.models.registry import MIXERS, default_lr, mixer_class
from glactl.models.rnn import GRU, LSTM

KINDS = ("lstm", "gru")


def tiny_model(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig.tiny(mixer=kind)).to(dtype).eval()


def tiny_mixer(kind: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> LSTM | GRU:
    """A lone mixer with larger weights, so gates saturate in places and the state carries a lot."""
    torch.manual_seed(seed)
    mixer = mixer_class(kind)(ModelConfig.tiny(mixer=kind, d_model=32, n_heads=2), 0)
    for weight in mixer.rnn.parameters():
        torch.nn.init.normal_(weight, std=0.4)
    return mixer.to(dtype).eval()


def reference(mixer: LSTM | GRU, x: torch.Tensor) -> torch.Tensor:
    """The LSTM / GRU equations from a zero state, one token at a time, then out_proj."""
    rnn = mixer.rnn
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    h = torch.zeros(x.shape[0], mixer.hidden_dim, dtype=x.dtype)
    c = torch.zeros_like(h)
    outputs = []
    for t in range(x.shape[1]):
        gx, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if isinstance(mixer, LSTM):
            i, f, g, o = (gx + gh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        else:
            (rx, zx, nx), (rh, zh, nh) = gx.chunk(3, dim=-1), gh.chunk(3, dim=-1)
            r, z = torch.sigmoid(rx + rh), torch.sigmoid(zx + zh)
            n = torch.tanh(nx + r * nh)
            h = (1 - z) * n + z * h
        outputs.append(h)
    return mixer.out_proj(torch.stack(outputs, dim=1))


def pieces(module, x: torch.Tensor, cuts: list[int], state=None) -> tuple[torch.Tensor, object]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < x.shape[1]}), x.shape[1]]
    outputs = []
    for a, b in zip(bounds, bounds[1:]):
        y, state = module(x[:, a:b], state)
        outputs.append(y)
    return torch.cat(outputs, dim=1), state


def steps(module, x: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    outputs = []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_mixer_matches_the_equations(kind: str) -> None:
    mixer = tiny_mixer(kind)
    x = torch.randn(2, 40, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rel_err(mixer(x)[0], reference(mixer, x)) < 1e-12


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_mixer_one_call_pieces_steps_agree_float64_and_float32(kind: str) -> None:
    mixer = tiny_mixer(kind)
    x = torch.randn(2, 120, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full, state = mixer(x)
    assert set(state) == ({"h", "c"} if kind == "lstm" else {"h"})
    got, state_pieces = pieces(mixer, x, [1, 2, 5, 64, 100])
    assert rel_err(got, full) < 1e-10
    got, state_steps = steps(mixer, x, mixer.init_state(2, dtype=torch.float64))
    assert rel_err(got, full) < 1e-10
    for name in state:
        assert rel_err(state_pieces[name], state[name]) < 1e-10 and rel_err(state_steps[name], state[name]) < 1e-10
    mixer32 = tiny_mixer(kind, torch.float32)
    assert rel_err(mixer32(x.float())[0], full) < 1e-5
    assert rel_err(pieces(mixer32, x.float(), [7, 50])[0], full) < 1e-5
    assert rel_err(steps(mixer32, x.float(), mixer32.init_state(2))[0], full) < 1e-5


@pytest.mark.slow
@settings(deadline=None, max_examples=10)
@given(length=st.integers(1, 100), cuts=st.lists(st.integers(1, 99), max_size=5), seed=st.integers(0, 2**16))
@torch.no_grad()
def test_property_model_split_points_do_not_change_logits(length: int, cuts: list[int], seed: int) -> None:
    for kind in KINDS:
        model = tiny_model(kind, seed=seed % 3)
        idx = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(seed))
        full, _ = model(idx)
        assert rel_err(pieces(model, idx, cuts)[0], full) < 1e-10
        assert rel_err(steps(model, idx, model.init_state(2))[0], full) < 1e-10


@torch.no_grad()
@pytest.mark.parametrize("kind", KINDS)
def test_model_float32_matches_float64_and_state_size_is_constant(kind: str) -> None:
    reference_model, model = tiny_model(kind), tiny_model(kind, torch.float32)
    idx = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(3))
    ref, _ = reference_model(idx)
    assert rel_err(model(idx)[0], ref) < 1e-5
    assert rel_err(pieces(model, idx, [30])[0], ref) < 1e-5
    assert rel_err(steps(model, idx, model.init_state(2))[0], ref) < 1e-5
    g = torch.Generator().manual_seed(4)
    _, state_10 = model(torch.randint(0, 256, (1, 10), generator=g))
    _, state_1000 = model(torch.randint(0, 256, (1, 1000), generator=g))
    assert model.state_nbytes(state_10) == model.state_nbytes(state_1000) == model.state_nbytes(model.init_state(1)) > 0
    _, state_step = model.step(torch.tensor([5]), state_1000)
    assert model.state_nbytes(state_step) == model.state_nbytes(state_10)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_autocast_keeps_float32_states_and_trains(kind: str) -> None:
    model = tiny_model(kind, torch.float32)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, 256, (2, 30)))
        _, stepped = model.step(torch.tensor([1, 2]), state)
    for layer in (*state, *stepped):
        assert all(t.dtype == torch.float32 and t.shape == (2, 128) for t in layer.values())
    assert torch.isfinite(logits.float()).all()
    logits.float().mean().backward()
    assert model.blocks[0].mixer.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_registered_with_learning_rates_and_residual_init() -> None:
    assert mixer_class("lstm") is LSTM and mixer_class("gru") is GRU and {"lstm", "gru"} <= set(MIXERS)
    assert default_lr("lstm") > 0 and default_lr("gru") > 0
    model = tiny_model("lstm", torch.float32)
    mixer = model.blocks[0].mixer
    assert mixer.rnn.num_layers == 1 and mixer.rnn.batch_first and mixer.rnn.hidden_size == 128
    # out_proj gets the residual init of lm.py (std 0.02 / sqrt(2 n_layers)); the LSTM keeps PyTorch's.
    assert mixer.out_proj.weight.std() < 0.015
    assert mixer.rnn.weight_hh_l0.abs().max() <= 128**-0.5

"""minGRU / minLSTM: the log-space scan against a plain loop, and the mixer contract (docs/design.md §3.1, 3.7)."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.models import LanguageModel, ModelConfig
from glactl.models.mingru import MinGRU, MinLSTM, inner_dim
from glactl.models.registry import MIXERS, default_lr, mixer_class
from glactl.ops.scan import (
    log_g,
    mingru_gates,
    minlstm_gates,
    scan_parallel,
    scan_recurrent,
    scan_step,
)

KINDS = ("mingru", "minlstm")
LENGTH = 150  # spans several rebasing chunks


def _g(x: torch.Tensor) -> torch.Tensor:
    """g straight from its definition: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def _coefficients(
    kind: str, batch: int, length: int, dim: int, scale: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log a, log b of one of the two models from random pre-activations."""
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(3, batch, length, dim, generator=gen, dtype=torch.float64) * scale
    if kind == "mingru":
        return mingru_gates(pre[0], pre[1])
    return minlstm_gates(pre[0], pre[1], pre[2])


def _split(tensor: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    """Pieces of `tensor` along dim 1 at the sorted, distinct cut points."""
    bounds = [0, *sorted(set(cuts)), tensor.shape[1]]
    return [tensor[:, a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# ---- gates ---------------------------------------------------------------------------------
def test_log_g_matches_g_and_has_finite_gradients() -> None:
    x = torch.linspace(-40, 40, 2001, dtype=torch.float64)
    x = torch.cat([x, torch.tensor([0.0, -0.5, -1e-300, 1e4], dtype=torch.float64)]).requires_grad_()
    value = log_g(x)
    assert torch.allclose(value.exp(), _g(x.detach()), rtol=1e-13, atol=0)
    value.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad > 0).all()  # g is increasing


def test_gates_match_their_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    k, f, u = torch.randn(3, 500, generator=gen, dtype=torch.float64) * 4
    log_a, log_b = mingru_gates(k, u)
    z = torch.sigmoid(k)
    assert torch.allclose(log_a.exp(), 1 - z, rtol=1e-12)
    assert torch.allclose(log_b.exp(), z * _g(u), rtol=1e-12)
    log_a, log_b = minlstm_gates(f, k, u)
    forget, input_ = torch.sigmoid(f), torch.sigmoid(k)
    assert torch.allclose(log_a.exp(), forget / (forget + input_), rtol=1e-12)
    assert torch.allclose(log_b.exp(), input_ / (forget + input_) * _g(u), rtol=1e-12)


# ---- the scan ------------------------------------------------------------------------------
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("length", [1, 63, 64, 65, 1000, 4096])
def test_parallel_scan_matches_loop(length: int, with_h0: bool) -> None:
    for seed, kind in enumerate(KINDS):
        log_a, log_b = _coefficients(kind, 2, length, 16, scale=2.0, seed=seed + length)
        h0 = torch.rand(2, 16, dtype=torch.float64) * 3 + 0.05 if with_h0 else None
        ref, ref_last = scan_recurrent(log_a, log_b, h0)
        for chunk_size in (16, 64):
            out, last = scan_parallel(log_a, log_b, h0, chunk_size=chunk_size)
            assert out.dtype == torch.float64 and out.shape == ref.shape
            assert rel_err(out, ref) < 1e-10
            assert rel_err(last, ref_last) < 1e-10
        out32, last32 = scan_parallel(log_a.float(), log_b.float(), None if h0 is None else h0.float())
        assert out32.dtype == torch.float32
        assert rel_err(out32, ref) < 1e-5
        assert rel_err(last32, ref_last) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_step_matches_loop_with_and_without_h0(kind: str) -> None:
    log_a, log_b = _coefficients(kind, 3, 200, 8, scale=2.0, seed=7)
    for h0 in (None, torch.rand(3, 8, dtype=torch.float64) + 0.1):
        ref, _ = scan_recurrent(log_a, log_b, h0)
        h, outs = h0, []
        for t in range(log_a.shape[1]):
            h = scan_step(log_a[:, t], log_b[:, t], h)
            outs.append(h)
        assert rel_err(torch.stack(outs, dim=1), ref) < 1e-10


def test_zero_state_is_no_h0_term() -> None:
    """A zero state (init_state) gives exactly what no state gives, with finite gradients."""
    log_a, log_b = _coefficients("mingru", 2, 100, 8, scale=1.0, seed=3)
    zero = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)
    fresh, _ = scan_parallel(log_a, log_b, None)
    from_zero, _ = scan_parallel(log_a, log_b, zero)
    assert torch.equal(fresh, from_zero)
    assert torch.equal(scan_step(log_a[:, 0], log_b[:, 0], None), scan_step(log_a[:, 0], log_b[:, 0], zero))
    from_zero.sum().backward()
    assert torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_gradients_finite_with_extreme_gates(kind: str, with_h0: bool) -> None:
    gen = torch.Generator().manual_seed(11)
    pre = (torch.randint(0, 2, (3, 2, 2048, 8), generator=gen) * 60.0 - 30.0).requires_grad_()
    h0 = (torch.rand(2, 8, generator=gen) + 0.1).requires_grad_() if with_h0 else None
    log_a, log_b = mingru_gates(pre[0], pre[1]) if kind == "mingru" else minlstm_gates(pre[0], pre[1], pre[2])
    out, last = scan_parallel(log_a, log_b, h0)
    assert torch.isfinite(out).all() and (out >= 0).all()
    weights = torch.randn(out.shape, generator=gen)
    ((out * weights).sum() + last.sum()).backward()
    assert torch.isfinite(pre.grad).all()
    assert pre.grad.abs().sum() > 0
    if with_h0:
        assert torch.isfinite(h0.grad).all()


# ---- the mixers ----------------------------------------------------------------------------
def test_registry_and_shapes() -> None:
    assert mixer_class("mingru") is MinGRU and mixer_class("minlstm") is MinLSTM
    assert {"mingru", "minlstm"} <= set(MIXERS)
    assert default_lr("mingru") > 0 and default_lr("minlstm") > 0
    assert inner_dim(128, 1.5) == 192 and inner_dim(256, 1.5) == 384 and inner_dim(100, 1.5) % 8 == 0
    config = ModelConfig.tiny(mixer="minlstm")
    mixer = MinLSTM(config, 0)
    assert mixer.in_proj.out_features == 3 * 192 and mixer.out_proj.in_features == 192
    assert mixer.out_proj.out_features == config.d_model


@cache
def _mixer_case(kind: str) -> tuple:
    """A float64 mixer, its float32 twin, an input, and the one-call and token-by-token outputs."""
    torch.manual_seed(5)
    config = ModelConfig.tiny(mixer=kind)
    mixer64 = mixer_class(kind)(config, 0).double()
    mixer32 = copy.deepcopy(mixer64).float()
    x = torch.randn(2, LENGTH, config.d_model, dtype=torch.float64)
    with torch.no_grad():
        full, last = mixer64(x, None)
        state, outs = mixer64.init_state(2, dtype=torch.float64), []
        for t in range(LENGTH):
            y, state = mixer64.step(x[:, t], state)
            outs.append(y)
    return mixer64, mixer32, x, full, last, torch.stack(outs, dim=1), state


def _run_pieces(
    module: torch.nn.Module, x: torch.Tensor, cuts: list[int], state: object
) -> tuple[torch.Tensor, object]:
    outs = []
    for piece in _split(x, cuts):
        y, state = module(piece, state)
        outs.append(y)
    return torch.cat(outs, dim=1), state


@pytest.mark.parametrize("kind", KINDS)
def test_mixer_one_call_equals_steps(kind: str) -> None:
    mixer64, mixer32, x, full, last, stepped, step_state = _mixer_case(kind)
    assert rel_err(stepped, full) < 1e-10
    assert rel_err(step_state, last) < 1e-10
    assert last.dtype == torch.float64 and last.shape == (2, mixer64.inner_dim)
    with torch.no_grad():
        full32, last32 = mixer32(x.float(), None)
        state, outs = mixer32.init_state(2, dtype=torch.float32), []
        for t in range(LENGTH):
            y, state = mixer32.step(x[:, t].float(), state)
            outs.append(y)
    assert last32.dtype == torch.float32
    assert rel_err(full32, full) < 1e-5
    assert rel_err(torch.stack(outs, dim=1), full) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
@settings(deadline=None, max_examples=8)
@given(cuts=st.lists(st.integers(1, LENGTH - 1), max_size=5), fresh_none=st.booleans())
def test_mixer_pieces_equal_one_call(kind: str, cuts: list[int], fresh_none: bool) -> None:
    mixer64, mixer32, x, full, last, _, _ = _mixer_case(kind)
    with torch.no_grad():
        start64 = None if fresh_none else mixer64.init_state(2, dtype=torch.float64)
        pieces, state = _run_pieces(mixer64, x, cuts, start64)
        start32 = None if fresh_none else mixer32.init_state(2, dtype=torch.float32)
        pieces32, _ = _run_pieces(mixer32, x.float(), cuts, start32)
    assert rel_err(pieces, full) < 1e-10
    assert rel_err(state, last) < 1e-10
    assert rel_err(pieces32, full) < 1e-5


def test_mixer_low_precision_input_keeps_float32_state() -> None:
    mixer = MinGRU(ModelConfig.tiny(mixer="mingru"), 0).to(torch.bfloat16)
    x = torch.randn(2, 20, 128, dtype=torch.bfloat16)
    y, state = mixer(x, None)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    y_t, state = mixer.step(x[:, 0], state)
    assert y_t.dtype == torch.bfloat16 and state.dtype == torch.float32
    assert mixer.init_state(2, dtype=torch.bfloat16).dtype == torch.float32


@cache
def _model_case(kind: str) -> tuple:
    """A float64 tiny LanguageModel, its float32 twin, tokens, and the one-call and stepped logits."""
    torch.manual_seed(9)
    model64 = LanguageModel(ModelConfig.tiny(mixer=kind)).double()
    model32 = copy.deepcopy(model64).float()
    idx = torch.randint(0, 256, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model64(idx)
        state, outs = model64.init_state(2), []
        for t in range(LENGTH):
            logits, state = model64.step(idx[:, t], state)
            outs.append(logits)
    return model64, model32, idx, full, torch.stack(outs, dim=1)


@pytest.mark.parametrize("kind", KINDS)
def test_model_one_call_equals_steps(kind: str) -> None:
    model64, model32, idx, full, stepped = _model_case(kind)
    assert rel_err(stepped, full) < 1e-10
    with torch.no_grad():
        full32, _ = model32(idx)
        state, outs = None, []
        for t in range(LENGTH):
            logits, state = model32.step(idx[:, t], state)
            outs.append(logits)
    assert rel_err(full32, full) < 1e-5
    assert rel_err(torch.stack(outs, dim=1), full) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
@settings(deadline=None, max_examples=6)
@given(cuts=st.lists(st.integers(1, LENGTH - 1), max_size=5))
def test_model_pieces_equal_one_call(kind: str, cuts: list[int]) -> None:
    model64, model32, idx, full, _ = _model_case(kind)
    with torch.no_grad():
        pieces, _ = _run_pieces(model64, idx, cuts, None)
        pieces32, _ = _run_pieces(model32, idx, cuts, None)
    assert rel_err(pieces, full) < 1e-10
    assert rel_err(pieces32, full) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_state_bytes_constant(kind: str) -> None:
    model = LanguageModel(ModelConfig.tiny(mixer=kind))
    fresh = model.init_state(1)
    expected = model.config.n_layers * inner_dim(model.config.d_model, model.config.rnn_expansion) * 4
    assert model.state_nbytes(fresh) == expected
    with torch.no_grad():
        _, short = model(torch.randint(0, 256, (1, 10)))
        _, long = model(torch.randint(0, 256, (1, 1000)))
        _, stepped = model.step(torch.tensor([65]), long)
    assert model.state_nbytes(short) == model.state_nbytes(long) == model.state_nbytes(stepped) == expected
    assert all(s.dtype == torch.float32 and s.shape == fresh[0].shape for s in long)

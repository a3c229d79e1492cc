"""The three GLA forms (ops/gla.py) agree: chunk vs recurrent vs step, values, states and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err

from glactl.ops.gla import MIN_LOG_GATE, gate_log, gla_chunk, gla_quadratic, gla_recurrent, gla_step

B, H, K, V = 2, 2, 8, 12


def random_inputs(length: int, seed: int, gate_scale: float = 4.0, dtype: torch.dtype = torch.float64):
    """Fresh random q, k, v and log gates through the model's gate function (clamp included)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, length, K, generator=g, dtype=dtype)
    k = torch.randn(B, H, length, K, generator=g, dtype=dtype)
    v = torch.randn(B, H, length, V, generator=g, dtype=dtype)
    log_a = gate_log(gate_scale * torch.randn(B, H, length, K, generator=g, dtype=dtype)).to(dtype)
    s0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, log_a, s0


def step_loop(q, k, v, log_a, state):
    outs = []
    for t in range(q.shape[2]):
        o, state = gla_step(q[:, :, t], k[:, :, t], v[:, :, t], log_a[:, :, t], state)
        outs.append(o)
    return torch.stack(outs, dim=2), state


@pytest.mark.parametrize("length", [1, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_and_step_match_recurrent_float64(length: int, with_state: bool) -> None:
    q, k, v, log_a, s0 = random_inputs(length, seed=length + 7 * with_state)
    init = s0 if with_state else None
    ref_o, ref_s = gla_recurrent(q, k, v, log_a, init)
    for form in (gla_chunk, step_loop):
        o, s = form(q, k, v, log_a, init)
        assert o.dtype == torch.float64 and s.dtype == torch.float64
        assert rel_err(o, ref_o) < 1e-10
        assert rel_err(s, ref_s) < 1e-10


@pytest.mark.parametrize("length", [1, 63, 64, 65, 200, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_float32_forms_match_float64_reference(length: int, with_state: bool) -> None:
    q, k, v, log_a, s0 = random_inputs(length, seed=100 + length + with_state)
    init = s0 if with_state else None
    ref_o, ref_s = gla_recurrent(q, k, v, log_a, init)
    args32 = [t.float() for t in (q, k, v, log_a)]
    init32 = init.float() if init is not None else None
    for form in (gla_chunk, gla_recurrent, step_loop):
        o, s = form(*args32, init32)
        assert s.dtype == torch.float32
        assert rel_err(o, ref_o) < 1e-5
        assert rel_err(s, ref_s) < 1e-5


def test_chunk_sizes_other_than_default_agree() -> None:
    q, k, v, log_a, s0 = random_inputs(150, seed=3)
    ref_o, ref_s = gla_recurrent(q, k, v, log_a, s0)
    for chunk, sub in ((16, 16), (32, 16), (128, 16), (64, 32)):
        o, s = gla_chunk(q, k, v, log_a, s0, chunk_size=chunk, sub_chunk=sub)
        assert rel_err(o, ref_o) < 1e-10 and rel_err(s, ref_s) < 1e-10


@pytest.mark.parametrize("length", [65, 130])
def test_gradients_chunk_match_recurrent_float64(length: int) -> None:
    inputs = random_inputs(length, seed=11)
    grads = []
    for form in (gla_recurrent, gla_chunk):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        q, k, v, log_a, s0 = leaves
        o, s = form(q, k, v, log_a, s0)
        weight_o = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
        weight_s = torch.linspace(1, -1, s.numel(), dtype=s.dtype).reshape(s.shape)
        ((o * weight_o).sum() + (s * weight_s).sum()).backward()
        grads.append([t.grad for t in leaves])
    for g_chunk, g_ref, name in zip(grads[1], grads[0], ["q", "k", "v", "log_a", "state"]):
        assert rel_err(g_chunk, g_ref) < 1e-10, name


@pytest.mark.parametrize("pre_activation", [-30.0, 30.0, -1000.0])
def test_extreme_gates_stay_finite_and_accurate(pre_activation: float) -> None:
    """Strongest and weakest gates the model can produce, 8192 tokens, float32 vs float64 reference."""
    length = 8192
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, length, K, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, length, K, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, length, V, generator=g, dtype=torch.float64)
    pre = torch.full((1, 2, length, K), pre_activation, dtype=torch.float64)
    pre[..., ::3] = -pre_activation if pre_activation != -1000.0 else 0.0  # mix strong and weak channels
    log_a = gate_log(pre).double()
    assert log_a.min() >= MIN_LOG_GATE
    ref_o, ref_s = gla_recurrent(q, k, v, log_a)
    o, s = gla_chunk(q.float(), k.float(), v.float(), log_a.float())
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel_err(o, ref_o) < 1e-4
    assert rel_err(s, ref_s) < 1e-4


def test_chunk_form_backward_finite_with_strongest_gates() -> None:
    q, k, v, _, _ = random_inputs(256, seed=9, dtype=torch.float32)
    log_a = gate_log(torch.full((B, H, 256, K), -1e4)).requires_grad_(True)
    q.requires_grad_(True)
    o, s = gla_chunk(q, k, v, log_a)
    (o.sum() + s.sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(log_a.grad).all()


def test_gate_log_is_bounded_and_non_positive() -> None:
    x = torch.linspace(-1e4, 1e4, 1001)
    log_a = gate_log(x)
    assert (log_a <= 0).all() and (log_a >= MIN_LOG_GATE).all()
    assert gate_log(torch.tensor([-30.0])).item() == pytest.approx(-30.0 / 16, rel=1e-6)


def test_quadratic_form_matches_recurrent() -> None:
    q, k, v, log_a, _ = random_inputs(100, seed=21)
    ref_o, _ = gla_recurrent(q, k, v, log_a)
    assert rel_err(gla_quadratic(q, k, v, log_a), ref_o) < 1e-10


def test_model_runs_shorter_chunks_without_autograd_on_cpu_with_the_same_logits() -> None:
    from glactl.models import LanguageModel, ModelConfig
    from glactl.ops.gla import INFERENCE_CHUNK_SIZE

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(mixer="gla", d_model=32, n_layers=2, n_heads=2, chunk_size=64)).double()
    mixer = model.blocks[0].mixer
    tokens = torch.randint(0, 256, (2, 150))
    q = torch.zeros(1, dtype=torch.float64)
    with torch.no_grad():
        assert mixer._chunk_length(q) == INFERENCE_CHUNK_SIZE < 64  # scoring, prefill: the faster schedule
        fast, fast_state = model(tokens)
    assert mixer._chunk_length(q) == 64  # training keeps the configured chunk
    trained, trained_state = model(tokens)
    assert rel_err(fast, trained.detach()) < 1e-12
    for a, b in zip(fast_state, trained_state):
        torch.testing.assert_close(a, b.detach() if torch.is_tensor(b) else b, rtol=1e-12, atol=1e-12)

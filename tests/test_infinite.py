"""infinity-former: continuous memory math, one call == pieces == steps, bounded state, detached memory."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.infinite import InfinityFormer
from glactl.ops.continuous_memory import (
    continuous_attention,
    evaluate_memory,
    memory_matrices,
    midpoints,
    rbf_basis,
    refit_memory,
)

SMALL = {"infinite_segment": 8, "infinite_basis": 16, "infinite_samples": 12}


def tiny_mixer(dtype: torch.dtype = torch.float64, seed: int = 0) -> InfinityFormer:
    """A lone mixer with W_s = 8 and random memory-attention weights, so the long-term term matters."""
    torch.manual_seed(seed)
    mixer = InfinityFormer(ModelConfig.tiny(mixer="infinite", **SMALL), 0)
    torch.nn.init.normal_(mixer.qkv_proj.weight, std=0.1)
    torch.nn.init.normal_(mixer.out_proj.weight, std=0.1)
    torch.nn.init.normal_(mixer.w_mu, std=1.0)
    torch.nn.init.normal_(mixer.w_sigma, std=1.0)
    return mixer.to(dtype).eval()


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.tiny(mixer="infinite", **SMALL))
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.w_mu, std=1.0)
        torch.nn.init.normal_(block.mixer.w_sigma, std=1.0)
    return model.to(dtype).eval()


def run_pieces(module, x: torch.Tensor, cuts: list[int]):
    state, outputs, start = None, [], 0
    for end in [*sorted(set(cuts)), x.shape[1]]:
        if start < end:
            y, state = module(x[:, start:end], state)
            outputs.append(y)
            start = end
    return torch.cat(outputs, dim=1), state


def run_steps(module, x: torch.Tensor, state=None):
    state = (
        state
        if state is not None
        else module.init_state(x.shape[0], x.device, x.dtype if x.is_floating_point() else None)
    )
    outputs = []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1), state


# ---- the continuous memory (ops) -------------------------------------------------------------
def test_basis_has_two_widths_on_the_unit_interval() -> None:
    centers, widths = rbf_basis(64)
    assert centers.shape == widths.shape == (64,)
    assert (widths == 0.01).sum() == 32 and (widths == 0.05).sum() == 32
    assert centers.min() == 0.0 and centers.max() == 1.0


def test_ridge_fit_reproduces_a_smooth_signal() -> None:
    matrices = memory_matrices(64, 64, 128, 0.5, 0.5)
    t = midpoints(128)
    signal = torch.stack([torch.sin(2 * math.pi * t), 0.5 * torch.cos(6 * math.pi * t) + t], dim=-1)  # [128, 2]
    coefficients = refit_memory(torch.zeros(64, 2, dtype=torch.float64), signal, matrices, empty=True)
    assert (evaluate_memory(coefficients, t, matrices) - signal).abs().max() < 0.03
    # A refit squeezes the old signal into [0, tau] and places the new states on [tau, 1]
    # (away from the junction at tau, where the two signals jump and no smooth fit can follow).
    new_signal = torch.cos(2 * math.pi * t).unsqueeze(-1).expand(128, 2)
    refit = refit_memory(coefficients, new_signal, matrices, empty=False)
    u = torch.linspace(0.05, 0.85, 50, dtype=torch.float64)
    old_part = evaluate_memory(refit, 0.5 * u, matrices) - evaluate_memory(coefficients, u, matrices)
    assert old_part.abs().max() < 0.05
    late = t > 0.15
    assert (evaluate_memory(refit, 0.5 + 0.5 * t[late], matrices) - new_signal[late]).abs().max() < 0.03


def test_repeated_refits_stay_bounded() -> None:
    matrices = memory_matrices(64, 64, 128, 0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    memory = refit_memory(
        torch.zeros(64, 4, dtype=torch.float64), torch.randn(128, 4, generator=g, dtype=torch.float64), matrices, True
    )
    for _ in range(200):
        memory = refit_memory(memory, torch.randn(128, 4, generator=g, dtype=torch.float64), matrices, False)
    assert memory.abs().max() < 10


def test_continuous_attention_matches_numerical_integration() -> None:
    g = torch.Generator().manual_seed(1)
    centers, widths = rbf_basis(16)
    mem_k = torch.randn(1, 2, 16, 4, generator=g, dtype=torch.float64)
    mem_v = torch.randn(1, 2, 16, 4, generator=g, dtype=torch.float64)
    q = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64)
    w_mu, w_sigma = (torch.randn(2, 16, generator=g, dtype=torch.float64) for _ in range(2))
    out = continuous_attention(q, mem_k, mem_v, w_mu, w_sigma, centers, widths)
    # Reference: integrate N(t; mu, sigma^2) * sum_j V_j psi_j(t) on a fine grid.
    scores = q @ mem_k.transpose(-1, -2) / 2.0
    mu = torch.sigmoid(torch.einsum("bhtn,hn->bht", scores, w_mu))
    var = torch.nn.functional.softplus(torch.einsum("bhtn,hn->bht", scores, w_sigma))
    t = torch.linspace(-8.0, 9.0, 100_001, dtype=torch.float64)
    psi = torch.exp(-0.5 * ((t[:, None] - centers) / widths) ** 2) / (widths * math.sqrt(2 * math.pi))  # [G, N]
    signal = torch.einsum("gn,bhnd->bhgd", psi, mem_v)
    density = torch.exp(-0.5 * (t - mu.unsqueeze(-1)) ** 2 / var.unsqueeze(-1)) / torch.sqrt(
        2 * math.pi * var.unsqueeze(-1)
    )
    reference = torch.einsum("bhtg,bhgd->bhtd", density, signal) * (t[1] - t[0])
    assert rel_err(out, reference) < 1e-6


# ---- the mixer contract ------------------------------------------------------------------------
@torch.no_grad()
def test_mixer_one_call_pieces_steps_agree() -> None:
    """Equivalence with the same segment boundaries (absolute positions, W_s = 8) in every form."""
    mixer = tiny_mixer()
    x = torch.randn(2, 70, 128, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full, state = mixer(x)
    pieces, state_pieces = run_pieces(mixer, x, [1, 3, 8, 9, 16, 31, 45])
    assert rel_err(pieces, full) < 1e-10
    steps, state_steps = run_steps(mixer, x)
    assert rel_err(steps, full) < 1e-10
    for other in (state_pieces, state_steps):
        assert other["pos"] == state["pos"] == 70
        for name in ("k", "v", "mem_k", "mem_v"):
            assert rel_err(other[name], state[name]) < 1e-10
    mixer32 = tiny_mixer(torch.float32)
    assert rel_err(mixer32(x.float())[0], full) < 1e-5
    assert rel_err(run_pieces(mixer32, x.float(), [5, 22])[0], full) < 1e-5
    assert rel_err(run_steps(mixer32, x.float())[0], full) < 1e-5


@torch.no_grad()
def test_model_one_call_pieces_steps_agree() -> None:
    """Through LanguageModel; equivalence with the same segment boundaries (W_s = 8) in every form."""
    model = tiny_model()
    idx = torch.randint(0, 256, (2, 60), generator=torch.Generator().manual_seed(3))
    full, _ = model(idx)
    assert rel_err(run_pieces(model, idx, [1, 8, 13, 40])[0], full) < 1e-10
    assert rel_err(run_steps(model, idx)[0], full) < 1e-10
    model32 = tiny_model(torch.float32)
    assert rel_err(model32(idx)[0], full) < 1e-5
    assert rel_err(run_pieces(model32, idx, [21])[0], full) < 1e-5
    assert rel_err(run_steps(model32, idx)[0], full) < 1e-5


@settings(deadline=None, max_examples=10)
@given(length=st.integers(1, 60), cuts=st.lists(st.integers(1, 59), max_size=4), seed=st.integers(0, 2**16))
@torch.no_grad()
def test_property_split_points_do_not_change_outputs(length: int, cuts: list[int], seed: int) -> None:
    """Random split points; equivalence with the same segment boundaries (W_s = 8) in both forms."""
    mixer = tiny_mixer(seed=seed % 3)
    x = torch.randn(1, length, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    full, state = mixer(x)
    pieces, state_pieces = run_pieces(mixer, x, [c for c in cuts if c < length])
    assert rel_err(pieces, full) < 1e-10
    assert state_pieces["pos"] == state["pos"] and state_pieces["k"].shape == state["k"].shape


@torch.no_grad()
def test_state_is_bounded() -> None:
    model = tiny_model(torch.float32)
    g = torch.Generator().manual_seed(4)
    _, state_3 = model(torch.randint(0, 256, (1, 3 * 8), generator=g))
    _, state_20 = model(torch.randint(0, 256, (1, 20 * 8), generator=g))
    assert model.state_nbytes(state_3) == model.state_nbytes(state_20) > 0
    # Between steps at most 2 W_s - 1 cached tokens plus N x Dh memory per head.
    mixer = model.blocks[0].mixer
    d, segment, basis, float_bytes = 128, 8, 16, 4
    bound = float_bytes * (2 * (2 * segment - 1) * d + 2 * basis * d)  # keys + values, memory keys + values
    state = state_20
    for t in range(20):
        _, state = model.step(torch.tensor([t]), state)
        assert all(mixer.state_nbytes(s) <= bound for s in state)
        assert all(s["k"].shape[2] < 2 * 8 for s in state)


def test_memory_is_detached_but_read() -> None:
    """Outputs of segment 2 depend on segment 0 only through the memory: they change with it, no gradient."""
    mixer = tiny_mixer(torch.float64)
    x = torch.randn(1, 24, 128, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    y, state = mixer(x)
    assert not state["mem_k"].requires_grad and not state["mem_v"].requires_grad
    y[:, 16:].sum().backward()
    assert torch.equal(x.grad[:, :8], torch.zeros_like(x.grad[:, :8]))
    assert x.grad[:, 8:].abs().sum() > 0
    assert mixer.w_mu.grad.abs().sum() > 0 and mixer.w_sigma.grad.abs().sum() > 0
    with torch.no_grad():
        changed = x.detach().clone()
        changed[:, :8] += 1.0
        assert not torch.allclose(mixer(changed)[0][:, 16:], y[:, 16:])


@torch.no_grad()
def test_memory_is_empty_for_the_first_two_segments() -> None:
    mixer = tiny_mixer()
    x = torch.randn(1, 30, 128, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    before, _ = mixer(x)
    mixer.w_mu.add_(1.0)
    after, _ = mixer(x)
    assert torch.equal(before[:, :16], after[:, :16])
    assert not torch.allclose(before[:, 16:], after[:, 16:])


def test_model_builds_on_meta_and_trains_under_autocast() -> None:
    with torch.device("meta"):
        meta = LanguageModel(ModelConfig.tiny(mixer="infinite"))
    assert meta.blocks[0].mixer.w_mu.device.type == "meta"
    model = tiny_model(torch.float32)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, 256, (2, 40)))
    assert all(s["mem_k"].dtype == torch.float32 for s in state)
    logits.float().mean().backward()
    assert torch.isfinite(logits.float()).all() and model.blocks[1].mixer.w_mu.grad.abs().sum() > 0


def test_bad_sizes_are_input_errors() -> None:
    with pytest.raises(InputError):
        InfinityFormer(ModelConfig.tiny(mixer="infinite", infinite_segment=0), 0)
    with pytest.raises(InputError):
        InfinityFormer(ModelConfig.tiny(mixer="infinite", infinite_tau=1.5), 0)

"""Reflex attention: cross-layer K/V reuse through the exchange dict, and the mixer contract.

Equivalence (docs/design.md §3.1) holds with the same windowing in both forms: Reflex uses the
Transformer's sink + sliding-window visibility in the parallel form and the same bounded cache in
step-by-step decoding, and every layer publishes the K/V of the full attended range (cache
included), so one call == pieces with the state carried == token by token, with and without a window.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attention import one_thread, random_tokens, run_pieces, run_steps, tiny_lm  # noqa: F401 (fixture)

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.reflex import ReflexAttention, exchange_key


def reflex_stack(window: int | None, dtype: torch.dtype = torch.float64, seed: int = 0, n_layers: int = 4):
    """Reflex mixers for layers 0..n-1 chained by hand (x + mixer(rmsnorm(x))) with one shared exchange per call."""
    torch.manual_seed(seed)
    config = ModelConfig.tiny(mixer="reflex", context=window, n_layers=n_layers)
    mixers = [ReflexAttention(config, i) for i in range(n_layers)]
    for mixer in mixers:
        for p in mixer.parameters():
            torch.nn.init.normal_(p, std=0.1)
    mixers = [m.to(dtype).eval() for m in mixers]

    def run(x, states):
        states = states or [None] * n_layers
        exchange: dict = {}
        new = []
        for mixer, state in zip(mixers, states):
            y, state = mixer(F.rms_norm(x, (x.shape[-1],)), state, exchange)
            x = x + y
            new.append(state)
        return x, new

    def step(x, states):
        exchange: dict = {}
        new = []
        for mixer, state in zip(mixers, states):
            y, state = mixer.step(F.rms_norm(x, (x.shape[-1],)), state, exchange)
            x = x + y
            new.append(state)
        return x, new

    def init(batch):
        return [m.init_state(batch, dtype=dtype) for m in mixers]

    return mixers, run, step, init


@settings(deadline=None, max_examples=12)
@given(
    window=st.sampled_from([None, 16]),
    length=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 59), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_mixers_alone_one_call_pieces_and_steps_agree(window, length, cuts, seed) -> None:
    _, run, step, init = reflex_stack(window, seed=seed % 3)
    x = torch.randn(2, length, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    full, _ = run(x, None)
    assert rel_err(run_pieces(run, x, cuts), full) < 1e-10
    assert rel_err(run_steps(step, x, init(2)), full) < 1e-10


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_mixers_alone_float32_matches_float64_reference(window: int | None) -> None:
    _, run64, _, _ = reflex_stack(window, torch.float64)
    _, run, step, init = reflex_stack(window, torch.float32)
    x = torch.randn(2, 60, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, _ = run64(x, None)
    x32 = x.float()
    assert rel_err(run(x32, None)[0], expected) < 1e-5
    assert rel_err(run_pieces(run, x32, [3, 20, 41]), expected) < 1e-5
    assert rel_err(run_steps(step, x32, init(2)), expected) < 1e-5


@torch.no_grad()
def test_later_layers_attend_to_earlier_layers_keys_and_values() -> None:
    mixers, run, _, _ = reflex_stack(None)
    assert [m.kv_heads for m in mixers] == [4, 4, 2, 2]
    assert [m.qkv_proj.out_features for m in mixers] == [3 * 128, 3 * 128, 2 * 128, 2 * 128]
    x = torch.randn(1, 12, 128, dtype=torch.float64)
    exchange: dict = {}
    for mixer in mixers:
        y, _ = mixer(x, None, exchange)
        x = x + y
    kv = {i: exchange[exchange_key(i)] for i in range(4)}
    for i in range(4):
        assert kv[i][0].shape == kv[i][1].shape == (1, 4, 12, 32)
    for which in (0, 1):  # keys and values
        # layer 2: head 2 from layer 1, head 3 from layer 0; layer 3: head 2 from layer 2, head 3 from layer 1
        assert torch.equal(kv[2][which][:, 2], kv[1][which][:, 2])
        assert torch.equal(kv[2][which][:, 3], kv[0][which][:, 3])
        assert torch.equal(kv[3][which][:, 2], kv[2][which][:, 2])
        assert torch.equal(kv[3][which][:, 3], kv[1][which][:, 3])
        assert not torch.equal(kv[3][which][:, :2], kv[2][which][:, :2])  # own heads are its own


@torch.no_grad()
def test_reusing_layer_output_depends_on_earlier_layers_kv() -> None:
    mixers, _, _, _ = reflex_stack(None)
    x = torch.randn(1, 10, 128, dtype=torch.float64)
    exchange: dict = {}
    for mixer in mixers[:2]:
        mixer(x, None, exchange)
    y, _ = mixers[2](x, None, exchange)
    k1, v1 = exchange[exchange_key(1)]
    exchange[exchange_key(1)] = (k1, v1 + 1.0)
    y_changed, _ = mixers[2](x, None, exchange)
    assert (y - y_changed).abs().max() > 1e-3


def test_reusing_layer_without_exchange_fails_clearly() -> None:
    mixer = ReflexAttention(ModelConfig.tiny(mixer="reflex", n_layers=4), layer_idx=2)
    with pytest.raises(ValueError, match="needs the keys/values of layer 1"):
        mixer(torch.randn(1, 5, 128), None, {})


def test_n_heads_must_be_divisible_by_four() -> None:
    with pytest.raises(InputError, match="divisible by 4"):
        LanguageModel(ModelConfig.tiny(mixer="reflex", d_model=96, n_heads=6))


@torch.no_grad()
def test_first_two_layers_are_a_plain_transformer() -> None:
    transformer = tiny_lm("transformer", context=16)
    reflex = tiny_lm("reflex", context=16, seed=1)
    reflex.load_state_dict(transformer.state_dict())
    idx = random_tokens(2, 40, 2)
    assert torch.equal(reflex(idx)[0], transformer(idx)[0])


@pytest.mark.slow
@settings(deadline=None, max_examples=8)
@given(
    window=st.sampled_from([None, 16]),
    cuts=st.lists(st.integers(1, 59), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_model_one_call_pieces_and_steps_agree(window, cuts, seed) -> None:
    model = tiny_lm("reflex", context=window, n_layers=4, seed=seed % 3)
    idx = random_tokens(2, 60, seed)
    full, _ = model(idx)
    assert rel_err(run_pieces(model, idx, cuts), full) < 1e-10
    assert rel_err(run_steps(model.step, idx, model.init_state(2)), full) < 1e-10


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_model_float32_matches_float64_reference(window: int | None) -> None:
    reference = tiny_lm("reflex", torch.float64, context=window, n_layers=4)
    model = tiny_lm("reflex", torch.float32, context=window, n_layers=4)
    idx = random_tokens(2, 60, 3)
    expected, _ = reference(idx)
    assert rel_err(model(idx)[0], expected) < 1e-5
    assert rel_err(run_pieces(model, idx, [11, 30]), expected) < 1e-5
    assert rel_err(run_steps(model.step, idx, model.init_state(2)), expected) < 1e-5


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_kv_cache_no_larger_than_the_transformers(window: int | None) -> None:
    idx = random_tokens(1, 40, 4)
    sizes = {}
    for mixer in ("transformer", "reflex"):
        model = tiny_lm(mixer, torch.float32, context=window, n_layers=4)
        _, state = model(idx)
        sizes[mixer] = model.state_nbytes(state)
    per_token_layer = 2 * 128 * 4  # (k, v) * d * float32 bytes
    tokens = 40 if window is None else window
    assert sizes["transformer"] == 4 * tokens * per_token_layer
    assert sizes["reflex"] == 3 * tokens * per_token_layer  # two full layers, two with half the heads
    assert sizes["reflex"] <= sizes["transformer"]


@torch.no_grad()
def test_generation_with_a_window_stays_bounded() -> None:
    model = tiny_lm("reflex", torch.float32, context=16, n_layers=4)
    state = model.init_state(2)
    token = torch.tensor([1, 2])
    for t in range(100):
        logits, state = model.step(token, state)
        assert torch.isfinite(logits).all()
        token = logits.argmax(-1)
        if t >= 15:
            assert model.state_nbytes(state) == 2 * 3 * 16 * 2 * 128 * 4

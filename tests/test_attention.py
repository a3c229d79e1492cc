"""The softmax Transformer mixer: RoPE, the sink + sliding-window KV cache, and the mixer contract.

Equivalence (docs/design.md §3.1) holds with the same windowing in both forms: with a window W, the
parallel form applies the same sink + sliding-window visibility that the bounded cache gives to
step-by-step decoding (the first `sink_tokens` positions plus the last W - sink), so one call over
T > W tokens == pieces with the state carried == token by token. Without a window it is full
causal attention in every form.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.models import LanguageModel, ModelConfig
from glactl.models.attention import CausalSelfAttention
from glactl.ops.attention import cache_layout, extend_layout, trim_cache, windowed_attention
from glactl.ops.rope import apply_rope, rope_range, rope_tables


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a busy 2-core machine makes more threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- helpers shared with test_reflex.py ----------------------------------------------------------


def pieces_of(length: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) spans of a sequence cut at the given points (duplicates and out-of-range ignored)."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < length}), length]
    return list(zip(bounds[:-1], bounds[1:]))


def run_pieces(run, x: torch.Tensor, cuts: list[int], state=None) -> torch.Tensor:
    """Outputs of `run(x_piece, state) -> (y, state)` over the pieces, concatenated along time."""
    outputs = []
    for start, end in pieces_of(x.shape[1], cuts):
        y, state = run(x[:, start:end], state)
        outputs.append(y)
    return torch.cat(outputs, dim=1)


def run_steps(step, x: torch.Tensor, state) -> torch.Tensor:
    """Outputs of `step(x_t, state) -> (y_t, state)` one position at a time, stacked along time."""
    outputs = []
    for t in range(x.shape[1]):
        y, state = step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1)


def tiny_lm(mixer: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> LanguageModel:
    """A tiny LanguageModel in eval mode, deterministic weights."""
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig.tiny(mixer=mixer, **overrides)).to(dtype).eval()


def random_tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def visible(i: int, j: int, window: int | None, sink: int) -> bool:
    """The visibility rule written out for one (query, key) pair, independent of the library's mask."""
    if j > i:
        return False
    if window is None:
        return True
    s = min(sink, window - 1)
    return j < s or i - j < window - s


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, sink: int) -> torch.Tensor:
    """Attention over a whole sequence [B, H, T, D] with a mask built pair by pair (the slow reference)."""
    length = q.shape[-2]
    mask = torch.tensor([[visible(i, j, window, sink) for j in range(length)] for i in range(length)])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def rope_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, sink: int) -> torch.Tensor:
    """Attention of unrotated q, k [B, H, T, D] with RoPE written pair by pair: query i sees key j at
    distance i - j, except a sink key j < sink once i >= W, seen at the cache distance W - 1 - j."""
    length, dim = q.shape[-2], q.shape[-1]
    cos, sin = rope_range(0, length, dim, 10000.0, torch.float64)
    q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = torch.full((*q.shape[:2], length, length), float("-inf"), dtype=q.dtype)
    for i in range(length):
        for j in range(length):
            if not visible(i, j, window, sink):
                continue
            if window is not None and j < min(sink, window - 1) and i >= window:
                at = window - 1  # the query rotated to W - 1 meets key j at distance W - 1 - j
                scores[..., i, j] = (apply_rope(q[..., i, :], cos[at], sin[at]) * k_rot[..., j, :]).sum(-1)
            else:
                scores[..., i, j] = (q_rot[..., i, :] * k_rot[..., j, :]).sum(-1)
    return torch.softmax(scores / math.sqrt(dim), dim=-1) @ v


# ---- RoPE ------------------------------------------------------------------------------------------


def test_rope_angles_exact_at_one_million() -> None:
    head_dim, base = 32, 10000.0
    positions = torch.tensor([1_000_000, 1_000_001, 999_999])
    cos, sin = rope_tables(positions, head_dim, base, torch.float32)
    ref_cos = torch.tensor(
        [[math.cos(p * base ** (-2 * i / head_dim)) for i in range(head_dim // 2)] for p in positions.tolist()]
    )
    ref_sin = torch.tensor(
        [[math.sin(p * base ** (-2 * i / head_dim)) for i in range(head_dim // 2)] for p in positions.tolist()]
    )
    assert (cos.double() - ref_cos).abs().max() < 1e-6
    assert (sin.double() - ref_sin).abs().max() < 1e-6
    # The same product taken in float32 is visibly wrong there: the test can tell the difference.
    inv32 = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    naive = (positions.float()[:, None] * inv32[None, :]).cos()
    assert (naive.double() - ref_cos).abs().max() > 1e-3


def test_rope_scores_depend_only_on_relative_position() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 64, generator=g, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos_m, sin_m = rope_range(m, 1, 64, 10000.0, torch.float64)
        cos_n, sin_n = rope_range(n, 1, 64, 10000.0, torch.float64)
        return (apply_rope(q[None], cos_m, sin_m) @ apply_rope(k[None], cos_n, sin_n).T).item()

    near = score(7, 2)
    assert abs(score(1_000_005, 1_000_000) - near) < 1e-8 * abs(near) + 1e-9
    assert abs(score(3, 2) - near) > 1e-6  # a different distance gives a different score
    x = torch.randn(5, 64, generator=g, dtype=torch.float64)
    cos, sin = rope_range(123_456, 5, 64, 10000.0, torch.float64)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # a rotation


# ---- the attention ops -------------------------------------------------------------------------------


def cached_attention(q, k, v, cuts, window, sink, query_block):
    """Run the ops piece by piece with a trimmed cache, as the mixer does."""
    cache_k, cache_v, seen = k[..., :0, :], v[..., :0, :], 0
    outputs, max_cache = [], 0
    for start, end in pieces_of(q.shape[-2], cuts):
        layout = extend_layout(cache_layout(cache_k.shape[-2], seen, window, sink), end - start)
        k_all = torch.cat((cache_k, k[..., start:end, :]), dim=-2)
        v_all = torch.cat((cache_v, v[..., start:end, :]), dim=-2)
        outputs.append(windowed_attention(q[..., start:end, :], k_all, v_all, layout, window, sink, query_block))
        cache_k, cache_v = trim_cache(k_all, v_all, layout, window, sink)
        seen = end
        max_cache = max(max_cache, cache_k.shape[-2])
    return torch.cat(outputs, dim=-2), max_cache


@settings(deadline=None, max_examples=40)
@given(
    length=st.integers(1, 50),
    window=st.sampled_from([None, 1, 2, 5, 16]),
    sink=st.sampled_from([0, 1, 4]),
    cuts=st.lists(st.integers(1, 49), max_size=5),
    query_block=st.sampled_from([1, 3, 7, 1024]),
    seed=st.integers(0, 2**16),
)
def test_windowed_attention_matches_pairwise_mask(length, window, sink, cuts, query_block, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 8, generator=g, dtype=torch.float64) for _ in range(3))
    reference = dense_reference(q, k, v, window, sink)
    out, max_cache = cached_attention(q, k, v, cuts, window, sink, query_block)
    assert rel_err(out, reference) < 1e-10
    if window is not None:
        assert max_cache <= window


def test_window_changes_attention_past_w_only() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g, dtype=torch.float64) for _ in range(3))
    layout = extend_layout(cache_layout(0, 0, 16, 4), 40)
    windowed = windowed_attention(q, k, v, layout, 16, 4)
    full = windowed_attention(q, k, v, extend_layout(cache_layout(0, 0, None, 4), 40), None, 4)
    assert rel_err(windowed[..., :16, :], full[..., :16, :]) < 1e-12
    assert (windowed[..., 16:, :] - full[..., 16:, :]).abs().amax(dim=(0, 1, 3)).min() > 1e-6


# ---- the mixer alone -----------------------------------------------------------------------------


def attention_mixer(window: int | None, dtype: torch.dtype = torch.float64, seed: int = 0) -> CausalSelfAttention:
    torch.manual_seed(seed)
    mixer = CausalSelfAttention(ModelConfig.tiny(mixer="transformer", context=window), layer_idx=0)
    for p in mixer.parameters():  # larger weights than the init, so the softmax is far from uniform
        torch.nn.init.normal_(p, std=0.2)
    return mixer.to(dtype).eval()


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_mixer_matches_an_independent_reference(window: int | None) -> None:
    mixer = attention_mixer(window)
    x = torch.randn(2, 60, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    qkv = mixer.qkv_proj(x).view(2, 60, 3, 4, 32).permute(2, 0, 3, 1, 4)
    o = rope_reference(qkv[0], qkv[1], qkv[2], window, 4)
    expected = mixer.out_proj(o.transpose(1, 2).reshape(2, 60, 128))
    y, _ = mixer(x)
    assert rel_err(y, expected) < 1e-10


@settings(deadline=None, max_examples=15)
@given(
    window=st.sampled_from([None, 16]),
    length=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 59), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_mixer_one_call_pieces_and_steps_agree(window, length, cuts, seed) -> None:
    mixer = attention_mixer(window, seed=seed % 5)
    x = torch.randn(2, length, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    full, state = mixer(x)
    assert rel_err(run_pieces(mixer, x, cuts), full) < 1e-10
    assert rel_err(run_steps(mixer.step, x, mixer.init_state(2, dtype=torch.float64)), full) < 1e-10
    assert state["pos"] == length and (window is None or state["k"].shape[2] == min(length, window))


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_mixer_float32_matches_float64_reference(window: int | None) -> None:
    reference, mixer = attention_mixer(window, torch.float64), attention_mixer(window, torch.float32)
    x = torch.randn(2, 60, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected, _ = reference(x)
    x32 = x.float()
    assert rel_err(mixer(x32)[0], expected) < 1e-5
    assert rel_err(run_pieces(mixer, x32, [5, 17, 40]), expected) < 1e-5
    assert rel_err(run_steps(mixer.step, x32, mixer.init_state(2)), expected) < 1e-5


# ---- through LanguageModel ----------------------------------------------------------------------


@settings(deadline=None, max_examples=10)
@given(
    window=st.sampled_from([None, 16]),
    cuts=st.lists(st.integers(1, 59), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_model_one_call_pieces_and_steps_agree(window, cuts, seed) -> None:
    model = tiny_lm("transformer", context=window, seed=seed % 3)
    idx = random_tokens(2, 60, seed)
    full, _ = model(idx)
    assert rel_err(run_pieces(model, idx, cuts), full) < 1e-10
    assert rel_err(run_steps(model.step, idx, model.init_state(2)), full) < 1e-10


@pytest.mark.parametrize("window", [None, 16])
@torch.no_grad()
def test_model_float32_matches_float64_reference(window: int | None) -> None:
    reference = tiny_lm("transformer", torch.float64, context=window)
    model = tiny_lm("transformer", torch.float32, context=window)
    idx = random_tokens(2, 60, 4)
    expected, _ = reference(idx)
    assert rel_err(model(idx)[0], expected) < 1e-5
    assert rel_err(run_pieces(model, idx, [9, 33]), expected) < 1e-5
    assert rel_err(run_steps(model.step, idx, model.init_state(2)), expected) < 1e-5


@torch.no_grad()
def test_state_bytes_stop_growing_once_the_window_is_full() -> None:
    windowed = tiny_lm("transformer", torch.float32, context=16)
    unlimited = tiny_lm("transformer", torch.float32)
    sizes = {}
    for name, model in (("windowed", windowed), ("unlimited", unlimited)):
        state, sizes[name] = model.init_state(1), []
        for t in range(40):
            _, state = model.step(torch.tensor([t % 256]), state)
            sizes[name].append(model.state_nbytes(state))
    per_token = 2 * 2 * 128 * 4  # layers * (k, v) * d * float32 bytes
    assert sizes["windowed"][15] == 16 * per_token
    assert set(sizes["windowed"][15:]) == {16 * per_token}
    assert sizes["windowed"][:16] == sizes["unlimited"][:16]
    assert sizes["unlimited"] == [(t + 1) * per_token for t in range(40)]
    _, state = windowed(random_tokens(1, 500, 5))
    assert windowed.state_nbytes(state) == 16 * per_token


@torch.no_grad()
def test_generation_with_a_window_never_stops_and_stays_bounded() -> None:
    model = tiny_lm("transformer", torch.float32, context=16)
    logits, state = model(random_tokens(3, 10, 6))
    token = logits[:, -1].argmax(-1)
    sizes = set()
    for _ in range(100):
        logits, state = model.step(token, state)
        assert torch.isfinite(logits).all()
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=torch.Generator().manual_seed(7))[:, 0]
        sizes.add(model.state_nbytes(state))
    assert max(sizes) == model.state_nbytes(state) == 2 * 2 * 3 * 128 * 16 * 4
    assert state[0]["pos"].tolist() == [110] * 3 and state[0]["k"].shape[2] == 16 - 4  # the window less its sinks


@torch.no_grad()
def test_state_is_a_plain_tree_that_batch_reordering_understands() -> None:
    select_state = pytest.importorskip("glactl.models.state").select_state
    model = tiny_lm("transformer", context=16)
    idx = random_tokens(3, 30, 8)
    _, state = model(idx[:, :20])
    order = torch.tensor([2, 0, 0])
    reordered = select_state(state, order)
    expected, _ = model(idx[order])
    continued, _ = model(idx[order, 20:], reordered)
    assert rel_err(continued, expected[:, 20:]) < 1e-10


def test_trains_under_bfloat16_autocast_with_finite_gradients() -> None:
    model = tiny_lm("transformer", torch.float32, context=32)
    idx = random_tokens(2, 48, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(idx[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, 256), idx[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.blocks[0].mixer.qkv_proj.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_context_override_on_a_built_model_takes_effect() -> None:
    model = tiny_lm("transformer", torch.float32)
    model.config.context = 8  # what `generate --context 8` does to a loaded model
    _, state = model(random_tokens(1, 30, 10))
    assert all(layer["k"].shape[2] == 8 for layer in state)


# ---- the decode form: a preallocated window, a position per row ----------------------------------------------


@pytest.mark.parametrize(("window", "sink"), [(16, 4), (16, 0), (5, 4), (2, 4)])
@torch.no_grad()
def test_preallocated_window_across_the_wrap_equals_the_concatenating_cache(window: int, sink: int) -> None:
    compact_state = pytest.importorskip("glactl.models.attention").compact_state
    torch.manual_seed(0)
    mixer = CausalSelfAttention(ModelConfig.tiny(mixer="transformer", context=window, sink_tokens=sink), 0)
    for p in mixer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    mixer = mixer.double().eval()
    x = torch.randn(2, 3 * window + 7, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    concatenating, preallocated = mixer.init_state(2, dtype=torch.float64), mixer.decode_state(None, 2, x)
    ring = preallocated["k"]
    for t in range(x.shape[1]):  # the parallel form on one token: the cache grown by concatenation, then trimmed
        expected, concatenating = mixer(x[:, t : t + 1], concatenating)
        y, preallocated = mixer.step(x[:, t], preallocated)
        assert rel_err(y, expected[:, 0]) < 1e-12
        assert preallocated["k"] is ring and preallocated["pos"].tolist() == [t + 1] * 2  # written in place
        compact = compact_state(preallocated)
        assert compact["pos"] == concatenating["pos"] == t + 1
        for name in ("k", "v"):
            assert compact[name].shape == concatenating[name].shape
            assert rel_err(compact[name], concatenating[name]) < 1e-12


@pytest.mark.parametrize("mixer", ["transformer", "reflex"])
@torch.no_grad()
def test_rows_at_different_positions_step_in_one_batch_as_each_alone(mixer: str) -> None:
    from glactl.models.state import cat_states

    model = tiny_lm(mixer, context=16, n_layers=4)
    idx = random_tokens(3, 80, 11)
    starts = [40, 7, 15]  # past the wrap, before the sinks fill... the window, at the window's edge
    alone, together = [], []
    for row, start in enumerate(starts):
        logits, state = model(idx[row : row + 1, :start])
        alone.append(model.decode_state(state))
        together = model.decode_state(state) if row == 0 else cat_states([together, model.decode_state(state)])
    for t in range(30):
        tokens = torch.tensor([idx[row, start + t] for row, start in enumerate(starts)])
        batch_logits, together = model.step(tokens, together)
        for row in range(3):
            row_logits, alone[row] = model.step(tokens[row : row + 1], alone[row])
            assert rel_err(batch_logits[row : row + 1], row_logits) < 1e-10
    assert together[0]["pos"].tolist() == [start + 30 for start in starts]
    continued, _ = model(idx[:, 70:80], together)  # the parallel form goes on row by row where positions differ
    for row in range(3):
        expected, _ = model(idx[row : row + 1, 70:80], alone[row])
        assert rel_err(continued[row : row + 1], expected) < 1e-10


@torch.no_grad()
def test_compiled_step_does_not_recompile_as_the_position_advances() -> None:
    from torch._dynamo.utils import counters

    model = tiny_lm("transformer", torch.float32, context=8)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model.step, backend="eager", fullgraph=True)
    state, eager_state = model.decode_state(None, 2), model.decode_state(None, 2)
    tokens = random_tokens(2, 30, 12)
    for t in range(30):  # from an empty window through its wrap point, three times round
        logits, state = compiled(tokens[:, t], state)
        expected, eager_state = model.step(tokens[:, t], eager_state)
        torch.testing.assert_close(logits, expected)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]  # no guard on the position: one graph serves every position
    torch._dynamo.reset()


@pytest.mark.parametrize("mixer", ["transformer", "reflex"])
@torch.no_grad()
def test_a_state_saved_after_decode_steps_has_the_compact_format_and_loads(mixer: str, tmp_path) -> None:
    from glactl.inference.reading import Reading, read
    from glactl.storage.state_file import State, StateOwner, load_state, save_state
    from glactl.storage.state_format import read_header

    model = tiny_lm(mixer, context=16, n_layers=3)
    owner = StateOwner("c" * 64, "w" * 64, mixer, 16, 4, True, "float32")
    text = bytes(random_tokens(1, 40, 13)[0].tolist())
    whole = read(model, text)  # the parallel form: the format saved before the decode form existed
    prefix = read(model, text[:10])
    state, logits = prefix.state, None
    for byte in text[10:]:  # the rest one byte at a time, through the preallocated window
        logits, state = model.step(torch.tensor([byte]), state)
    stepped = Reading(state, logits[0], whole.bytes_read, whole.tail)
    assert not any("sink_k" in layer for layer in stepped.state)  # a reading holds the compact form
    files = {}
    for name, reading in (("whole", whole), ("stepped", stepped)):
        files[name] = save_state(State(reading, owner), tmp_path / f"{name}.state")
    (whole_header, whole_doc), (stepped_header, stepped_doc) = (read_header(f) for f in files.values())
    assert whole_doc == stepped_doc
    assert {n: (i["dtype"], i["shape"]) for n, i in whole_header.items()} == {
        n: (i["dtype"], i["shape"]) for n, i in stepped_header.items()
    }
    loaded = load_state(files["stepped"], model, owner).reading
    for a, b in zip(loaded.state, whole.state):
        assert a["pos"] == b["pos"] == 41 and rel_err(a["k"], b["k"]) < 1e-10 and rel_err(a["v"], b["v"]) < 1e-10
    token = torch.tensor([7])
    expected, _ = model.step(token, whole.state)
    got, _ = model.step(token, loaded.state)
    assert rel_err(got, expected) < 1e-10

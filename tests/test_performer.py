"""Performer (FAVOR+): one call == pieces == steps, causality, positive features, the saved projection."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.performer import Performer
from glactl.ops.performer import (
    key_log_features,
    orthogonal_random_features,
    performer_chunk,
    performer_recurrent,
    query_features,
)
from glactl.storage.checkpoint import expected_tensors, load_model, save_model


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(ModelConfig.tiny(mixer="performer", **overrides)).to(dtype).eval()


def tiny_mixer(dtype: torch.dtype = torch.float64, seed: int = 0) -> Performer:
    """A lone mixer with larger-than-init weights, so features and the key maximum vary a lot."""
    torch.manual_seed(seed)
    mixer = Performer(ModelConfig.tiny(mixer="performer", performer_features=32), 0)
    torch.nn.init.normal_(mixer.in_proj.weight, std=0.3)
    return mixer.to(dtype).eval()


def mixer_pieces(mixer, x: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, object]:
    state, outputs, start = None, [], 0
    for end in [*sorted(set(cuts)), x.shape[1]]:
        if start < end:
            y, state = mixer(x[:, start:end], state)
            outputs.append(y)
            start = end
    return torch.cat(outputs, dim=1), state


def mixer_steps(mixer, x: torch.Tensor) -> torch.Tensor:
    state = mixer.init_state(x.shape[0], x.device, x.dtype)
    outputs = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, dim=1)


def model_pieces(model: LanguageModel, idx: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    return mixer_pieces(model, idx, cuts)[0]


def model_steps(model: LanguageModel, idx: torch.Tensor) -> torch.Tensor:
    state = model.init_state(idx.shape[0])
    outputs = []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1)


@torch.no_grad()
def test_ops_chunk_matches_recurrent_reference() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = (3 * torch.randn(2, 3, 150, 8, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 150, 5, generator=g, dtype=torch.float64)
    proj = orthogonal_random_features(3, 16, 8, generator=g, dtype=torch.float64)
    ref, ref_state = performer_recurrent(q, k, v, proj)
    out, state = performer_chunk(q, k, v, proj, chunk_size=16)
    assert rel_err(out, ref) < 1e-10
    for name in ("kv", "z", "key_max"):
        assert rel_err(state[name], ref_state[name]) < 1e-10
    out32, _ = performer_chunk(q.float(), k.float(), v.float(), proj.float(), chunk_size=16)
    assert out32.dtype == torch.float32 and rel_err(out32, ref) < 1e-5


@torch.no_grad()
def test_many_features_approximate_causal_softmax_attention() -> None:
    g = torch.Generator().manual_seed(1)
    q, k = (0.5 * torch.randn(1, 1, 40, 8, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 1, 40, 4, generator=g, dtype=torch.float64)
    proj = orthogonal_random_features(1, 4096, 8, generator=g, dtype=torch.float64)
    out, _ = performer_chunk(q, k, v, proj)
    mask = torch.ones(40, 40, dtype=torch.bool).tril()
    exact = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, -math.inf).softmax(-1) @ v
    assert rel_err(out, exact) < 0.05


def test_random_features_are_orthogonal_blocks_with_chi_norms() -> None:
    proj = orthogonal_random_features(2, 48, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert proj.shape == (2, 48, 16)
    directions = proj / proj.norm(dim=-1, keepdim=True)
    for block in directions.reshape(2, 3, 16, 16).unbind(1):
        gram = block @ block.transpose(-1, -2)
        assert torch.allclose(gram, torch.eye(16, dtype=torch.float64).expand_as(gram), atol=1e-12)
    norms = proj.norm(dim=-1)
    assert 2.0 < norms.mean() < 6.0 and norms.std() > 0.1  # chi_16 has mean ~3.9, not a constant


def test_features_are_positive_and_stabilised() -> None:
    g = torch.Generator().manual_seed(3)
    proj = orthogonal_random_features(2, 32, 8, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(1, 2, 30, 8, generator=g, dtype=torch.float64)
    fq = query_features(x, proj)
    assert (fq > 0).all() and torch.allclose(fq.amax(-1), torch.ones(1, 2, 30, dtype=torch.float64))
    _, state = performer_chunk(x, x, torch.randn(1, 2, 30, 4, generator=g, dtype=torch.float64), proj)
    assert (state["z"] > 0).all() and torch.equal(state["key_max"], key_log_features(x, proj).amax(dim=(2, 3)))


@torch.no_grad()
def test_mixer_one_call_pieces_steps_agree_float64_and_float32() -> None:
    mixer = tiny_mixer()
    x = torch.randn(2, 100, 128, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full, state = mixer(x)
    pieces, state_pieces = mixer_pieces(mixer, x, [1, 63, 64, 65, 90])
    assert rel_err(pieces, full) < 1e-10
    assert rel_err(mixer_steps(mixer, x), full) < 1e-10
    for name in state:
        assert rel_err(state_pieces[name], state[name]) < 1e-10
    mixer32 = tiny_mixer(torch.float32)
    assert rel_err(mixer32(x.float())[0], full) < 1e-5
    assert rel_err(mixer_pieces(mixer32, x.float(), [17, 100])[0], full) < 1e-5
    assert rel_err(mixer_steps(mixer32, x.float()), full) < 1e-5


@torch.no_grad()
def test_model_one_call_pieces_steps_agree() -> None:
    model = tiny_model()
    idx = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(5))
    full, _ = model(idx)
    assert rel_err(model_pieces(model, idx, [1, 63, 64, 65]), full) < 1e-10
    assert rel_err(model_steps(model, idx), full) < 1e-10
    model32 = tiny_model(torch.float32)
    assert rel_err(model32(idx)[0], full) < 1e-5
    assert rel_err(model_pieces(model32, idx, [50]), full) < 1e-5
    assert rel_err(model_steps(model32, idx), full) < 1e-5


@settings(deadline=None, max_examples=12)
@given(
    length=st.integers(1, 140),
    cuts=st.lists(st.integers(1, 139), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_property_split_points_do_not_change_outputs(length: int, cuts: list[int], seed: int) -> None:
    mixer = tiny_mixer(seed=seed % 5)
    x = torch.randn(1, length, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    full, state = mixer(x)
    pieces, state_pieces = mixer_pieces(mixer, x, [c for c in cuts if c < length])
    assert rel_err(pieces, full) < 1e-10
    assert rel_err(state_pieces["kv"], state["kv"]) < 1e-10


@torch.no_grad()
def test_no_future_leak_in_one_call() -> None:
    """Changing tokens after t, including a key far larger than any before, leaves outputs <= t unchanged."""
    mixer = tiny_mixer()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 120, 128, generator=g, dtype=torch.float64)
    t = 70
    changed = x.clone()
    changed[:, t + 1 :] = 50 * torch.randn(1, 120 - t - 1, 128, generator=g, dtype=torch.float64)
    a, _ = mixer(x)
    b, _ = mixer(changed)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@torch.no_grad()
def test_state_size_is_constant() -> None:
    model = tiny_model(torch.float32)
    g = torch.Generator().manual_seed(7)
    _, state_10 = model(torch.randint(0, 256, (1, 10), generator=g))
    _, state_1000 = model(torch.randint(0, 256, (1, 1000), generator=g))
    assert model.state_nbytes(state_10) == model.state_nbytes(state_1000) > 0
    _, state_step = model.step(torch.tensor([5]), state_1000)
    assert model.state_nbytes(state_step) == model.state_nbytes(state_10)
    assert model.state_nbytes(model.init_state(1)) == model.state_nbytes(state_10)


def test_projection_is_a_saved_buffer_fixed_in_training(tmp_path) -> None:
    model = tiny_model(torch.float32)
    name = "blocks.0.mixer.feature_proj"
    assert name in model.state_dict() and name not in dict(model.named_parameters())
    before = model.blocks[0].mixer.feature_proj.clone()
    model.train()
    logits, _ = model(torch.randint(0, 256, (2, 70)))
    logits.mean().backward()
    assert torch.equal(model.blocks[0].mixer.feature_proj, before)
    assert not torch.equal(model.blocks[0].mixer.feature_proj, model.blocks[1].mixer.feature_proj)
    save_model(tmp_path / "ckpt", model)
    torch.manual_seed(123)  # a different draw at construction must be overwritten by the saved one
    loaded, _ = load_model(tmp_path / "ckpt")
    assert torch.equal(loaded.blocks[0].mixer.feature_proj, before)
    idx = torch.randint(0, 256, (1, 40))
    model.eval()
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_model_builds_on_meta_device() -> None:
    config = ModelConfig.tiny(mixer="performer")
    with torch.device("meta"):
        model = LanguageModel(config)
    assert model.blocks[0].mixer.feature_proj.device.type == "meta"
    shapes = expected_tensors(config)
    assert shapes["blocks.1.mixer.feature_proj"] == (4, 128, 32)


def test_bfloat16_autocast_keeps_a_float32_state_and_trains() -> None:
    model = tiny_model(torch.float32)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, 256, (2, 70)))
    assert all(t.dtype == torch.float32 for layer in state for name, t in layer.items() if name != "pos")
    assert all(layer["pos"].dtype == torch.long and layer["pos"].tolist() == [70, 70] for layer in state)
    assert torch.isfinite(logits.float()).all()
    logits.float().mean().backward()
    assert model.blocks[0].mixer.in_proj.weight.grad.abs().sum() > 0


def test_zero_features_is_an_input_error() -> None:
    with pytest.raises(InputError):
        Performer(ModelConfig.tiny(mixer="performer", performer_features=0), 0)


# ---- rotary positions (performer_rope, docs/design.md §3.4) -------------------------------------------
def rope_mixer(dtype: torch.dtype = torch.float64, seed: int = 0, rope: bool = True) -> Performer:
    """A lone mixer like tiny_mixer, with or without rotary positions."""
    torch.manual_seed(seed)
    mixer = Performer(ModelConfig.tiny(mixer="performer", performer_features=32, performer_rope=rope), 0)
    torch.nn.init.normal_(mixer.in_proj.weight, std=0.3)
    return mixer.to(dtype).eval()


def reference_output(mixer: Performer, x: torch.Tensor, start: int) -> torch.Tensor:
    """RoPE at absolute positions start.. by glactl.ops.rope, then the token-by-token FAVOR+ loop."""
    from glactl.ops.rope import apply_rope, rope_range

    q, k, v = (t.transpose(1, 2) for t in mixer._project(x))
    if mixer.rope:
        cos, sin = rope_range(start, x.shape[1], mixer.head_dim, mixer.rope_base, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    y, _ = performer_recurrent(q, k, v, mixer.feature_proj)
    return mixer.out_proj(y.transpose(1, 2).flatten(-2))


@torch.no_grad()
@pytest.mark.parametrize("rope", [True, False])
def test_mixer_matches_the_rotate_then_favor_reference(rope: bool) -> None:
    mixer = rope_mixer(rope=rope)
    x = torch.randn(2, 90, 128, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert rel_err(mixer(x)[0], reference_output(mixer, x, 0)) < 1e-10
    state = mixer.init_state(2, dtype=torch.float64)
    assert ("pos" in state) is rope and set(state) - {"pos"} == {"kv", "z", "key_max"}
    if rope:
        assert state["pos"].dtype == torch.long and state["pos"].shape == (2,)
        assert not torch.allclose(mixer(x)[0], rope_mixer(rope=False)(x)[0])


@torch.no_grad()
def test_rope_contract_holds_after_a_long_stream() -> None:
    """Continue after 5,000 tokens: one call == pieces == steps (float64), float32 within 1e-5 of it."""
    g = torch.Generator().manual_seed(9)
    prefix = torch.randn(1, 5000, 128, generator=g, dtype=torch.float64)
    x = torch.randn(1, 70, 128, generator=g, dtype=torch.float64)
    mixer = rope_mixer()
    _, start = mixer(prefix)
    assert start["pos"].tolist() == [5000]
    full, state = mixer(x, start)
    assert state["pos"].tolist() == [5070]
    pieces, state_pieces = [], start
    for a, b in ((0, 1), (1, 3), (3, 64), (64, 70)):
        y, state_pieces = mixer(x[:, a:b], state_pieces)
        pieces.append(y)
    assert rel_err(torch.cat(pieces, dim=1), full) < 1e-10
    steps, state_steps = [], start
    for t in range(x.shape[1]):
        y, state_steps = mixer.step(x[:, t], state_steps)
        steps.append(y)
    assert rel_err(torch.stack(steps, dim=1), full) < 1e-10
    for name in ("kv", "z", "key_max", "pos"):
        assert rel_err(state_pieces[name], state[name]) < 1e-10 and rel_err(state_steps[name], state[name]) < 1e-10
    mixer32 = rope_mixer(torch.float32)
    _, start32 = mixer32(prefix.float())
    assert rel_err(mixer32(x.float(), start32)[0], full) < 1e-5
    state32, steps32 = start32, []
    for t in range(x.shape[1]):
        y, state32 = mixer32.step(x[:, t].float(), state32)
        steps32.append(y)
    assert rel_err(torch.stack(steps32, dim=1), full) < 1e-5
    # The continuation is the reference rotated at positions 5000.. (the prefix only adds to S and z).
    assert not torch.allclose(full, mixer(x)[0])


@torch.no_grad()
def test_rope_model_contract_float64_and_float32_and_constant_state() -> None:
    model = tiny_model(performer_rope=True)
    idx = torch.randint(0, 256, (2, 80), generator=torch.Generator().manual_seed(10))
    full, _ = model(idx)
    assert rel_err(model_pieces(model, idx, [1, 2, 5, 64, 65]), full) < 1e-10
    assert rel_err(model_steps(model, idx), full) < 1e-10
    model32 = tiny_model(torch.float32, performer_rope=True)
    assert rel_err(model32(idx)[0], full) < 1e-5
    assert rel_err(model_steps(model32, idx), full) < 1e-5
    g = torch.Generator().manual_seed(11)
    _, state_10 = model32(torch.randint(0, 256, (1, 10), generator=g))
    _, state_1000 = model32(torch.randint(0, 256, (1, 1000), generator=g))
    assert (
        model32.state_nbytes(state_10)
        == model32.state_nbytes(state_1000)
        == model32.state_nbytes(model32.init_state(1))
    )


@torch.no_grad()
def test_rope_positions_reorder_with_the_beams() -> None:
    """select_state moves each row's position with its row; rows at different positions continue exactly."""
    from glactl.models.state import select_state

    model = tiny_model(performer_rope=True)
    g = torch.Generator().manual_seed(12)
    a, b = torch.randint(0, 256, (1, 7), generator=g), torch.randint(0, 256, (1, 19), generator=g)
    _, state_a = model(a)
    _, state_b = model(b)
    both = [{name: torch.cat([sa[name], sb[name]]) for name in sa} for sa, sb in zip(state_a, state_b)]
    swapped = select_state(both, torch.tensor([1, 0]))
    assert swapped[0]["pos"].tolist() == [19, 7]
    nxt = torch.randint(0, 256, (2, 5), generator=g)
    out, _ = model(nxt, swapped)
    assert rel_err(out[:1], model(nxt[:1], state_b)[0]) < 1e-10
    assert rel_err(out[1:], model(nxt[1:], state_a)[0]) < 1e-10

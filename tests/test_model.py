"""LanguageModel with the GLA mixer: one call == pieces with carried state == token by token."""

from __future__ import annotations

import pytest
import torch
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.models.gla import GatedLinearAttention


def tiny_model(dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.tiny(mixer="gla", **overrides))
    # Random gate biases so some channels forget fast and some slowly, as after training.
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.gate_proj.bias, std=20.0)
    return model.to(dtype).eval()


def leaves(state) -> list[torch.Tensor]:
    """The tensors of a model state (a GLA layer's state is a tensor, or a dict with a short convolution)."""
    if isinstance(state, torch.Tensor):
        return [state]
    items = state.values() if isinstance(state, dict) else state
    return [t for item in items for t in leaves(item)]


def run_in_pieces(model: LanguageModel, idx: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    state, outputs, start = None, [], 0
    for end in [*cuts, idx.shape[1]]:
        if end > start:
            logits, state = model(idx[:, start:end], state)
            outputs.append(logits)
            start = end
    return torch.cat(outputs, dim=1)


def run_steps(model: LanguageModel, idx: torch.Tensor) -> torch.Tensor:
    state = model.init_state(idx.shape[0])
    outputs = []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1)


@torch.no_grad()
def test_one_call_pieces_and_steps_agree_float64() -> None:
    model = tiny_model()
    idx = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(1))
    full, _ = model(idx)
    assert rel_err(run_in_pieces(model, idx, [1, 64, 65, 129]), full) < 1e-10
    assert rel_err(run_steps(model, idx), full) < 1e-10


@torch.no_grad()
def test_float32_model_matches_float64_reference() -> None:
    reference = tiny_model(torch.float64)
    model = tiny_model(torch.float32)
    idx = torch.randint(0, 256, (2, 200), generator=torch.Generator().manual_seed(2))
    ref, _ = reference(idx)
    full, _ = model(idx)
    assert rel_err(full, ref) < 1e-5
    assert rel_err(run_in_pieces(model, idx, [37, 100]), ref) < 1e-5
    assert rel_err(run_steps(model, idx), ref) < 1e-5


@pytest.mark.slow
@settings(deadline=None, max_examples=25)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 160),
    cuts=st.lists(st.integers(1, 159), max_size=4),
    seed=st.integers(0, 2**16),
)
@torch.no_grad()
def test_property_split_points_do_not_change_logits(batch: int, length: int, cuts: list[int], seed: int) -> None:
    model = tiny_model(seed=seed % 7)
    idx = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))
    full, state_full = model(idx)
    cuts = sorted({c for c in cuts if c < length})
    pieces = run_in_pieces(model, idx, cuts)
    assert rel_err(pieces, full) < 1e-10
    _, state_pieces = model(idx[:, : cuts[0]]) if cuts else (None, state_full)
    if cuts:
        _, state_pieces = model(idx[:, cuts[0] :], state_pieces)
    for a, b in zip(leaves(state_pieces), leaves(state_full)):
        assert rel_err(a, b) < 1e-10


@torch.no_grad()
def test_state_size_is_constant() -> None:
    model = tiny_model(torch.float32)
    g = torch.Generator().manual_seed(3)
    _, state_10 = model(torch.randint(0, 256, (1, 10), generator=g))
    _, state_10k = model(torch.randint(0, 256, (1, 10_000), generator=g))
    assert model.state_nbytes(state_10) == model.state_nbytes(state_10k) > 0
    _, state_step = model.step(torch.tensor([5]), state_10k)
    assert model.state_nbytes(state_step) == model.state_nbytes(state_10)


def test_state_stays_float32_for_float32_and_bfloat16_inputs() -> None:
    model = tiny_model(torch.float32)
    state = model.init_state(2)
    assert all(s.dtype == torch.float32 for s in leaves(state))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(torch.randint(0, 256, (2, 70)))
    assert all(s.dtype == torch.float32 for s in leaves(state))
    assert torch.isfinite(logits.float()).all()


def test_gla_dimensions_follow_the_design() -> None:
    config = ModelConfig.small()
    mixer = GatedLinearAttention(config, 0)
    assert (mixer.key_dim, mixer.value_dim, mixer.n_heads) == (128, 256, 4)
    assert (mixer.head_k, mixer.head_v) == (32, 64)
    assert mixer.gate_proj.in_features == 16 and mixer.gate_proj.bias is not None


def test_presets_and_parameter_counts() -> None:
    assert ModelConfig.tiny().d_model == 128 and ModelConfig.tiny().n_layers == 2
    small = LanguageModel(ModelConfig.small())
    assert 4_000_000 < small.num_parameters() < 6_000_000
    assert ModelConfig.base().d_model == 512 and ModelConfig.base().n_layers == 8
    assert ModelConfig.tiny(mixer="gla", d_model=64).d_model == 64
    assert small.head.weight is small.embed.weight


def test_config_round_trip_and_validation() -> None:
    config = ModelConfig.small(context=512, dropout=0.1)
    assert ModelConfig.from_dict(config.to_dict()) == config
    for bad in (
        {"d_model": -1},
        {"n_layers": 10**9},
        {"mixer": "nope"},
        {"d_model": "big"},
        {"n_heads": 3},
        {"bogus": 1},
    ):
        with pytest.raises(InputError):
            ModelConfig.from_dict({**ModelConfig.tiny().to_dict(), **bad})


def test_untied_head_and_dropout_train_mode() -> None:
    model = LanguageModel(ModelConfig.tiny(tie_embeddings=False, dropout=0.1))
    assert model.head.weight is not model.embed.weight
    model.train()
    logits, _ = model(torch.randint(0, 256, (2, 20)))
    logits.float().mean().backward()
    assert model.embed.weight.grad is not None

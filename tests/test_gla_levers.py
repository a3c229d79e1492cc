"""GLA's lever options (L2-normalised q and k, forget-gate bias init, fla's init, no decay on gates): each keeps
the three forms equal, and their defaults are today's GLA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import rel_err

from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.storage.checkpoint import load_model, save_model
from glactl.training.setup import decays

OPTIONS = [
    {"gla_qk_norm": True},
    {"gla_gate_bias": 3.0},
    {"gla_init": "fla"},
    {"gla_qk_norm": True, "gla_gate_bias": 3.0, "gla_init": "fla", "n_heads": 2},
]


def lever_gla(options: dict, short_conv: int, form: str = "chunk", seed: int = 0) -> LanguageModel:
    """A tiny float64 GLA with the options; gate biases spread (around the option's init) so the decay matters."""
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig.tiny(mixer="gla", short_conv=short_conv, gla_form=form, **options))
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.gate_proj.bias.add_(torch.randn_like(block.mixer.gate_proj.bias) * 4.0)
    return model.to(torch.float64).eval()


@torch.no_grad()
@pytest.mark.parametrize("short_conv", [0, 4])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_lever_chunk_equals_recurrent_and_steps_equal_the_parallel_form_float64(options: dict, short_conv: int) -> None:
    chunk = lever_gla(options, short_conv)
    loop = lever_gla(options, short_conv, form="recurrent")
    loop.load_state_dict(chunk.state_dict())
    idx = torch.randint(0, 256, (2, 150), generator=torch.Generator().manual_seed(3))
    full, state = chunk(idx)
    reference, reference_state = loop(idx)
    assert rel_err(full, reference) < 1e-10
    steps = []
    step_state = chunk.init_state(2)
    for t in range(idx.shape[1]):
        logits, step_state = chunk.step(idx[:, t], step_state)
        steps.append(logits)
    assert rel_err(torch.stack(steps, dim=1), full) < 1e-10
    for layer, ref, stepped in zip(state, reference_state, step_state):
        matrix, ref_matrix, step_matrix = ((s["S"] if short_conv else s) for s in (layer, ref, stepped))
        assert rel_err(matrix, ref_matrix) < 1e-10 and rel_err(step_matrix, ref_matrix) < 1e-10


@torch.no_grad()
def test_each_lever_changes_the_model_and_its_init() -> None:
    base = lever_gla({}, 4)
    idx = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    normed = lever_gla({"gla_qk_norm": True}, 4)
    normed.load_state_dict(base.state_dict())
    assert not torch.allclose(normed(idx)[0], base(idx)[0])
    torch.manual_seed(0)
    biased = LanguageModel(ModelConfig.tiny(mixer="gla", gla_gate_bias=3.0))
    assert all(torch.equal(b.mixer.gate_proj.bias, torch.full_like(b.mixer.gate_proj.bias, 3.0)) for b in biased.blocks)
    torch.manual_seed(0)
    fla = LanguageModel(ModelConfig.tiny(mixer="gla", gla_init="fla"))
    for block in fla.blocks:
        assert 0.015 < block.mixer.conv_weight.std().item() < 0.025  # N(0, 0.02), not uniform in +-1/2
        assert 0.015 < block.mixer.out_proj.weight.std().item() < 0.025  # not scaled by 1/sqrt(2 n_layers)


def test_defaults_are_todays_gla_and_bad_values_are_input_errors() -> None:
    config = ModelConfig.tiny(mixer="gla")
    assert (config.gla_qk_norm, config.gla_gate_bias, config.gla_init) == (False, 0.0, "glactl")
    torch.manual_seed(1)
    default = LanguageModel(config)
    torch.manual_seed(1)
    explicit = LanguageModel(ModelConfig.tiny(mixer="gla", gla_qk_norm=False, gla_gate_bias=0.0, gla_init="glactl"))
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    for bad in ({"gla_init": "xavier"}, {"gla_gate_bias": 50.0}, {"gla_qk_norm": 1}, {"gla_gate_bias": "3"}):
        with pytest.raises(InputError):
            ModelConfig.tiny(mixer="gla", **bad).validate()


@torch.no_grad()
def test_checkpoint_without_the_lever_fields_loads_as_todays_gla(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = LanguageModel(ModelConfig.tiny(mixer="gla")).eval()
    save_model(tmp_path / "run", model)
    path = tmp_path / "run" / "config.json"
    document = json.loads(path.read_text())
    for name in ("gla_qk_norm", "gla_gate_bias", "gla_init"):
        del document["architecture"][name]
    path.write_text(json.dumps(document))
    loaded, _ = load_model(tmp_path / "run")
    assert (loaded.config.gla_qk_norm, loaded.config.gla_gate_bias, loaded.config.gla_init) == (False, 0.0, "glactl")
    idx = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(8))
    assert torch.equal(loaded(idx)[0], model(idx)[0])


def test_decay_rule_is_nanogpts_and_decay_gates_false_spares_the_gates() -> None:
    model = LanguageModel(ModelConfig.tiny(mixer="gla"))
    named = dict(model.named_parameters())
    default = {n for n, p in named.items() if decays(n, p)}
    assert default == {n for n, p in named.items() if p.dim() >= 2}
    spared = default - {n for n, p in named.items() if decays(n, p, decay_gates=False)}
    assert spared and all(n.endswith(("gate_proj.weight", "conv_weight")) for n in spared)
    assert len(spared) == 2 * model.config.n_layers

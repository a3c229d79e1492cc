"""Fidelity to the reference layer: glactl's GLA mixer against flash-linear-attention's `GatedLinearAttention`.

fla (an optional extra: `pip install 'flash-linear-attention[cpu]'`) is the GLA that papers measure. Its
layer runs here on the CPU with each Triton kernel call replaced by a pure-torch path that fla ships or
that its module is built on:

- the recurrent core (`chunk_gla`, `fused_chunk_gla`, `fused_recurrent_gla`, as imported by
  fla.layers.gla) by fla's own reference `fla.ops.gla.naive.naive_recurrent_gla`;
- `ShortConvolution.forward` by the module's own `nn.Conv1d` computation (it is an nn.Conv1d with
  padding W - 1; the first T outputs are the causal convolution), then its SiLU;
- `FusedRMSNormGated.forward` by fla's pure-torch reference `fla.modules.norm.layernorm_gated.rms_norm_ref`
  (RMSNorm with weight, then times silu(gate)).

Everything else in the layer is fla's own code: the projections, the low-rank gate (Linear -> Linear with
bias), `logsigmoid(.) / gate_logit_normalizer`, the clamp, the head split and the output projection.
glactl's mixer weights are copied into fla's layer by a name map (a strict load, so every fla parameter
is covered) and both run the same random input in float32.

Compared: the whole layer, input to output, and the final K x V state per head; with the short
convolution off (0) and on (kernel 4); with gates above the clamp and with gates the clamp bites
(fla's `clamp_min` set to glactl's MIN_LOG_GATE; with fla's default `clamp_min=None` the second case
differs, which the test also checks). Not compared: carried state across calls (fla's cache objects),
gradients, initialisation (both are listed in docs/comparing.md, "GLA against flash-linear-attention's
layer").
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err

from glactl.models import ModelConfig
from glactl.models.gla import GatedLinearAttention
from glactl.ops.gla import MIN_LOG_GATE

pytestmark = pytest.mark.slow  # importing fla alone takes several seconds (so only the tests import it)


@pytest.fixture(scope="module")
def fla() -> SimpleNamespace:
    """The parts of fla the test uses, or a skip with the reason and the install command."""
    try:
        import fla.layers.gla as layer
        from fla.modules import FusedRMSNormGated, ShortConvolution
        from fla.modules.norm.layernorm_gated import rms_norm_ref
        from fla.ops.gla.naive import naive_recurrent_gla
    except Exception as error:  # noqa: BLE001 - missing package, missing Triton, an incompatible torch: all skip
        pytest.skip(
            f"flash-linear-attention not importable ({type(error).__name__}: {error}); "
            "install it with: pip install 'flash-linear-attention[cpu]'"
        )
    return SimpleNamespace(
        layer=layer,
        FusedRMSNormGated=FusedRMSNormGated,
        ShortConvolution=ShortConvolution,
        rms_norm_ref=rms_norm_ref,
        naive_recurrent_gla=naive_recurrent_gla,
    )


TOLERANCE = 1e-5
D_MODEL, HEADS, BATCH, LENGTH = 64, 4, 2, 100  # T > 64: fla picks its chunk mode, glactl its chunk form


@pytest.fixture
def torch_kernels(fla: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Replace fla's Triton calls by pure-torch references; returns a dict receiving the last final state."""
    captured: dict = {}

    def recurrent(q, k, v, gk=None, g=None, initial_state=None, state_v_first=False, cu_seqlens=None, **_):
        assert cu_seqlens is None and initial_state is None
        o, state = fla.naive_recurrent_gla(q, k, v, gk if gk is not None else g, None, output_final_state=True)
        captured["state"] = state  # [B, H, K, V], as glactl's
        return o, state.transpose(-1, -2) if state_v_first else state

    for name in ("chunk_gla", "fused_chunk_gla", "fused_recurrent_gla"):
        monkeypatch.setattr(fla.layer, name, recurrent)

    def short_conv(self, x, cache=None, output_final_state=False, cu_seqlens=None, **_):
        assert cache is None and cu_seqlens is None
        y = self._conv_forward(x.transpose(1, 2), self.weight, self.bias)[..., : x.shape[1]].transpose(1, 2)
        return (F.silu(y) if self.activation else y), None

    monkeypatch.setattr(fla.ShortConvolution, "forward", short_conv)

    def norm_gate(self, x, g, **_):
        assert self.activation in ("swish", "silu")
        return fla.rms_norm_ref(x, self.weight, self.bias, z=g, eps=self.eps, norm_before_gate=True)

    monkeypatch.setattr(fla.FusedRMSNormGated, "forward", norm_gate)
    return captured


def fla_layer_for(fla: SimpleNamespace, ours: GatedLinearAttention, clamp_min: float | None) -> torch.nn.Module:
    """fla's layer with the settings of a glactl GLA mixer (d_k = d/2, d_v = d, SiLU output gate, fused norm)."""
    config = ours.config
    return fla.layer.GatedLinearAttention(
        mode="chunk",
        hidden_size=config.d_model,
        expand_k=ours.key_dim / config.d_model,
        expand_v=ours.value_dim / config.d_model,
        num_heads=ours.n_heads,
        use_short_conv=bool(ours.short_conv),
        conv_size=ours.short_conv or 4,
        conv_bias=False,
        use_output_gate=True,
        gate_fn="swish",
        elementwise_affine=True,
        norm_eps=config.norm_eps,
        gate_logit_normalizer=config.gla_gate_normalizer,
        gate_low_rank_dim=ours.gate_rank,
        clamp_min=clamp_min,
        fuse_norm=True,
        layer_idx=0,
    )


def fla_state_dict(ours: GatedLinearAttention) -> dict[str, torch.Tensor]:
    """glactl's parameters under fla's names: the fused in_proj split into q, k, v, g and the first gate matmul."""
    q, k, v, r, gate_low = ours.in_proj.weight.split(
        [ours.key_dim, ours.key_dim, ours.value_dim, ours.value_dim, ours.gate_rank]
    )
    mapped = {
        "q_proj.weight": q,
        "k_proj.weight": k,
        "v_proj.weight": v,
        "g_proj.weight": r,
        "gk_proj.0.weight": gate_low,
        "gk_proj.1.weight": ours.gate_proj.weight,
        "gk_proj.1.bias": ours.gate_proj.bias,
        "g_norm_swish_gate.weight": ours.head_norm_weight,
        "o_proj.weight": ours.out_proj.weight,
    }
    if ours.short_conv:
        # glactl's filter is [C, W] with tap W - 1 on the current token; nn.Conv1d's is [C, 1, W], same order.
        conv_q, conv_k, conv_v = ours.conv_weight.split([ours.key_dim, ours.key_dim, ours.value_dim])
        mapped |= {
            "q_conv1d.weight": conv_q.unsqueeze(1),
            "k_conv1d.weight": conv_k.unsqueeze(1),
            "v_conv1d.weight": conv_v.unsqueeze(1),
        }
    return {name: tensor.detach().clone() for name, tensor in mapped.items()}


def random_mixer(short_conv: int, clamp_bites: bool) -> GatedLinearAttention:
    """A glactl GLA mixer with every parameter random (no ones or zeros that could hide a wrong name map)."""
    config = ModelConfig(mixer="gla", d_model=D_MODEL, n_heads=HEADS, n_layers=1, short_conv=short_conv)
    ours = GatedLinearAttention(config, 0)
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.copy_(torch.randn_like(parameter) * parameter.shape[-1] ** -0.5)
        ours.head_norm_weight.add_(1.0)
        if clamp_bites:
            # logsigmoid(-100) / 16 = -6.25 < MIN_LOG_GATE on half the key channels: the clamp decides them.
            ours.gate_proj.bias[: ours.key_dim // 2] = -100.0
    return ours


@pytest.mark.parametrize("clamp_bites", [False, True], ids=["gates-above-clamp", "clamp-bites"])
@pytest.mark.parametrize("short_conv", [0, 4], ids=["conv-off", "conv-4"])
def test_layer_matches_fla(fla: SimpleNamespace, torch_kernels: dict, short_conv: int, clamp_bites: bool) -> None:
    torch.manual_seed(1000 + short_conv + clamp_bites)
    ours = random_mixer(short_conv, clamp_bites).eval()
    theirs = fla_layer_for(fla, ours, clamp_min=MIN_LOG_GATE).eval()
    theirs.load_state_dict(fla_state_dict(ours), strict=True)
    x = torch.randn(BATCH, LENGTH, D_MODEL)

    with torch.no_grad():
        expected, state = ours(x)
        got, _, _ = theirs(x)
    matrix = state["S"] if short_conv else state
    assert got.dtype == expected.dtype == torch.float32
    assert rel_err(got, expected) < TOLERANCE
    assert (got - expected).abs().max().item() < TOLERANCE  # absolute too: outputs here are O(1)
    assert rel_err(torch_kernels["state"], matrix) < TOLERANCE

    if clamp_bites:
        # fla's default (no clamp) is a different model once a gate falls below MIN_LOG_GATE.
        theirs.clamp_min = None
        with torch.no_grad():
            unclamped, _, _ = theirs(x)
        assert rel_err(unclamped, expected) > 1e-3

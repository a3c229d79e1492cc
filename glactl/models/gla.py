"""The Gated Linear Attention mixer (DESIGN.md 3.2): projections, low-rank forget gate, output gate.

The math of the three forms lives in glactl/ops/gla.py; this module only shapes tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.gla import gate_log, gla_chunk, gla_chunk_fla, gla_recurrent, gla_step, state_dtype


class GatedLinearAttention(Mixer):
    """GLA with d_k = d/2, d_v = d, H heads, a fixed-size K x V state per head (float32)."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.n_heads = config.n_heads
        self.key_dim = d // 2
        self.value_dim = d
        self.head_k = self.key_dim // self.n_heads
        self.head_v = self.value_dim // self.n_heads
        self.gate_rank = config.gla_gate_rank
        # q, k, v, output gate r and the first (low-rank) gate projection in one matmul.
        self.in_proj = nn.Linear(d, 2 * self.key_dim + 2 * self.value_dim + self.gate_rank, bias=False)
        self.gate_proj = nn.Linear(self.gate_rank, self.key_dim, bias=True)
        self.head_norm_weight = nn.Parameter(torch.ones(self.head_v))
        self.out_proj = nn.Linear(self.value_dim, d, bias=False)
        self.chunk_size = config.chunk_size
        self.form = config.gla_form
        self.kernels = "torch"  # or "fla": set at run time by glactl.devices.use_kernels, never saved

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [..., d] -> q, k, log_a [..., H, K] and v, r [..., H, V] (r: output gate, flat)."""
        sizes = [self.key_dim, self.key_dim, self.value_dim, self.value_dim, self.gate_rank]
        q, k, v, r, gate_low = self.in_proj(x).split(sizes, dim=-1)
        log_a = gate_log(self.gate_proj(gate_low), self.config.gla_gate_normalizer)
        lead = x.shape[:-1]
        q = q.reshape(*lead, self.n_heads, self.head_k)
        k = k.reshape(*lead, self.n_heads, self.head_k)
        log_a = log_a.reshape(*lead, self.n_heads, self.head_k)
        v = v.reshape(*lead, self.n_heads, self.head_v)
        return q, k, v, log_a, r

    def _output(self, o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm of o [..., H, V], heads concatenated, times silu(r), then W_o."""
        o = F.rms_norm(o, (self.head_v,), self.head_norm_weight.to(o.dtype), self.config.norm_eps)
        o = o.flatten(-2).to(r.dtype) * F.silu(r)
        return self.out_proj(o)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = state_dtype(dtype or torch.float32)
        return torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, exchange: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, log_a, r = self._project(x)
        q, k, v, log_a = (t.transpose(1, 2) for t in (q, k, v, log_a))  # [B, H, T, *]
        if self.form == "recurrent":
            o, state = gla_recurrent(q, k, v, log_a, state)
        elif self.kernels == "fla" and q.is_cuda and q.dtype != torch.float64:
            o, state = gla_chunk_fla(q, k, v, log_a, state)
        else:
            o, state = gla_chunk(q, k, v, log_a, state, chunk_size=self.chunk_size)
        return self._output(o.transpose(1, 2), r), state

    def step(self, x: torch.Tensor, state: torch.Tensor, exchange: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v, log_a, r = self._project(x)
        o, state = gla_step(q, k, v, log_a, state)
        return self._output(o, r), state

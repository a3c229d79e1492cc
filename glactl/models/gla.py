"""The Gated Linear Attention mixer (docs/design.md §3.2): projections, low-rank forget gate, output gate.

The math of the three forms lives in glactl/ops/gla.py and that of the optional short
convolution in glactl/ops/conv.py; this module only shapes tensors. The state is the K x V
matrix per head [B, H, K, V] alone when `short_conv` is 0 (as before it existed), otherwise a
dict {"S": that matrix, "conv": the last short_conv - 1 projected q, k, v inputs [B, W - 1, 2 d_k + d_v]}.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.conv import causal_conv, causal_conv_step, conv_buffer
from glactl.ops.gla import (
    INFERENCE_CHUNK_SIZE,
    gate_log,
    gla_chunk,
    gla_chunk_fla,
    gla_recurrent,
    gla_step,
    state_dtype,
)


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
        self.kernels = "torch"  # or "fla": set at run time by glactl.runtime.devices.use_kernels, never saved
        # Short causal depthwise convolution on q, k, v (one filter per channel, no bias, then SiLU).
        self.short_conv = config.short_conv
        self.qkv_dim = 2 * self.key_dim + self.value_dim
        if self.short_conv:
            self.conv_weight = nn.Parameter(torch.empty(self.qkv_dim, self.short_conv))
        self.qk_norm = config.gla_qk_norm
        if self.short_conv or config.gla_gate_bias or config.gla_init != "glactl":
            self.reset_extra_parameters()

    def reset_extra_parameters(self) -> None:
        """Init beyond LanguageModel._init_weights (which runs first): the convolution, uniform in +-1/sqrt(W)
        (nn.Conv1d's default for a depthwise filter; gla_init "fla": N(0, 0.02) as fla's models, whose W_o is
        then N(0, 0.02) too, not scaled by depth), and the forget gate's bias (gla_gate_bias)."""
        fla = self.config.gla_init == "fla"
        if self.short_conv:
            if fla:
                nn.init.normal_(self.conv_weight, mean=0.0, std=0.02)
            else:
                bound = 1.0 / math.sqrt(self.short_conv)
                nn.init.uniform_(self.conv_weight, -bound, bound)
        if fla:
            nn.init.normal_(self.out_proj.weight, mean=0.0, std=0.02)
        if self.config.gla_gate_bias:
            nn.init.constant_(self.gate_proj.bias, float(self.config.gla_gate_bias))

    def _project(self, x: torch.Tensor, conv: torch.Tensor | None = None) -> tuple[Any, ...]:
        """x [..., d] -> q, k, log_a [..., H, K], v [..., H, V], r (output gate, flat), new conv buffer or None.

        x is [B, T, d] (a sequence) or [B, d] (one token); `conv` is the carried buffer (None: fresh).
        """
        sizes = [self.qkv_dim, self.value_dim, self.gate_rank]
        qkv, r, gate_low = self.in_proj(x).split(sizes, dim=-1)
        if self.short_conv:
            convolve = causal_conv_step if x.dim() == 2 else causal_conv
            if conv is None:
                conv = conv_buffer(x.shape[0], self.short_conv, self.qkv_dim, x.device, qkv.dtype)
            qkv, conv = convolve(qkv, self.conv_weight, conv)
            qkv = F.silu(qkv)
            conv = conv.to(state_dtype(x.dtype))
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        log_a = gate_log(self.gate_proj(gate_low), self.config.gla_gate_normalizer)
        lead = x.shape[:-1]
        q = q.reshape(*lead, self.n_heads, self.head_k)
        k = k.reshape(*lead, self.n_heads, self.head_k)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
        log_a = log_a.reshape(*lead, self.n_heads, self.head_k)
        v = v.reshape(*lead, self.n_heads, self.head_v)
        return q, k, v, log_a, r, conv

    def _output(self, o: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Per-head RMSNorm of o [..., H, V], heads concatenated, times silu(r), then W_o."""
        o = F.rms_norm(o, (self.head_v,), self.head_norm_weight.to(o.dtype), self.config.norm_eps)
        o = o.flatten(-2).to(r.dtype) * F.silu(r)
        return self.out_proj(o)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
        dtype = state_dtype(dtype or torch.float32)
        matrix = torch.zeros(batch_size, self.n_heads, self.head_k, self.head_v, device=device, dtype=dtype)
        if not self.short_conv:
            return matrix
        return {"S": matrix, "conv": conv_buffer(batch_size, self.short_conv, self.qkv_dim, device, dtype)}

    def _split_state(self, state: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(K x V matrix, conv buffer) of a state of either shape; None parts for a fresh stream."""
        if self.short_conv and state is not None:
            return state["S"], state["conv"]
        return state, None

    def _join_state(self, matrix: torch.Tensor, conv: torch.Tensor | None) -> Any:
        return {"S": matrix, "conv": conv} if self.short_conv else matrix

    def forward(self, x: torch.Tensor, state: Any = None, exchange: dict | None = None) -> tuple[torch.Tensor, Any]:
        matrix, conv = self._split_state(state)
        q, k, v, log_a, r, conv = self._project(x, conv)
        q, k, v, log_a = (t.transpose(1, 2) for t in (q, k, v, log_a))  # [B, H, T, *]
        if self.form == "recurrent":
            o, matrix = gla_recurrent(q, k, v, log_a, matrix)
        elif self.kernels == "fla" and q.is_cuda and q.dtype != torch.float64:
            o, matrix = gla_chunk_fla(q, k, v, log_a, matrix)
        else:
            o, matrix = gla_chunk(q, k, v, log_a, matrix, chunk_size=self._chunk_length(q))
        return self._output(o.transpose(1, 2), r), self._join_state(matrix, conv)

    def _chunk_length(self, q: torch.Tensor) -> int:
        """The configured chunk length, or INFERENCE_CHUNK_SIZE where shorter for a CPU pass without autograd."""
        if q.device.type == "cpu" and not torch.is_grad_enabled():
            return min(self.chunk_size, INFERENCE_CHUNK_SIZE)
        return self.chunk_size

    def step(self, x: torch.Tensor, state: Any, exchange: dict | None = None) -> tuple[torch.Tensor, Any]:
        matrix, conv = self._split_state(state)
        q, k, v, log_a, r, conv = self._project(x, conv)
        o, matrix = gla_step(q, k, v, log_a, matrix)
        return self._output(o, r), self._join_state(matrix, conv)

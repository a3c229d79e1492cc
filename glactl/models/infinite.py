"""The infinity-former mixer (docs/design.md §3.5): segment-wise softmax attention plus a continuous long-term memory.

Tokens are grouped in segments of W_s tokens by absolute position (segment = position // W_s;
the position counter lives in the state), so one call, pieces and single steps see the same
boundaries. A token of segment s attends, with causal softmax attention and RoPE, to the
tokens of segments s - 1 and s before it (the short-term memory), and with Gaussian
continuous attention (glactl/ops/continuous_memory.py) to a long-term memory of everything
before segment s - 1; the two outputs are added per head before `out_proj`.

When segment s is complete, segment s - 1 leaves the short-term memory and the long-term
memory is refitted with it (a block refit; the first one, when segment 0 leaves, fits an
empty memory). The memory is fitted to the layer's keys and values without rotation (the
fit is linear, so this equals fitting the hidden states and projecting the basis
coefficients with W_k, W_v) and is detached: no gradient flows through it, so W_k and W_v
learn through the short-term path only. With an empty memory (segments 0 and 1) the
long-term term is exactly 0 and is skipped.

State (a dict, batch on dim 0): "k" (unrotated keys) and "v" [B, H, L, Dh] for the L < 2 W_s
tokens of the current and previous segment, "mem_k" and "mem_v" [B, H, N, Dh] (float32,
float64 for float64 inputs), and "pos", the number of tokens seen (an int). Bounded: between
calls L is at most 2 W_s - 1, and exactly W_s at every segment boundary past the first.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from glactl.errors import InputError
from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.attention import KeyLayout, windowed_attention
from glactl.ops.continuous_memory import MemoryMatrices, continuous_attention, memory_matrices_on, refit_memory
from glactl.ops.gla import state_dtype
from glactl.ops.rope import apply_rope, rope_range

InfiniteState = dict[str, Any]


class InfinityFormer(Mixer):
    """H-head segment attention (short-term) + continuous long-term memory of N RBFs per head."""

    conditional_parameters = True  # windows within one segment leave the memory weights unused (DDP must know)

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = d // self.n_heads
        self.segment = config.infinite_segment
        self.n_basis = config.infinite_basis
        self.n_samples = config.infinite_samples
        for name in ("infinite_segment", "infinite_basis", "infinite_samples"):
            if getattr(config, name) < 1:
                raise InputError(f"model config field {name!r} must be at least 1 for the infinite model")
        self.tau = float(config.infinite_tau)
        if not 0.0 < self.tau < 1.0:
            raise InputError(f"infinite_tau {self.tau} must lie strictly between 0 and 1")
        self.ridge = float(config.infinite_ridge)
        self.rope_base = float(config.rope_base)
        self.qkv_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        # mu = sigmoid(w_mu . s), sigma^2 = softplus(w_sigma . s), one weight vector per head.
        self.w_mu = nn.Parameter(torch.zeros(self.n_heads, self.n_basis))
        self.w_sigma = nn.Parameter(torch.zeros(self.n_heads, self.n_basis))

    def _matrices(self, device: torch.device, dtype: torch.dtype) -> MemoryMatrices:
        return memory_matrices_on(self.n_basis, self.n_samples, self.segment, self.tau, self.ridge, device, dtype)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> InfiniteState:
        """Empty short-term cache, an empty (zero) long-term memory, position 0."""
        dtype = dtype or torch.float32
        cache = (batch_size, self.n_heads, 0, self.head_dim)
        memory = (batch_size, self.n_heads, self.n_basis, self.head_dim)
        mem_dtype = state_dtype(dtype)
        return {
            "k": torch.zeros(cache, device=device, dtype=dtype),
            "v": torch.zeros(cache, device=device, dtype=dtype),
            "mem_k": torch.zeros(memory, device=device, dtype=mem_dtype),
            "mem_v": torch.zeros(memory, device=device, dtype=mem_dtype),
            "pos": 0,
        }

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> q, k, v [B, H, T, Dh], not rotated."""
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return tuple(t.reshape(batch, length, self.n_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def forward(
        self, x: torch.Tensor, state: InfiniteState | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, InfiniteState]:
        batch, length, _ = x.shape
        q, k, v = self._project(x)
        if state is None:
            state = self.init_state(batch, x.device, k.dtype)
        pos = int(state["pos"])
        k_cache, v_cache = state["k"].to(k.dtype), state["v"].to(v.dtype)
        mem_k, mem_v = state["mem_k"], state["mem_v"]
        matrices = self._matrices(mem_k.device, mem_k.dtype)
        outputs = []
        start = 0
        while start < length:
            position = pos + start
            seg = position // self.segment
            end = min(length, (seg + 1) * self.segment - pos)  # this run stays inside segment `seg`
            k_all = torch.cat((k_cache, k[:, :, start:end]), dim=2)
            v_all = torch.cat((v_cache, v[:, :, start:end]), dim=2)
            outputs.append(
                self._attend(q[:, :, start:end], k_all, v_all, position - k_cache.shape[2], seg, mem_k, mem_v, matrices)
            )
            k_cache, v_cache = k_all, v_all
            if (pos + end) % self.segment == 0 and seg >= 1:
                # Segment `seg` is complete: segment seg - 1 leaves the short-term memory.
                empty = seg == 1
                mem_k = refit_memory(mem_k, k_cache[:, :, : self.segment], matrices, empty)
                mem_v = refit_memory(mem_v, v_cache[:, :, : self.segment], matrices, empty)
                k_cache = k_cache[:, :, self.segment :].contiguous()
                v_cache = v_cache[:, :, self.segment :].contiguous()
            start = end
        o = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
        y = self.out_proj(o.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim))
        return y, {"k": k_cache, "v": v_cache, "mem_k": mem_k, "mem_v": mem_v, "pos": pos + length}

    def _attend(
        self,
        q: torch.Tensor,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        cache_start: int,
        seg: int,
        mem_k: torch.Tensor,
        mem_v: torch.Tensor,
        matrices: MemoryMatrices,
    ) -> torch.Tensor:
        """Short-term causal attention of q (newest positions) over k_all/v_all from `cache_start`, plus the memory."""
        n_keys = k_all.shape[2]
        cos, sin = rope_range(cache_start, n_keys, self.head_dim, self.rope_base, q.dtype, q.device)
        n_queries = q.shape[2]
        q_rot = apply_rope(q, cos[-n_queries:], sin[-n_queries:])
        layout = KeyLayout(0, cache_start, n_keys)
        o = windowed_attention(q_rot, apply_rope(k_all, cos, sin), v_all, layout, None, 0)
        if seg >= 2:  # segments 0 and 1 see an empty memory: its term is exactly 0
            long_term = continuous_attention(
                q.to(mem_k.dtype), mem_k, mem_v, self.w_mu, self.w_sigma, matrices.centers, matrices.widths
            )
            o = o + long_term.to(o.dtype)
        return o

    def step(
        self, x: torch.Tensor, state: InfiniteState, exchange: dict | None = None
    ) -> tuple[torch.Tensor, InfiniteState]:
        y, state = self.forward(x[:, None, :], state, exchange)
        return y[:, 0], state

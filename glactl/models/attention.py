"""The softmax Transformer mixer (docs/design.md §3.3): multi-head causal attention with RoPE and a KV cache.

The state is a plain dict {"k": [B, H, L, Dh], "v": [B, H, L, Dh], "pos": int}: cached keys (already
rotated by their absolute positions) and values, and the number of tokens seen. With a window W
(`config.context`) the cache keeps the first `config.sink_tokens` tokens plus the last W - sink, so
generation never stops and the state stops growing at W tokens (sinks scored at cache distance, as in
StreamingLLM: glactl/ops/attention.py); the parallel form applies the same
visibility (glactl/ops/attention.py), so one call, pieces and token-by-token steps agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.attention import (
    DEFAULT_QUERY_BLOCK,
    KeyLayout,
    cache_layout,
    extend_layout,
    trim_cache,
    windowed_attention,
)
from glactl.ops.rope import apply_rope, rope_range

AttentionState = dict[str, Any]


class CausalSelfAttention(Mixer):
    """H-head causal softmax attention, head dim d/H, fused qkv projection, output projection `out_proj`."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = d // self.n_heads
        self.rope_base = float(config.rope_base)
        self.query_block = DEFAULT_QUERY_BLOCK
        self.kv_heads = self._own_kv_heads()  # heads whose keys/values this layer computes and caches
        self.qkv_proj = nn.Linear(d, d + 2 * self.kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    @property
    def window(self) -> int | None:
        """The attention window W, read from the config so `--context` can change it on a loaded model."""
        return self.config.context

    @property
    def sink(self) -> int:
        """Attention-sink tokens kept at the start of a windowed cache."""
        return self.config.sink_tokens

    def _own_kv_heads(self) -> int:
        """How many heads compute their own keys/values (all of them here; Reflex overrides)."""
        return self.n_heads

    # ---- state -------------------------------------------------------------------------------
    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> AttentionState:
        """An empty cache for `batch_size` sequences, at position 0."""
        shape = (batch_size, self.kv_heads, 0, self.head_dim)
        dtype = dtype or torch.float32
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "pos": 0,
        }

    # ---- pieces shared with Reflex -----------------------------------------------------------------
    def _project(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, d] -> q [B, H, T, Dh] and this layer's k, v [B, kv_heads, T, Dh], q and k rotated."""
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.n_heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1
        )
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_range(start, length, self.head_dim, self.rope_base, q.dtype, q.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _extend(
        self, state: AttentionState | None, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, KeyLayout]:
        """Cached + new keys/values [B, kv_heads, L + T, Dh] and their layout (the new ones are the newest)."""
        if state is None:
            layout = cache_layout(0, 0, self.window, self.sink)
            return k_new, v_new.contiguous(), extend_layout(layout, k_new.shape[-2])
        k_cache, v_cache, start = state["k"], state["v"], int(state["pos"])
        layout = cache_layout(k_cache.shape[-2], start, self.window, self.sink)
        k_all = torch.cat((k_cache.to(k_new.dtype), k_new), dim=-2)
        v_all = torch.cat((v_cache.to(v_new.dtype), v_new), dim=-2)
        return k_all, v_all, extend_layout(layout, k_new.shape[-2])

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: KeyLayout) -> torch.Tensor:
        """Windowed causal attention, heads merged and projected: [B, T, d]."""
        o = windowed_attention(q, k, v, layout, self.window, self.sink, self.query_block, self.rope_base)
        batch, _, length, _ = o.shape
        return self.out_proj(o.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim))

    def _next_state(self, k: torch.Tensor, v: torch.Tensor, layout: KeyLayout) -> AttentionState:
        """The cache after this call, trimmed by the window policy."""
        k, v = trim_cache(k, v, layout, self.window, self.sink)
        return {"k": k, "v": v, "pos": layout.end}

    def _start(self, state: AttentionState | None) -> int:
        return 0 if state is None else int(state["pos"])

    # ---- the contract --------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, state: AttentionState | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        q, k_new, v_new = self._project(x, self._start(state))
        k, v, layout = self._extend(state, k_new, v_new)
        return self._attend(q, k, v, layout), self._next_state(k, v, layout)

    def step(
        self, x: torch.Tensor, state: AttentionState | None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        y, state = self.forward(x[:, None, :], state, exchange)
        return y[:, 0], state

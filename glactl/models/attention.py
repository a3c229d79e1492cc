"""The softmax Transformer mixer (docs/design.md §3.3): multi-head causal attention with RoPE and a KV cache.

The state has two forms. The compact one, {"k": [B, H, L, Dh], "v": [B, H, L, Dh], "pos": int}, holds
the cached keys (already rotated by their absolute positions) and values in position order and the
number of tokens seen: `init_state` and the parallel form give it, readings keep it and state files
store it. With a window W (`config.context`) the cache keeps the first `config.sink_tokens` tokens plus
the last W - sink, so generation never stops and the state stops growing at W tokens (sinks scored at
cache distance, as in StreamingLLM: glactl/ops/attention.py); the parallel form applies the same
visibility, so one call, pieces and token-by-token steps agree.

With a window, `step` runs on the decode form (`decode_state`): {"sink_k", "sink_v": [B, H, s, Dh],
"k", "v": [B, H, W - s, Dh], "pos": long [B]}, a preallocated window that each step writes one slot of
in place (glactl/ops/attention.py, "the decode form"), the position a tensor per row, so rows at
different positions step in one batch and a compiled step serves every position. A step converts a
compact state on its first call; `compact_state` converts back (readings do, so saved states keep their
format). Whoever keeps a decode-form state while stepping on must copy it first (as readings are).
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
    RingCache,
    StepPlan,
    cache_layout,
    extend_layout,
    from_ring,
    ring_attention,
    ring_write,
    step_plan,
    to_ring,
    trim_cache,
    windowed_attention,
)
from glactl.ops.rope import apply_rope, rope_range

AttentionState = dict[str, Any]
STEP_PLAN_KEY = ("attention", "step_plan")  # where the first attention layer of a step leaves the shared StepPlan


def is_decode_form(state: Any) -> bool:
    """Whether a layer state is a windowed cache in the decode form."""
    return isinstance(state, dict) and "sink_k" in state


def ring_of(state: AttentionState) -> RingCache:
    return RingCache(state["sink_k"], state["sink_v"], state["k"], state["v"])


def compact_state(state: AttentionState) -> AttentionState:
    """The compact form of a decode-form state whose rows are all at one position (a copy)."""
    positions = state["pos"]
    n_seen = int(positions[0]) if positions.numel() else 0
    if positions.numel() and not bool((positions == n_seen).all()):
        raise ValueError("rows at different positions have no common compact state; select one row first")
    k, v = from_ring(ring_of(state), n_seen)
    return {"k": k, "v": v, "pos": n_seen}


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

    def decode_state(
        self, state: AttentionState | None, batch_size: int = 1, like: torch.Tensor | None = None
    ) -> AttentionState | None:
        """The state in the form `step` runs on: the decode form with a window (a new one for None, on the device
        and dtype of `like`), else as it is. A compact state is copied, never changed."""
        window = self.window
        if window is None or is_decode_form(state):
            return state
        if state is None:
            device, dtype = (like.device, like.dtype) if like is not None else (None, torch.float32)
            state = self.init_state(batch_size, device, dtype)
        n_seen = int(state["pos"])
        ring = to_ring(state["k"], state["v"], n_seen, window, self.sink)
        positions = torch.full((ring.k.shape[0],), n_seen, dtype=torch.long, device=ring.k.device)
        return {"sink_k": ring.sink_k, "sink_v": ring.sink_v, "k": ring.k, "v": ring.v, "pos": positions}

    def state_nbytes(self, state: Any) -> int:
        """Bytes of the cached tokens (a decode-form window counts its filled slots, as the compact form holds)."""
        if not is_decode_form(state):
            return super().state_nbytes(state)
        per_token = 2 * self.kv_heads * self.head_dim * state["k"].element_size()
        window = state["sink_k"].shape[2] + state["k"].shape[2]
        filled = state["pos"].clamp(max=window).sum()
        return int(filled) * per_token

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

    # ---- the decode step (decode form) ------------------------------------------------------------------
    def _plan(self, positions: torch.Tensor, exchange: dict | None, dtype: torch.dtype) -> StepPlan:
        """The step's shared plan: made by the first attention layer of a step, reused by the others."""
        if exchange is not None and STEP_PLAN_KEY in exchange:
            return exchange[STEP_PLAN_KEY]
        window = self.window
        assert window is not None
        plan = step_plan(positions, window, self.sink, self.head_dim, self.rope_base, dtype)
        if exchange is not None:
            exchange[STEP_PLAN_KEY] = plan
        return plan

    def _step_own(
        self, x: torch.Tensor, state: AttentionState | None, exchange: dict | None
    ) -> tuple[torch.Tensor, torch.Tensor, RingCache, StepPlan, AttentionState]:
        """Project one token x [B, d], write this layer's k, v into its window: (q, q for the sinks [B, H, 1, Dh],
        this layer's cache, the plan, the next state)."""
        state = self.decode_state(state, x.shape[0], x)
        batch, heads, kv_heads = x.shape[0], self.n_heads, self.kv_heads
        positions = state["pos"]
        cache = ring_of(state)
        plan = self._plan(positions, exchange, cache.k.dtype)
        qkv = self.qkv_proj(x).view(batch, 1, heads + 2 * kv_heads, self.head_dim).to(cache.k.dtype)
        # q and k rotated to position p, and q to min(p, W - 1) for the sinks: one product [B, 1, H + Hk, 2 Dh]
        rotated = (qkv[:, :, : heads + kv_heads] @ plan.rotation).transpose(1, 2)
        q, q_sink = rotated[:, :heads, :, : self.head_dim], rotated[:, :heads, :, self.head_dim :]
        v = qkv[:, :, heads + kv_heads :].transpose(1, 2)
        ring_write(cache, rotated[:, heads:, :, : self.head_dim], v, plan)
        next_state = {"sink_k": cache.sink_k, "sink_v": cache.sink_v, "k": cache.k, "v": cache.v, "pos": positions + 1}
        return q, q_sink, cache, plan, next_state

    def _merge(self, o: torch.Tensor) -> torch.Tensor:
        """o [B, H, 1, Dh] -> out_proj of the merged heads [B, d]."""
        return self.out_proj(o.reshape(o.shape[0], self.n_heads * self.head_dim))

    # ---- the contract --------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, state: AttentionState | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        if is_decode_form(state):
            state = compact_state(state)  # rows at one position (LanguageModel.forward splits the others)
        q, k_new, v_new = self._project(x, self._start(state))
        k, v, layout = self._extend(state, k_new, v_new)
        return self._attend(q, k, v, layout), self._next_state(k, v, layout)

    def step(
        self, x: torch.Tensor, state: AttentionState | None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        if self.window is None:  # unlimited: the compact cache grows by concatenation
            y, state = self.forward(x[:, None, :], state, exchange)
            return y[:, 0], state
        q, q_sink, cache, plan, next_state = self._step_own(x, state, exchange)
        return self._merge(ring_attention(q, q_sink, cache, plan.bias)), next_state

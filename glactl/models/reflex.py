"""Reflex attention (docs/design.md §3.6): a Transformer whose later layers reuse earlier layers' keys/values.

From the third layer on (layer_idx >= 2), of H heads: [0, H/2) use the layer's own K/V, [H/2, 3H/4)
reuse the K/V that the same head indices used in the previous layer, [3H/4, H) those of the layer
before that; the first two layers compute all heads themselves. Each layer publishes the K/V its heads
attended to (all H heads, cache included) in the `exchange` dict that LanguageModel hands along the
blocks; reused heads therefore resolve, through the chain, to the own heads of layer 0 or 1. Reusing
heads compute only queries and the cache holds only own K/V, so the KV cache is smaller than the
baseline's. RoPE, the sink + sliding window and the cache policy are CausalSelfAttention's.

A decode step (the decode form of CausalSelfAttention) publishes, instead of whole tensors, the windows
its heads attended to as (first head, last head + 1, cache) pieces: a reusing layer attends per head
group to views of the earlier layers' windows, so no step concatenates or copies a cache.
"""

from __future__ import annotations

import torch

from glactl.errors import InputError
from glactl.models.attention import AttentionState, CausalSelfAttention, compact_state, is_decode_form
from glactl.models.config import ModelConfig
from glactl.ops.attention import RingCache, ring_attention

Pieces = list[tuple[int, int, RingCache]]  # (first head, last head + 1, window) covering heads [0, H) in order


def exchange_key(layer_idx: int) -> tuple[str, int]:
    """Key under which a Reflex layer publishes the (keys, values) its heads attended to."""
    return ("kv", layer_idx)


class ReflexAttention(CausalSelfAttention):
    """Causal self-attention whose heads [H/2, H) reuse the previous two layers' keys/values from layer 2 on."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        if config.n_heads % 4:
            raise InputError(f"reflex needs n_heads divisible by 4, got {config.n_heads}")
        super().__init__(config, layer_idx)

    @property
    def reuses(self) -> bool:
        """Whether this layer borrows keys/values from earlier layers."""
        return self.layer_idx >= 2

    def _own_kv_heads(self) -> int:
        return self.n_heads // 2 if self.reuses else self.n_heads

    def _borrowed(self, exchange: dict | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [B, H/2, L, Dh] of heads [H/2, 3H/4) from layer l-1 and [3H/4, H) from layer l-2."""
        half, three_q = self.n_heads // 2, 3 * self.n_heads // 4
        sources = []
        for back, (lo, hi) in ((1, (half, three_q)), (2, (three_q, self.n_heads))):
            key = exchange_key(self.layer_idx - back)
            if exchange is None or key not in exchange:
                raise ValueError(f"reflex layer {self.layer_idx} needs the keys/values of layer {key[1]} in `exchange`")
            k, v = exchange[key]
            if k.shape[-2] != length:
                raise ValueError(
                    f"reflex layer {self.layer_idx}: layer {key[1]} published {k.shape[-2]} keys, expected {length}"
                )
            sources.append((k[:, lo:hi], v[:, lo:hi]))
        return torch.cat([s[0] for s in sources], dim=1), torch.cat([s[1] for s in sources], dim=1)

    def forward(
        self, x: torch.Tensor, state: AttentionState | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        if is_decode_form(state):
            state = compact_state(state)  # rows at one position: a reusing layer needs them aligned
        q, k_new, v_new = self._project(x, self._start(state))
        k_own, v_own, layout = self._extend(state, k_new, v_new)
        k, v = k_own, v_own
        if self.reuses:
            k_borrowed, v_borrowed = self._borrowed(exchange, layout.length)
            k = torch.cat((k_own, k_borrowed.to(k_own.dtype)), dim=1)
            v = torch.cat((v_own, v_borrowed.to(v_own.dtype)), dim=1)
        if exchange is not None:
            exchange[exchange_key(self.layer_idx)] = (k, v)
        return self._attend(q, k, v, layout), self._next_state(k_own, v_own, layout)

    def _borrowed_pieces(self, exchange: dict | None) -> Pieces:
        """The windows of heads [H/2, 3H/4) of layer l-1 and [3H/4, H) of layer l-2 (views, no copy)."""
        half, three_q = self.n_heads // 2, 3 * self.n_heads // 4
        pieces: Pieces = []
        for back, (lo, hi) in ((1, (half, three_q)), (2, (three_q, self.n_heads))):
            key = exchange_key(self.layer_idx - back)
            if exchange is None or key not in exchange:
                raise ValueError(f"reflex layer {self.layer_idx} needs the keys/values of layer {key[1]} in `exchange`")
            for first, last, cache in exchange[key]:
                if first <= lo and hi <= last:
                    pieces.append((lo, hi, cache.heads(lo - first, hi - first)))
                    break
            else:
                raise ValueError(
                    f"reflex layer {self.layer_idx}: layer {key[1]} published no window for heads {lo}..{hi}"
                )
        return pieces

    def step(
        self, x: torch.Tensor, state: AttentionState | None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, AttentionState]:
        if self.window is None:
            return super().step(x, state, exchange)
        q, q_sink, cache, plan, next_state = self._step_own(x, state, exchange)
        pieces: Pieces = [(0, self.kv_heads, cache)]
        if self.reuses:
            pieces += self._borrowed_pieces(exchange)
        if exchange is not None:
            exchange[exchange_key(self.layer_idx)] = pieces
        if len(pieces) == 1:
            o = ring_attention(q, q_sink, cache, plan.bias)
        else:
            o = torch.cat(
                [ring_attention(q[:, lo:hi], q_sink[:, lo:hi], piece, plan.bias) for lo, hi, piece in pieces], dim=1
            )
        return self._merge(o), next_state

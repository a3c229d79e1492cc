"""The Performer mixer (docs/design.md §3.4): FAVOR+ causal linear attention with a saved random projection.

The math lives in glactl/ops/performer.py; this module owns the projections and the buffer.
The random projection W [H, m, D] is drawn once at construction from torch's global CPU
generator (so `torch.manual_seed` decides it like every other initial weight), kept as a
persistent buffer (saved in the checkpoint, restored on load) and never redrawn: training
and evaluation see the same features. Under `torch.device("meta")` nothing is drawn.

With `performer_rope` (docs/design.md §3.4) q and k are rotated by their absolute positions (RoPE,
angles in float64, glactl/ops/rope.py) before the feature map, as performer-pytorch's PerformerLM
does; the position then travels in the state as "pos", a long tensor [B], so a stream of any
length continues exactly and beams reorder with the rest of the state. Without it the state is
the ops' {"kv", "z", "key_max"} alone, exactly as before the option existed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from glactl.errors import InputError
from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.gla import state_dtype
from glactl.ops.performer import init_state, orthogonal_random_features, performer_chunk, performer_step
from glactl.ops.rope import apply_rope, rope_tables


class Performer(Mixer):
    """Multi-head FAVOR+ attention: q, k, v of size d split in H heads, m random features per head."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.n_heads = config.n_heads
        self.head_dim = d // self.n_heads
        self.n_features = config.performer_features
        if self.n_features < 1:
            raise InputError("model config field 'performer_features' must be at least 1 for the performer model")
        self.chunk_size = config.chunk_size
        self.rope = bool(config.performer_rope)
        self.rope_base = float(config.rope_base)
        self.in_proj = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        device = torch.get_default_device()
        shape = (self.n_heads, self.n_features, self.head_dim)
        if device.type == "meta":
            proj = torch.empty(shape, device=device)
        else:
            proj = orthogonal_random_features(*shape, dtype=torch.get_default_dtype()).to(device)
        self.register_buffer("feature_proj", proj, persistent=True)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., d] -> q, k, v [..., H, D]."""
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.n_heads, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> dict:
        state = init_state(batch_size, self.n_heads, self.n_features, self.head_dim, device, dtype or torch.float32)
        if self.rope:
            state["pos"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        return state

    def _rotate(
        self, q: torch.Tensor, k: torch.Tensor, state: dict | None, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict | None, torch.Tensor]:
        """RoPE on q, k [B, H, (T,) D] at the stream's positions, in the state dtype (the features'
        exponents must not be rounded to bfloat16). Returns q, k, the ops' part of the state, the next position."""
        if state is None:
            pos = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        else:
            pos = state["pos"]
            state = {name: t for name, t in state.items() if name != "pos"}
        dtype = state_dtype(q.dtype)
        if q.dim() == 4:
            positions = pos.unsqueeze(-1) + torch.arange(length, device=pos.device)  # [B, T]
            cos, sin = (
                t.unsqueeze(1) for t in rope_tables(positions, self.head_dim, self.rope_base, dtype)
            )  # [B, 1, T, D/2]
        else:
            cos, sin = (t.unsqueeze(1) for t in rope_tables(pos, self.head_dim, self.rope_base, dtype))  # [B, 1, D/2]
        return apply_rope(q.to(dtype), cos, sin), apply_rope(k.to(dtype), cos, sin), state, pos + length

    def forward(
        self, x: torch.Tensor, state: dict | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, dict]:
        q, k, v = (t.transpose(1, 2) for t in self._project(x))  # [B, H, T, D]
        if self.rope:
            q, k, state, pos = self._rotate(q, k, state, x.shape[1])
        y, state = performer_chunk(q, k, v, self.feature_proj, state, chunk_size=self.chunk_size)
        if self.rope:
            state["pos"] = pos
        return self.out_proj(y.transpose(1, 2).flatten(-2).to(x.dtype)), state

    def step(self, x: torch.Tensor, state: dict, exchange: dict | None = None) -> tuple[torch.Tensor, dict]:
        q, k, v = self._project(x)
        if self.rope:
            q, k, state, pos = self._rotate(q, k, state, 1)
        y, state = performer_step(q, k, v, self.feature_proj, state)
        if self.rope:
            state["pos"] = pos
        return self.out_proj(y.flatten(-2).to(x.dtype)), state

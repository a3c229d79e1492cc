"""The Performer mixer (DESIGN.md 3.4): FAVOR+ causal linear attention with a saved random projection.

The math lives in glactl/ops/performer.py; this module owns the projections and the buffer.
The random projection W [H, m, D] is drawn once at construction from torch's global CPU
generator (so `torch.manual_seed` decides it like every other initial weight), kept as a
persistent buffer (saved in the checkpoint, restored on load) and never redrawn: training
and evaluation see the same features. Under `torch.device("meta")` nothing is drawn.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from glactl.errors import InputError
from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.performer import init_state, orthogonal_random_features, performer_chunk, performer_step


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
        return init_state(batch_size, self.n_heads, self.n_features, self.head_dim, device, dtype or torch.float32)

    def forward(self, x: torch.Tensor, state: dict | None = None, exchange: dict | None = None) -> tuple[torch.Tensor, dict]:
        q, k, v = (t.transpose(1, 2) for t in self._project(x))  # [B, H, T, D]
        y, state = performer_chunk(q, k, v, self.feature_proj, state, chunk_size=self.chunk_size)
        return self.out_proj(y.transpose(1, 2).flatten(-2).to(x.dtype)), state

    def step(self, x: torch.Tensor, state: dict, exchange: dict | None = None) -> tuple[torch.Tensor, dict]:
        q, k, v = self._project(x)
        y, state = performer_step(q, k, v, self.feature_proj, state)
        return self.out_proj(y.flatten(-2).to(x.dtype)), state

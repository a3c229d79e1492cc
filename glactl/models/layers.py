"""Small building blocks shared by the model and the mixers: RMSNorm, SwiGLU, the mixer base class."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """W_down(silu(W_gate x) * W_up x), with gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.out_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.out_proj(F.silu(gate) * up)


def tensor_nbytes(tree: Any) -> int:
    """Bytes held by the tensors of a nested state (tensors, lists, tuples, dicts, None)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(tensor_nbytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(tensor_nbytes(v) for v in tree)
    return 0


class Mixer(nn.Module):
    """The contract every architecture obeys (docs/design.md §3.1).

    state = init_state(batch_size, device, dtype)
    y, state = forward(x [B, T, d], state or None, exchange)   any T >= 1, continues from state
    y_t, state = step(x_t [B, d], state, exchange)               one token
    `exchange` is one dict handed along the blocks of a single call, in layer order: a mixer may
    publish what later layers need (Reflex shares keys/values through it) and read what earlier
    layers published. The output projection is called `out_proj` (it gets the residual init).
    """

    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: Any = None, exchange: dict | None = None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Any, exchange: dict | None = None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def state_nbytes(self, state: Any) -> int:
        return tensor_nbytes(state)

"""minGRU and minLSTM mixers (Feng et al. 2024, "Were RNNs all we needed?"; docs/design.md §3.7).

Both are the positive recurrence h_t = a_t h_{t-1} + b_t over an inner width of about
1.5 d, with gates that depend on x_t only, so training runs the log-space parallel scan of
glactl/ops/scan.py and `step` its one-step form; a carried h enters both the same way.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.gla import state_dtype
from glactl.ops.scan import mingru_gates, minlstm_gates, scan_parallel, scan_step


def inner_dim(d_model: int, expansion: float) -> int:
    """The recurrent width: expansion * d rounded to a multiple of 8 (at least 8)."""
    return max(8, 8 * round(expansion * d_model / 8))


class _MinRNN(Mixer):
    """Shared shell: one fused input projection, the scan, `out_proj` back to d; state h [B, inner]."""

    n_gates = 1

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.inner_dim = inner_dim(d, config.rnn_expansion)
        self.in_proj = nn.Linear(d, (self.n_gates + 1) * self.inner_dim, bias=False)
        self.out_proj = nn.Linear(self.inner_dim, d, bias=False)

    def _log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations [..., (n_gates + 1) * inner] -> log a, log b [..., inner]."""
        raise NotImplementedError

    def _coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., d] -> log a, log b in the state dtype (float32, or float64 for float64 input)."""
        return self._log_coefficients(self.in_proj(x).to(state_dtype(x.dtype)))

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """h = 0: read by the scan as 'no h_0 term', never as log 0."""
        return torch.zeros(batch_size, self.inner_dim, device=device, dtype=state_dtype(dtype or torch.float32))

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, log_b = self._coefficients(x)
        h, state = scan_parallel(log_a, log_b, state)
        return self.out_proj(h.to(x.dtype)), state

    def step(
        self, x: torch.Tensor, state: torch.Tensor | None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        log_a, log_b = self._coefficients(x)
        h = scan_step(log_a, log_b, state)
        return self.out_proj(h.to(x.dtype)), h


class MinGRU(_MinRNN):
    """minGRU: z = sigmoid(W_z x), h~ = g(W_h x), h_t = (1 - z) h_{t-1} + z h~."""

    n_gates = 1

    def _log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, hidden = projected.chunk(2, dim=-1)
        return mingru_gates(gate, hidden)


class MinLSTM(_MinRNN):
    """minLSTM: f' = f/(f+i), i' = i/(f+i), h_t = f' h_{t-1} + i' h~ with h~ = g(W_h x)."""

    n_gates = 2

    def _log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        forget, input_, hidden = projected.chunk(3, dim=-1)
        return minlstm_gates(forget, input_, hidden)

"""LSTM and GRU mixers (docs/design.md §3.8): the classical baselines of the minGRU/minLSTM paper.

One `torch.nn.LSTM` / `torch.nn.GRU` layer of width d per block, then an output projection
`out_proj` (d -> d, the residual init) as in minGRU. They are sequential by nature: forward
runs the cuDNN / ATen recurrence over the window, `step` the same layer on one token. The
state is {"h": [B, d]} for GRU and {"h", "c"} for LSTM, batch first, in float32 (float64 when
the model runs in float64), and the recurrence runs outside autocast: under CPU bfloat16
autocast nn.LSTM would hand back bfloat16 states and drift from a float32 step. The layer's
own weights keep PyTorch's default init, uniform in +-1/sqrt(d) (lm.py re-initialises only
nn.Linear and nn.Embedding).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer
from glactl.ops.gla import state_dtype

RNNState = dict[str, torch.Tensor]


class _TorchRNN(Mixer):
    """Shared shell: one torch recurrent layer (d -> d, batch first) and `out_proj`; state names in `state_names`."""

    rnn_class: type[nn.RNNBase] = nn.GRU
    state_names: tuple[str, ...] = ("h",)

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        d = config.d_model
        self.hidden_dim = d
        self.rnn = self.rnn_class(d, d, num_layers=1, batch_first=True)
        self.out_proj = nn.Linear(d, d, bias=False)

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> RNNState:
        """Zeros: the state nn.LSTM / nn.GRU start from when given none."""
        dtype = state_dtype(dtype or torch.float32)
        return {name: torch.zeros(batch_size, self.hidden_dim, device=device, dtype=dtype) for name in self.state_names}

    def _run(self, x: torch.Tensor, state: RNNState | None) -> tuple[torch.Tensor, RNNState]:
        """x [B, T, d] -> (out_proj(h_1..h_T) [B, T, d] in x's dtype, state after the last token)."""
        dtype = state_dtype(x.dtype)
        if state is None:
            state = self.init_state(x.shape[0], x.device, dtype)
        initial = tuple(state[name].to(dtype).unsqueeze(0) for name in self.state_names)  # [1, B, d] each
        with torch.autocast(device_type=x.device.type, enabled=False):
            hidden, final = self.rnn(x.to(dtype), initial if len(initial) > 1 else initial[0])
        final = final if isinstance(final, tuple) else (final,)
        new_state = {name: value.squeeze(0) for name, value in zip(self.state_names, final)}
        return self.out_proj(hidden.to(x.dtype)), new_state

    def forward(
        self, x: torch.Tensor, state: RNNState | None = None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, RNNState]:
        return self._run(x, state)

    def step(
        self, x: torch.Tensor, state: RNNState | None, exchange: dict | None = None
    ) -> tuple[torch.Tensor, RNNState]:
        y, state = self._run(x.unsqueeze(1), state)
        return y.squeeze(1), state


class GRU(_TorchRNN):
    """nn.GRU: r, z gates and candidate from x_t and h_{t-1}; state {"h"}."""

    rnn_class = nn.GRU
    state_names = ("h",)


class LSTM(_TorchRNN):
    """nn.LSTM: input, forget, cell and output gates from x_t and h_{t-1}; state {"h", "c"}."""

    rnn_class = nn.LSTM
    state_names = ("h", "c")

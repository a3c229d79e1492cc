"""LanguageModel: byte embedding -> pre-norm blocks (mixer + SwiGLU) -> RMSNorm -> tied head.

Any mixer from the registry plugs in; the model carries one state per layer, so a sequence
can be read in one call, in pieces, or one token at a time with the same result.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from glactl.models.config import ModelConfig
from glactl.models.layers import Mixer, RMSNorm, SwiGLU
from glactl.models.registry import mixer_class
from glactl.models.state import aligned, cat_states, select_state

State = list[Any]


class Block(nn.Module):
    """x + mixer(norm(x)), then x + swiglu(norm(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer: Mixer = mixer_class(config.mixer)(config, layer_idx)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: Any, exchange: dict) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer(self.mixer_norm(x), state, exchange)
        x = x + self.dropout(y)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), state

    def step(self, x: torch.Tensor, state: Any, exchange: dict) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.mixer_norm(x), state, exchange)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state


class LanguageModel(nn.Module):
    """A byte-level language model whose sequence mixer is chosen by `config.mixer`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self._init_weights()
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_weights(self) -> None:
        """GPT-2 style: N(0, 0.02), residual output projections scaled by 1/sqrt(2 n_layers)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith("out_proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_extra_parameters"):
                module.reset_extra_parameters()

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """A fresh state (one entry per layer) for `batch_size` sequences."""
        device = device or self.device
        dtype = dtype or self.dtype
        return [block.mixer.init_state(batch_size, device, dtype) for block in self.blocks]

    def decode_state(self, state: State | None, batch_size: int = 1) -> State:
        """The state in the form `step` runs on fastest (a windowed attention cache as a preallocated window;
        other mixers' states as they are): compact states are copied, never changed. `step` converts on its
        own; a compiled step and a shared decode batch need the form before the first step."""
        if state is None:
            state = self.init_state(batch_size)
        return [
            block.mixer.decode_state(layer) if hasattr(block.mixer, "decode_state") else layer
            for block, layer in zip(self.blocks, state)
        ]

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx [B, T] -> logits [B, T, vocab] and the state after the last token."""
        if state is not None and idx.shape[0] > 1 and not aligned(state):
            return self._forward_rows(idx, state)
        states = state if state is not None else [None] * len(self.blocks)
        x = self.dropout(self.embed(idx))
        exchange: dict = {}
        new_states = []
        for block, layer_state in zip(self.blocks, states):
            x, layer_state = block(x, layer_state, exchange)
            new_states.append(layer_state)
        return self.head(self.norm(x)), new_states

    def _forward_rows(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The parallel form row by row, for a decode-form state whose rows stand at different positions."""
        logits, states = [], []
        for row in range(idx.shape[0]):
            row_logits, row_state = self(idx[row : row + 1], select_state(state, torch.tensor([row])))
            logits.append(row_logits)
            states.append(self.decode_state(row_state))
        return torch.cat(logits), cat_states(states)

    def step(self, idx_t: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """One token per sequence: idx_t [B] -> logits [B, vocab] and the next state."""
        if state is None:
            state = self.init_state(idx_t.shape[0])
        x = self.embed(idx_t)
        exchange: dict = {}
        new_states = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block.step(x, layer_state, exchange)
            new_states.append(layer_state)
        return self.head(self.norm(x)), new_states

    def state_nbytes(self, state: State) -> int:
        """Bytes the state holds (constant for recurrent mixers, growing for attention caches)."""
        return sum(block.mixer.state_nbytes(s) for block, s in zip(self.blocks, state))

    def num_parameters(self) -> int:
        """Trainable parameters, a tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

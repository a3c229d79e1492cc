"""Helpers on nested model states: reorder or expand the batch, whatever the mixer keeps.

Convention for every mixer state: each tensor with at least one dimension carries the batch
on dim 0; 0-d tensors and non-tensors (ints, strings, None) are shared by the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch


def select_state(state: Any, index: torch.Tensor) -> Any:
    """The state of batch rows `index` (a 1-d long tensor; repeats allowed): reorder, drop or copy beams."""
    if isinstance(state, torch.Tensor):
        if state.dim() == 0:
            return state
        return state.index_select(0, index.to(state.device))
    if isinstance(state, dict):
        return {key: select_state(value, index) for key, value in state.items()}
    if isinstance(state, tuple):
        items = [select_state(value, index) for value in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [select_state(value, index) for value in state]
    return state


def expand_state(state: Any, batch_size: int) -> Any:
    """Copy the state of a batch of one into `batch_size` identical rows."""
    return select_state(state, torch.zeros(batch_size, dtype=torch.long))

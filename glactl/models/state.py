"""Helpers on nested model states: reorder or expand the batch, whatever the mixer keeps.

Convention for every mixer state: each tensor with at least one dimension carries the batch
on dim 0; 0-d tensors and non-tensors (ints, strings, None) are shared by the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """The same nested state (tensors in lists, tuples, dicts) with `fn` applied to every tensor; other values kept."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {key: map_state(value, fn) for key, value in state.items()}
    if isinstance(state, tuple):
        items = [map_state(value, fn) for value in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [map_state(value, fn) for value in state]
    return state


def select_state(state: Any, index: torch.Tensor) -> Any:
    """The state of batch rows `index` (a 1-d long tensor; repeats allowed): reorder, drop or copy beams."""
    return map_state(state, lambda t: t if t.dim() == 0 else t.index_select(0, index.to(t.device)))


def clone_state(state: Any) -> Any:
    """A copy of a nested state that shares no tensor memory with it."""
    return map_state(state, torch.Tensor.clone)


def expand_state(state: Any, batch_size: int) -> Any:
    """Copy the state of a batch of one into `batch_size` identical rows."""
    return select_state(state, torch.zeros(batch_size, dtype=torch.long))

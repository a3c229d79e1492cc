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


def compact_state(state: Any) -> Any:
    """The state in the form kept at rest (readings, state files): windowed attention caches in the decode form
    (glactl/models/attention.py) back in position order, everything else as it is."""
    from glactl.models.attention import compact_state as compact_window
    from glactl.models.attention import is_decode_form

    if is_decode_form(state):
        return compact_window(state)
    if isinstance(state, list):
        return [compact_state(value) for value in state]
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return tuple(compact_state(value) for value in state)
    return state


def cat_states(states: list[Any]) -> Any:
    """Batch-first states of one structure as one: the rows of each in turn (other values from the first)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states) if first.dim() else first
    if isinstance(first, dict):
        return {key: cat_states([s[key] for s in states]) for key in first}
    if isinstance(first, (list, tuple)):
        items = [cat_states(list(parts)) for parts in zip(*states)]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    return first


def aligned(state: Any) -> bool:
    """Whether every row of a state stands at one position (only a decode-form attention window can differ)."""
    from glactl.models.attention import is_decode_form

    if is_decode_form(state):
        positions = state["pos"]
        return bool((positions == positions[0]).all())
    if isinstance(state, (list, tuple)):
        return all(aligned(value) for value in state)
    return True

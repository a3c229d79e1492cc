"""Rotary position embeddings (RoPE) with angles computed in float64, so large positions stay exact.

A float32 product `position * inv_freq` loses the phase at position 1e6 (its spacing there is
0.06 rad); computing the angle, its cosine and its sine in float64 and casting only the result
keeps every position exact to the precision of the working dtype.
"""

from __future__ import annotations

import torch


def inverse_frequencies(head_dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """base^(-2i/head_dim) for i < head_dim/2, in float64."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    return torch.pow(torch.tensor(float(base), dtype=torch.float64, device=device), -exponents)


def rope_tables(
    positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., head_dim/2] of the angles position * inv_freq for positions [...], in float64, then cast."""
    inv_freq = inverse_frequencies(head_dim, base, positions.device)
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_range(
    start: int, length: int, head_dim: int, base: float, dtype: torch.dtype, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for the absolute positions start, ..., start + length - 1."""
    positions = torch.arange(start, start + length, dtype=torch.int64, device=device)
    return rope_tables(positions, head_dim, base, dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + D/2}) of x [..., T, D] by the angles of cos/sin [T, D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

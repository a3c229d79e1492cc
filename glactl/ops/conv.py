"""Short causal depthwise convolution over time with a carried buffer, as pure tensor functions.

Layout is batch first and channels last: x is [B, T, C], the kernel w is [C, W] (one filter of
W taps per channel, tap W - 1 on the current token), and the buffer is [B, W - 1, C], the last
W - 1 inputs before x (zeros at the start of a stream). For every channel c

    y_t = sum_{i < W} w[c, i] x_{t - (W - 1) + i}

with x at negative times read from the buffer, so one call, pieces of any length (even shorter
than W - 1) and single steps give the same outputs. No bias and no activation: the caller adds
what its model needs (GLA applies SiLU, as flash-linear-attention's ShortConvolution does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_buffer(
    batch_size: int,
    kernel_size: int,
    channels: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The empty buffer [B, W - 1, C] of a fresh stream (zeros: nothing before the first token)."""
    return torch.zeros(batch_size, kernel_size - 1, channels, device=device, dtype=dtype)


def causal_conv(
    x: torch.Tensor, weight: torch.Tensor, buffer: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C], w [C, W], buffer [B, W - 1, C] or None -> (y [B, T, C], new buffer [B, W - 1, C] in x's dtype)."""
    batch, _, channels = x.shape
    width = weight.shape[-1]
    if buffer is None:
        buffer = conv_buffer(batch, width, channels, x.device, x.dtype)
    padded = torch.cat([buffer.to(x.dtype), x], dim=1)  # [B, W - 1 + T, C]
    y = F.conv1d(padded.transpose(1, 2), weight.to(x.dtype).unsqueeze(1), groups=channels).transpose(1, 2)
    return y, padded[:, padded.shape[1] - (width - 1) :]


def causal_conv_step(x: torch.Tensor, weight: torch.Tensor, buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token: x [B, C], w [C, W], buffer [B, W - 1, C] -> (y [B, C], new buffer [B, W - 1, C] in x's dtype)."""
    window = torch.cat([buffer.to(x.dtype), x.unsqueeze(1)], dim=1)  # [B, W, C]
    y = torch.einsum("bwc,cw->bc", window, weight.to(x.dtype))
    return y, window[:, 1:]

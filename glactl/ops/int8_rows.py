"""Int8 x int8 products of many rows on x86 CPUs, through torch's fbgemm dynamic linear, one scale per row.

fbgemm's `quantized::linear_dynamic` quantizes its whole input with one scale. Dividing each row by its
absolute maximum first and multiplying the output rows back gives every row (token) its own scale, which
is what keeps the cost in bits per byte small (measured on the shipped model, 100 KB: one scale for the
window +0.031, one per row +0.0016). fbgemm still takes one range for the whole input: it is [-1, 1]
once some row peaks positive and another negative (as in any window of text), so a row's rounding
depends on the other rows only when they all peak on the same side. Weights get one scale per output row
and at most ROW_WEIGHT_MAX in magnitude: without VNNI, x86 multiplies uint8 activations by int8 weights
in pairs summed into int16 with saturation (vpmaddubsw), and 2 * 255 * 64 = 32640 never saturates, while
full 8-bit weights did (+0.026 bits per byte with per-row activations).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

ROW_WEIGHT_MAX = 64


def int8_rows_available(device: torch.device) -> bool:
    """Whether torch's x86 quantized engine (fbgemm) is here to run `int8_rows_matmul`."""
    if device.type != "cpu" or "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    return hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch.ops.quantized, "linear_prepack")


def int8_row_codes(
    weight: torch.Tensor, limit: int = ROW_WEIGHT_MAX, row_absmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [out, in] as int8 codes |w| <= `limit` with one float32 scale (absmax / limit) per output row.

    `row_absmax`: the rows' largest magnitudes where the caller has them already (one pass for two code sets).
    """
    weight = weight.detach().float()
    if row_absmax is None:
        row_absmax = weight.abs().amax(dim=1)
    scale = row_absmax.clamp(min=1e-12) / limit
    codes = (weight / scale[:, None]).round_().clamp_(-limit, limit)
    return codes.to(torch.int8), scale


def pack_int8_rows(codes: torch.Tensor, scale: torch.Tensor) -> Any | None:
    """fbgemm's packed form of `int8_row_codes`'s output, or None where torch cannot pack it.

    torch marks its quantized tensors deprecated; where they are gone, callers fall back to float32.
    """
    zero_points = torch.zeros(codes.shape[0], dtype=torch.long)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(
                codes.float() * scale[:, None], scale.double(), zero_points, 0, torch.qint8
            )
            return torch.ops.quantized.linear_prepack(quantized, None)
    except (RuntimeError, AttributeError, NotImplementedError):
        return None


def int8_rows_matmul(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """x [N, in] float32 times the packed weight's transpose -> [N, out] float32, each row of x at its own scale."""
    row_max = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg()).clamp_(min=1e-30)
    y = torch.ops.quantized.linear_dynamic(x / row_max, packed, False)
    return y.mul_(row_max)

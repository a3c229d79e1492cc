"""Many-row int8 x int8 products (glactl/ops/int8_rows.py) and Int8Linear's use of them: one scale per row,
weights that cannot saturate x86's int16 pair sums, and the float32 fallback where torch cannot pack."""

from __future__ import annotations

import copy

import pytest
import torch

from glactl.inference import precision as inference
from glactl.models import LanguageModel, ModelConfig
from glactl.ops.int8_rows import ROW_WEIGHT_MAX, int8_row_codes, int8_rows_available, int8_rows_matmul, pack_int8_rows

needs_fbgemm = pytest.mark.skipif(
    not int8_rows_available(torch.device("cpu")), reason="torch's fbgemm quantized engine is not in this build"
)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per-row relative error (norm of the difference over the norm of the exact row)."""
    return (approx - exact).norm(dim=-1) / exact.norm(dim=-1)


def test_codes_are_bounded_and_rebuild_the_weight() -> None:
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 2, 24)[:, None]
    codes, scale = int8_row_codes(weight)
    assert codes.dtype == torch.int8 and codes.abs().max() == ROW_WEIGHT_MAX
    assert (codes.abs().amax(dim=1) == ROW_WEIGHT_MAX).all()  # every row uses its whole range
    assert ((codes.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6 * weight.abs()).all()


def test_available_only_on_cpu() -> None:
    assert not int8_rows_available(torch.device("meta"))


@needs_fbgemm
def test_each_row_keeps_its_own_scale() -> None:
    """Rows 10^6 apart in size are each as accurate as alone (one scale for the whole input would zero the small ones)."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 64, generator=generator) * 0.1
    x = torch.randn(40, 64, generator=generator) * torch.logspace(-3, 3, 40)[:, None]
    packed = pack_int8_rows(*int8_row_codes(weight))
    assert packed is not None
    approx, exact = int8_rows_matmul(x, packed), x @ weight.T
    assert approx.dtype == torch.float32 and approx.shape == exact.shape
    assert relative_error(approx, exact).max() < 0.03


@needs_fbgemm
def test_largest_codes_times_largest_activations_do_not_saturate() -> None:
    """All-max weights times all-max inputs: exact sums (8-bit codes would overflow the int16 pair sums of AVX2)."""
    weight, x = torch.ones(32, 64), torch.ones(20, 64)
    packed = pack_int8_rows(*int8_row_codes(weight))
    assert torch.allclose(int8_rows_matmul(x, packed), torch.full((20, 32), 64.0), rtol=0.01)
    assert torch.allclose(int8_rows_matmul(-x, packed), torch.full((20, 32), -64.0), rtol=0.01)


def tiny_gla() -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.tiny(mixer="gla", d_model=32, n_layers=1, n_heads=2)).eval()


@needs_fbgemm
def test_int8_linear_runs_many_rows_as_int8_products_where_bfloat16_is_not_native() -> None:
    linear = tiny_gla().blocks[0].mlp.gate_up_proj
    layer = inference.Int8Linear(linear, kernel=False, native=False, int8_rows=True)
    x = torch.randn(3, 30, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        approx, exact = layer(x), linear(x)
    assert layer._rows_weight is not None and layer.int8_rows  # packed by the first many-row call
    assert relative_error(approx, exact).max() < 0.05
    native = inference.Int8Linear(linear, kernel=False, native=True, int8_rows=True)
    assert not native.int8_rows and native._row_codes is None  # native bfloat16: its dequantized bfloat16 GEMM


def test_int8_linear_falls_back_to_float32_when_torch_cannot_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "pack_int8_rows", lambda codes, scale: None)
    linear = tiny_gla().blocks[0].mlp.gate_up_proj
    layer = inference.Int8Linear(linear, kernel=False, native=False, int8_rows=True)
    dequantized = inference.Int8Linear(linear, kernel=False, native=False, int8_rows=False)
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(layer(x), dequantized(x))
    assert not layer.int8_rows


def test_whole_model_int8_reads_close_to_float32() -> None:
    model = tiny_gla()
    quantized = inference.apply_precision(copy.deepcopy(model), "int8")
    tokens = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        exact, exact_state = model(tokens, None)
        approx, approx_state = quantized(tokens, None)
    assert (approx - exact).norm() / exact.norm() < 0.05
    exact_matrix, approx_matrix = (s[0]["S"] if isinstance(s[0], dict) else s[0] for s in (exact_state, approx_state))
    assert (approx_matrix - exact_matrix).norm() / exact_matrix.norm() < 0.05

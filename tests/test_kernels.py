"""`--kernels torch|fla`: flag validation everywhere, and fla's chunk_gla against our chunk form where both run.

fla (flash-linear-attention) is optional: it needs CUDA and Triton. Where it is missing the
equivalence tests skip with the reason; the validation tests run on every machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import rel_err

from glactl.cli.app import main
from glactl.errors import InputError
from glactl.models import LanguageModel, ModelConfig
from glactl.ops import gla as gla_ops
from glactl.ops.gla import fla_available, gate_log, gla_chunk, gla_chunk_fla
from glactl.runtime.devices import select_kernels, use_kernels

HAVE_FLA_CUDA = torch.cuda.is_available() and fla_available()
needs_fla = pytest.mark.skipif(
    not HAVE_FLA_CUDA,
    reason="needs a CUDA GPU and the fla package (flash-linear-attention)"
    if torch.cuda.is_available()
    else "needs a CUDA GPU (and the fla package)",
)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


# ---- validation (every machine) ---------------------------------------------------------------
def test_torch_is_the_default_and_unknown_names_are_refused() -> None:
    assert select_kernels(None, torch.device("cpu")) == "torch"
    assert select_kernels("torch", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="choose one of torch, fla"):
        select_kernels("triton", torch.device("cpu"))


def test_fla_is_refused_off_cuda_and_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="CUDA only, not on cpu"):
        select_kernels("fla", torch.device("cpu"))
    monkeypatch.setattr(gla_ops, "fla_available", lambda: False)
    with pytest.raises(InputError, match="fla package is not installed"):
        select_kernels("fla", torch.device("cuda"))  # a device object only: no GPU is touched


@pytest.mark.parametrize(
    "command",
    [["train", "--data", "{text}", "--steps", "1", "--out", "{run}"], ["perplexity", "{text}"], ["generate", "hi"]],
)
def test_cli_refuses_fla_on_cpu_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("hello world " * 50)
    argv = [a.format(text=text, run=tmp_path / "run") for a in command] + ["--kernels", "fla", "--device", "cpu"]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "--kernels fla" in err and "CUDA only" in err
    assert not (tmp_path / "run").exists()


def test_use_kernels_switches_only_gla_mixers_and_is_not_saved() -> None:
    model = use_kernels(LanguageModel(ModelConfig.tiny(d_model=32, n_heads=2)), "fla")
    assert [m.kernels for m in model.modules() if hasattr(m, "kernels")] == ["fla", "fla"]
    assert "kernels" not in model.config.to_dict()
    # On CPU tensors the fla setting never reaches fla: the model still runs our form.
    logits, _ = model(torch.randint(0, 256, (1, 20)))
    assert torch.isfinite(logits).all()


# ---- equivalence (CUDA + fla) ---------------------------------------------------------------------
def _inputs(batch: int, heads: int, length: int, key: int, value: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, heads, length, key, device="cuda", generator=g)
    k = torch.randn(batch, heads, length, key, device="cuda", generator=g)
    v = torch.randn(batch, heads, length, value, device="cuda", generator=g)
    log_a = gate_log(torch.randn(batch, heads, length, key, device="cuda", generator=g) * 2)
    state = torch.randn(batch, heads, key, value, device="cuda", generator=g) * 0.1
    return q.to(dtype), k.to(dtype), v.to(dtype), log_a, state


@needs_fla
@pytest.mark.parametrize("length", [64, 100, 300])
def test_fla_chunk_matches_our_chunk_form_forward_and_backward(length: int) -> None:
    q, k, v, log_a, state = _inputs(2, 4, length, 32, 64, torch.float32)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_a)]
    ours = gla_chunk(*leaves, state)
    theirs_leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_a)]
    theirs = gla_chunk_fla(*theirs_leaves, state)
    assert rel_err(theirs[0], ours[0]) < 5e-3  # fla's Triton dots may use TF32
    assert rel_err(theirs[1], ours[1]) < 5e-3
    assert theirs[1].dtype == torch.float32
    weight = torch.randn_like(ours[0])
    (ours[0] * weight).sum().backward()
    (theirs[0] * weight).sum().backward()
    for a, b in zip(theirs_leaves, leaves):
        assert rel_err(a.grad, b.grad) < 1e-2


@needs_fla
def test_fla_in_a_bfloat16_model_matches_the_torch_form() -> None:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig.tiny()).cuda().eval()
    x = torch.randint(0, 256, (2, 200), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        reference, state_ref = use_kernels(model, "torch")(x)
        fast, state_fast = use_kernels(model, "fla")(x)
    assert rel_err(fast.float(), reference.float()) < 3e-2
    # The prefill state (which generation continues with our step form) agrees and stays float32.
    for a, b in zip(state_fast, state_ref):
        assert a.dtype == torch.float32
        assert rel_err(a, b) < 3e-2

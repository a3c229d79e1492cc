"""--precision and --compile (glactl/inference/precision.py, compiled_step.py): compiled, eager and fallen-back
steps agree; every precision runs and stays within its bits-per-byte bound; bad flag values are one line and exit 2."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_one_line_error, run_cli

from glactl.inference import compiled_step
from glactl.inference import precision as inference
from glactl.models import LanguageModel, ModelConfig

TEXT = (
    b"The history of the city begins in the early nineteenth century, when a small settlement grew up around "
    b"the river crossing. By 1850 it had become a market town with a railway station, two churches and a school. "
    b"In the following decades the population rose quickly as new industries arrived, and the town was granted "
    b"a charter in 1889. During the twentieth century it expanded further, absorbing several nearby villages.\n"
)


def tiny_gla(**overrides: object) -> LanguageModel:
    torch.manual_seed(0)
    config = ModelConfig.tiny(mixer="gla", d_model=32, n_layers=1, n_heads=2, **overrides)
    return LanguageModel(config).eval()


def run_steps(model: LanguageModel, step, tokens: torch.Tensor, n: int = 4) -> list[torch.Tensor]:  # noqa: ANN001
    """Logits of `n` greedy steps after reading `tokens` [B, T]."""
    with torch.inference_mode():
        logits, state = model(tokens, None)
        token = logits[:, -1].argmax(-1)
        out = []
        for _ in range(n):
            logits, state = step(token, state)
            out.append(logits.clone())
            token = logits.argmax(-1)
    return out


@pytest.mark.compile
@pytest.mark.slow  # one AOTInductor compile of a 1-layer model: tens of seconds on a 2-core machine
def test_compiled_step_matches_eager_pads_smaller_batches_and_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_gla()
    tokens = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(1))
    eager = run_steps(model, model.step, tokens)
    compiled_step.configure(model, "on")
    step = compiled_step.stepper(model, 3, 4)
    assert isinstance(step, compiled_step.CompiledStep)
    compiled = run_steps(model, step, tokens)
    if getattr(model, "_compile_failed", False):
        pytest.skip("AOTInductor does not run on this machine (fallback covered below)")
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    smaller = run_steps(model, step, tokens[:2])  # two rows through the step compiled for three
    for a, b in zip(eager, smaller):
        torch.testing.assert_close(b, a[:2], rtol=1e-5, atol=1e-5)

    def no_compiler(*args: object) -> None:
        raise AssertionError("the cached package should have been loaded, not rebuilt")

    monkeypatch.setattr(compiled_step, "build_package", no_compiler)
    again = tiny_gla()  # same config and weights: the package on disk answers
    compiled_step.configure(again, "on")
    for a, b in zip(eager, run_steps(again, compiled_step.stepper(again, 3, 4), tokens)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not getattr(again, "_compile_failed", False)
    other = tiny_gla()
    with torch.no_grad():
        other.head.weight.mul_(2)  # other weights: another package (here: a build, which fails, so eager)
    compiled_step.configure(other, "on")
    assert compiled_step.package_path(other, 3) != compiled_step.package_path(again, 3)
    assert compiled_step.package_path(again, 2) != compiled_step.package_path(again, 3)
    threads, one = torch.get_num_threads(), compiled_step.package_path(again, 3)
    try:  # inductor writes the thread count into its loops: another count, another package
        torch.set_num_threads(threads + 1)
        more = compiled_step.package_path(again, 3)
        assert more == compiled_step.package_path(again, 3) != one
    finally:
        torch.set_num_threads(threads)
    assert compiled_step.package_path(again, 3) == one


@pytest.mark.slow  # one AOTInductor compile per mixer
@pytest.mark.parametrize("mixer", [m for m in compiled_step.COMPILED_MIXERS if m != "gla"])
def test_compiled_step_matches_eager_for_every_compiled_mixer(mixer: str) -> None:
    torch.manual_seed(0)
    shape = dict(d_model=32, n_layers=1, n_heads=2)
    if mixer in ("transformer", "reflex"):  # compiled with a window (its decode form), past its wrap point
        shape = dict(d_model=32, n_layers=3, n_heads=4, context=8, sink_tokens=2)
    model = LanguageModel(ModelConfig.tiny(mixer=mixer, **shape)).eval()
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    eager = run_steps(model, model.step, tokens)
    compiled_step.configure(model, "on")
    compiled = run_steps(model, compiled_step.stepper(model, 2, 4), tokens)
    if getattr(model, "_compile_failed", False):
        pytest.skip("AOTInductor does not run on this machine (fallback covered below)")
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_failing_compile_falls_back_to_eager_with_one_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_gla(gla_gate_rank=3)  # a config no other test compiles: nothing cached
    tokens = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(2))
    eager = run_steps(model, model.step, tokens)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch.export, "export", broken)  # the first step of a build
    monkeypatch.setattr(inference, "_notes_given", set())
    compiled_step.configure(model, "on")
    fallen = run_steps(model, compiled_step.stepper(model, 1, 4), tokens)
    for a, b in zip(eager, fallen):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiling the decode step failed" in err[0] and "no C++ compiler" in err[0], err
    assert compiled_step.stepper(model, 1, 4) == model.step  # later runs go straight to eager


@pytest.mark.compile
def test_damaged_cached_package_is_removed_and_rebuilt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_gla(gla_gate_rank=6)  # a config no other test compiles
    path = compiled_step.package_path(model, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not a package")
    built = []

    def no_compiler(model: object, batch: int, target: object) -> None:
        built.append(target)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(compiled_step, "build_package", no_compiler)
    monkeypatch.setattr(inference, "_notes_given", set())
    compiled_step.configure(model, "on")
    tokens = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    eager = run_steps(model, model.step, tokens)
    for a, b in zip(eager, run_steps(model, compiled_step.stepper(model, 1, 4), tokens)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert built == [path] and not path.exists()  # the damaged file is gone; the rebuild was tried once
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_generation_readies_the_compiled_step_first_and_leaves_its_compile_out_of_the_speed(
    fake_compiler: dict,
) -> None:
    from glactl.inference.generation import Generation

    model = tiny_gla(gla_gate_rank=7)  # a config no other test compiles
    compiled_step.configure(model, "on")
    run = Generation(model, b"The history", max_new_tokens=6, seed=0)
    pieces = iter(run)
    next(pieces)  # the first byte: the package is ready before it
    assert fake_compiler["count"] == 1
    for _ in pieces:
        pass
    stats = run.stats
    assert stats.compiled and stats.compile_seconds >= fake_compiler["seconds"] > stats.seconds
    again = Generation(model, b"The history", max_new_tokens=6, seed=0)  # the same step: nothing compiled again
    for _ in again:
        pass
    assert again.stats.compiled and again.stats.compile_seconds == 0 and fake_compiler["count"] == 1
    assert again.stats.samples == stats.samples
    eager = tiny_gla(gla_gate_rank=7)
    compiled_step.configure(eager, "off")
    plain = Generation(eager, b"The history", max_new_tokens=6, seed=0)
    for _ in plain:
        pass
    assert not plain.stats.compiled and plain.stats.compile_seconds == 0 and plain.stats.samples == stats.samples


@pytest.mark.compile
def test_compile_rule(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    model = tiny_gla(gla_gate_rank=5)  # a config no other test compiles: nothing cached
    compiled_step.configure(model, "off")
    assert compiled_step.stepper(model, 1, 10**6) == model.step
    compiled_step.configure(model, "auto")
    # short runs never build one
    assert compiled_step.stepper(model, 1, compiled_step.COMPILE_MIN_STEPS - 1) == model.step
    assert isinstance(compiled_step.stepper(model, 1, compiled_step.COMPILE_MIN_STEPS), compiled_step.CompiledStep)
    cached = tmp_path / "step.pt2"
    cached.write_bytes(b"")
    monkeypatch.setattr(compiled_step, "package_path", lambda model, batch: cached)  # a package already built
    assert isinstance(compiled_step.stepper(model, 2, compiled_step.CACHED_MIN_STEPS), compiled_step.CompiledStep)
    assert compiled_step.stepper(model, 2, compiled_step.CACHED_MIN_STEPS - 1) == model.step
    attention = LanguageModel(ModelConfig.tiny(mixer="transformer", d_model=32, n_layers=1, n_heads=2)).eval()
    compiled_step.configure(attention, "auto")
    assert compiled_step.stepper(attention, 1, 10**6) == attention.step  # a Python int in its state: stays eager


def test_precision_layers_match_float32_closely() -> None:
    model = tiny_gla()
    x = torch.randn(5, 4, 32, generator=torch.Generator().manual_seed(3))  # 20 rows: more than INT8PACK_MAX_ROWS
    assert x[..., 0].numel() > inference.INT8PACK_MAX_ROWS
    with torch.inference_mode():
        for precision, bound in (("bfloat16", 0.02), ("int8", 0.05)):
            if inference.resolve_precision(precision, torch.device("cpu")) != precision:
                continue  # no native bfloat16 here: the flag falls back (tested in test_precision_fallback_note)
            swapped = inference.apply_precision(copy.deepcopy(model), precision)
            assert not any(type(m) is torch.nn.Linear for m in swapped.modules())
            linear = model.blocks[0].mlp.gate_up_proj
            quantized = swapped.blocks[0].mlp.gate_up_proj
            for rows in (x[:1, :1], x):  # one row (the int8 weight-only kernel) and many (int8 rows or one GEMM)
                exact, approx = linear(rows), quantized(rows)
                assert approx.dtype == torch.float32
                assert (approx - exact).norm() / exact.norm() < bound


def test_float32_on_cpu_keeps_the_products_with_transposed_weights() -> None:
    """--precision float32 only stores each weight [in, out]: layers and whole-model logits equal float32's."""
    model = tiny_gla()
    swapped = inference.apply_precision(copy.deepcopy(model), "float32")
    assert swapped.precision == "float32"
    assert not any(type(m) is torch.nn.Linear for m in swapped.modules())
    assert sum(p.numel() for p in swapped.parameters()) <= sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(5))
    tokens = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        for rows in (x[:1, :1], x):
            exact, same = model.blocks[0].mixer.in_proj(rows), swapped.blocks[0].mixer.in_proj(rows)
            assert same.shape == exact.shape and torch.allclose(same, exact, rtol=1e-6, atol=1e-6)
        reference, state = model(tokens, None)
        logits, swapped_state = swapped(tokens, None)
        assert torch.allclose(logits, reference, rtol=1e-5, atol=1e-5)
        step, _ = model.step(tokens[:, 0], state)
        swapped_step, _ = swapped.step(tokens[:, 0], swapped_state)
        assert torch.allclose(swapped_step, step, rtol=1e-5, atol=1e-5)


def test_every_precision_runs_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    for precision in inference.PRECISION_CHOICES:
        code, out, err = run_cli(
            ["generate", "The", "--max-new-tokens", "3", "--seed", "0", "--precision", precision, "--compile", "off"],
            capsys,
        )
        assert code == 0, err
        assert out.startswith("The")


def test_precision_bits_per_byte_within_bound_of_float32() -> None:
    import glactl

    bpb = {
        p: glactl.load(None, threads=1, precision=p).perplexity(TEXT)["bits_per_byte"]
        for p in ("float32", "bfloat16", "int8")
    }
    for precision in ("bfloat16", "int8"):
        assert abs(bpb[precision] - bpb["float32"]) < inference.AUTO_BPB_BOUND, bpb


def test_auto_precision_is_int8_where_the_int8_kernel_is_vectorised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule measured on AVX512-BF16 and on AVX2-only CPUs: int8 wherever the kernel is vectorised, native bf16 or not."""
    capability = torch.backends.cpu.get_cpu_capability()
    assert inference.int8_kernel_vectorized(torch.device("cpu")) == (
        inference.int8_available() and capability.startswith(("AVX2", "AVX512"))
    )
    assert not inference.int8_kernel_vectorized(torch.device("meta"))
    monkeypatch.setattr(inference, "native_bf16", lambda device: False)
    monkeypatch.setattr(inference, "int8_kernel_vectorized", lambda device: True)
    assert inference.resolve_precision("auto", torch.device("cpu")) == "int8"


def test_precision_fallback_note(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(inference, "native_bf16", lambda device: False)
    monkeypatch.setattr(inference, "_notes_given", set())
    assert inference.resolve_precision("bfloat16", torch.device("cpu")) == "float32"
    monkeypatch.setattr(inference, "int8_kernel_vectorized", lambda device: False)
    assert inference.resolve_precision("auto", torch.device("cpu")) == "float32"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bfloat16" in err[0], err


@pytest.mark.parametrize("command", ["generate", "complete", "perplexity", "compare"])
@pytest.mark.parametrize("flag, value", [("--precision", "fp16"), ("--compile", "maybe")])
def test_bad_values_exit_2_with_one_line(
    command: str, flag: str, value: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # noqa: ANN001
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT)
    argument = {
        "perplexity": [str(text)],
        "compare": ["--models", "gla", "--steps", "1", "--data", str(text), "--out", str(tmp_path / "cmp")],
    }.get(command, ["The"])
    code, out, err = run_cli([command, *argument, flag, value], capsys)
    assert not (tmp_path / "cmp").exists()  # refused before any run folder is made
    assert_one_line_error(code, out, err, flag, value)


def test_int8_model_reads_and_steps_with_narrow_layers() -> None:
    """A gate projection only 4 inputs wide (torch's int8 kernel needs multiples of 16) still runs, close to float32."""
    model = tiny_gla(gla_gate_rank=4)
    tokens = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(4))
    quantized = inference.apply_precision(copy.deepcopy(model), "int8")
    with torch.inference_mode():
        for reader in (model, quantized):
            logits, state = reader(tokens, None)
            step_logits, _ = reader.step(tokens[:, -1], state)
            reader.outputs = (logits, step_logits)
    for exact, approx in zip(model.outputs, quantized.outputs):
        assert torch.isfinite(approx).all()
        assert (approx - exact).norm() / exact.norm() < 0.05


def test_int8_kernel_gets_aligned_rows_from_any_view() -> None:
    """torch's int8 kernel does aligned loads of each input row (a row view at an odd offset segfaults): Int8Linear copies."""
    if not inference.int8_kernel_vectorized(torch.device("cpu")):
        pytest.skip("the int8 weight-only kernel is not vectorised here: Int8Linear never calls it")
    torch.manual_seed(5)
    linear = torch.nn.Linear(32, 24)
    quantized = inference.Int8Linear(linear, kernel=True, native=False)
    assert quantized.packed
    wide = torch.randn(3, 70)
    views = (wide[:1, 1:33], wide[:, 3:35], wide.to(torch.bfloat16)[:1, 1:33], wide[:2, 5:37].reshape(1, 2, 32))
    with torch.inference_mode():
        for x in views:
            exact, approx = linear(x.float()), quantized(x).float()
            assert approx.shape == exact.shape
            assert (approx - exact).norm() / exact.norm() < 0.05


# ---- the CLI process keeps freed memory (glactl/runtime/process_memory.py) -----------------------------------------------
_FAULTS_SNIPPET = r"""
import ctypes, resource, sys
from glactl.runtime.process_memory import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported"); raise SystemExit
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
sizes = [12 << 20, 12 << 20, 12 << 20, 32 << 20]  # a window's activations (its largest: exactly 32 MiB), again and again
def window():
    blocks = [libc.malloc(size) for size in sizes]
    for block, size in zip(blocks, sizes):
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
window()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    window()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.subprocess
def test_cli_process_keeps_freed_memory_and_faults_far_less() -> None:
    import subprocess
    import sys

    def faults(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", _FAULTS_SNIPPET, mode], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    kept = faults("keep")
    if kept == "unsupported":
        pytest.skip("not glibc: mallopt is not there (the setting is skipped, nothing else changes)")
    default = int(faults("default"))
    assert default > 10 * (68 << 20) // 4096 // 2  # glibc hands the blocks back and faults them in again
    assert int(kept) < default // 20


def test_keep_freed_memory_is_set_by_the_process_entry_point_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import glactl.cli.app as cli
    from glactl.runtime import process_memory

    calls = []
    monkeypatch.setattr(process_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--version"])  # in-process (tests, the API): the host's allocator is left alone
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["glactl", "--version"])
    monkeypatch.setitem(cli.PROCESS, "on", False)  # restored after the process-style call below
    with pytest.raises(SystemExit):
        cli.main()  # as the console script runs it
    assert calls == [1]

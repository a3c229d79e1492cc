"""The code path CUDA takes, run with the device given explicitly: training steps, generation, completion, scoring.

On a machine with a CUDA GPU the same test runs there too (bfloat16 autocast); on CPU it checks that
nothing in these paths assumes a device (tensors made without device=, host copies in the loop).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from glactl.api.loading import load
from glactl.inference.generation import generate
from glactl.inference.scoring import score_bytes
from glactl.training.options import TrainOptions
from glactl.training.trainer import Trainer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_training_and_inference_on_an_explicit_device(tmp_path: Path, device: str) -> None:
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    run = tmp_path / "run"
    options = TrainOptions(
        data=[str(text)],
        preset="tiny",
        d_model=64,
        n_layers=1,
        seq_len=16,
        batch_size=2,
        grad_accum=2,
        steps=3,
        eval_windows=2,
        threads=1,
        dtype="float32" if device == "cpu" else "auto",
        device=device,
        out=str(run),
    )
    trainer = Trainer(options)
    trainer.setup()
    assert trainer.parts.device.type == device
    assert {p.device.type for p in trainer.parts.model.parameters()} == {device}
    loss = trainer.train_step()  # the step the loop runs, on this device
    assert math.isfinite(loss)
    trainer.progress.step = 1
    summary = trainer.run()
    assert summary["device"] == device and summary["steps"] == 3

    lm = load(str(run), device=device, threads=1)
    assert lm.model.device.type == device
    assert isinstance(lm.generate("the ", max_new_tokens=8, seed=0, num_samples=2), list)
    assert lm.complete("the qu", n=2)
    assert math.isfinite(lm.perplexity("the quick brown fox", window=8)["bits_per_byte"])

    # The library functions with the device passed explicitly (what glactl.load does on CUDA).
    model = lm.model.to(torch.device(device))
    stats = generate(model, b"the ", max_new_tokens=6, seed=1)
    assert stats.tokens == 6
    assert math.isfinite(score_bytes(model, b"over the lazy dog", window=5).loglik)

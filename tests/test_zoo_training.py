"""Every architecture of the zoo learns: 150 tiny training steps on Tiny Shakespeare lower its
validation bits per byte by at least 0.8, through the same training library as `glactl train`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_file

from glactl.models.registry import MIXERS
from glactl.training.options import TrainOptions
from glactl.training.trainer import train

ZOO = ("gla", "transformer", "performer", "infinite", "reflex", "mingru", "minlstm", "lstm", "gru")
STEPS = 150
MIN_DROP = 0.8
# Reflex reuses earlier layers' keys/values only from the third layer on: with the tiny preset's
# two layers it would be a plain Transformer, so it trains with three.
LAYERS = {"reflex": 3}


def test_zoo_names_are_all_registered() -> None:
    """The names of the comparison zoo are exactly the registry's mixers."""
    assert set(ZOO) == set(MIXERS)


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("mixer", ZOO)
def test_mixer_learns_tiny_shakespeare(mixer: str, tmp_path: Path) -> None:
    """Tiny preset (d 128, 2 layers; Reflex 3), seq 64 x batch 4, the architecture's default learning rate, one thread."""
    text = shared_file("prose/tinyshakespeare.txt")
    options = TrainOptions(
        data=[str(text)],
        model=mixer,
        preset="tiny",
        n_layers=LAYERS.get(mixer),
        seq_len=64,
        batch_size=4,
        steps=STEPS,
        eval_every=STEPS,
        eval_windows=32,
        save_every=STEPS,
        log_every=STEPS,
        out=str(tmp_path / mixer),
        seed=0,
        device="cpu",
        dtype="float32",
        threads=1,
    )
    summary = train(options)
    start, final = summary["start_val_bits_per_byte"], summary["val_bits_per_byte"]
    assert summary["steps"] == STEPS
    assert start - final >= MIN_DROP, f"{mixer}: validation bpb {start:.3f} -> {final:.3f}"
    assert (tmp_path / mixer / "checkpoint" / "model.safetensors").is_file()

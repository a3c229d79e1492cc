"""Mixer registry: a name -> the class that implements it, imported only when used.

A new architecture plugs in with one line here; lm.py never names an architecture.
"""

from __future__ import annotations

import importlib

from glactl.errors import InputError

# name -> "module:Class"
MIXERS: dict[str, str] = {
    "gla": "glactl.models.gla:GatedLinearAttention",
    "mingru": "glactl.models.mingru:MinGRU",
    "minlstm": "glactl.models.mingru:MinLSTM",
    "transformer": "glactl.models.attention:CausalSelfAttention",
    "reflex": "glactl.models.reflex:ReflexAttention",
    "performer": "glactl.models.performer:Performer",
    "infinite": "glactl.models.infinite:InfinityFormer",
    "lstm": "glactl.models.rnn:LSTM",
    "gru": "glactl.models.rnn:GRU",
}

# Default peak learning rate per architecture (AdamW, warmup then cosine to 10%); see README.
DEFAULT_LR: dict[str, float] = {
    "gla": 1e-3,
    "mingru": 3e-3,
    "minlstm": 3e-3,
    "transformer": 1e-3,
    "reflex": 1e-3,
    "performer": 1e-3,
    "infinite": 1e-3,
    # lstm/gru: benchmarks/lr_sweep.py --models lstm,gru --steps 80 --batch-size 4 --seq-len 256
    "lstm": 1e-3,
    "gru": 1e-3,
}
FALLBACK_LR = 1e-3
# Share of a run's steps spent warming up, where an architecture needs more than the usual 2%
# (training/options.default_warmup). GLA: 10% took the probe table's mqar from 1 seed of 3 to 3 of 3 and
# did not cost text (benchmarks/gla_levers.py; docs/comparing.md, "GLA's levers").
DEFAULT_WARMUP_SHARE: dict[str, float] = {"gla": 0.10}
FALLBACK_WARMUP_SHARE = 0.02


def mixer_class(name: str) -> type:
    """The class registered under `name`; InputError listing the valid names otherwise."""
    if name not in MIXERS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MIXERS)}")
    module_name, class_name = MIXERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def default_lr(name: str) -> float:
    """The tuned default peak learning rate of an architecture."""
    return DEFAULT_LR.get(name, FALLBACK_LR)


def default_warmup_share(name: str) -> float:
    """The share of its steps a run of this architecture warms up for by default."""
    return DEFAULT_WARMUP_SHARE.get(name, FALLBACK_WARMUP_SHARE)

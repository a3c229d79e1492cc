"""ModelConfig: every size and architecture setting of a LanguageModel, JSON round-trippable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from glactl.errors import InputError

# Upper bounds that keep a crafted config.json from asking for absurd allocations.
_LIMITS = {"d_model": 16384, "n_layers": 256, "n_heads": 256, "vocab_size": 1 << 20, "chunk_size": 4096}

# Defaults for NEW models, per field and architecture, applied when a field is not given (None).
# An architecture missing from a field's table gets the field's off value (LEGACY_DEFAULTS).
# Flip a default here after measuring; checkpoints are unaffected, see LEGACY_DEFAULTS.
NEW_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "short_conv": {"gla": 4},
    "performer_rope": {"performer": True},
}

# Fields added after checkpoints were first written, and the value that reproduces the models
# written before them (also the off value): a config.json without the field loads with this,
# never with the new-model default above (docs/design.md §3.1).
LEGACY_DEFAULTS: dict[str, Any] = {
    "short_conv": 0,
    "performer_rope": False,
}

# Which architectures honour a per-architecture option; the others refuse a value that turns it on.
OPTION_MIXERS: dict[str, tuple[str, ...]] = {
    "short_conv": ("gla",),
    "performer_rope": ("performer",),
}
SHORT_CONV_MAX = 64


@dataclass
class ModelConfig:
    """Sizes and architecture of a LanguageModel; architecture-specific fields carry a prefix."""

    mixer: str = "gla"
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    vocab_size: int = 256
    tie_embeddings: bool = True
    chunk_size: int = 64
    dropout: float = 0.0
    context: int | None = None  # attention window W in tokens; None = unlimited
    norm_eps: float = 1e-5
    # GLA (docs/design.md §3.2)
    gla_gate_rank: int = 16
    gla_gate_normalizer: float = 16.0
    gla_form: str = "chunk"  # "chunk" or "recurrent" (the reference loop; benchmarks only)
    # GLA levers (docs/comparing.md, "GLA's levers"); these values are today's GLA and every older checkpoint's
    gla_qk_norm: bool = False  # L2-normalise each head's q and k (as DeltaNet does) before the scale K^-1/2
    gla_gate_bias: float = 0.0  # initial bias of the forget gate's second projection (> 0: longer memory at init)
    gla_init: str = "glactl"  # "glactl" (see LanguageModel._init_weights) or "fla" (conv N(0, 0.02), W_o unscaled)
    # short causal depthwise convolution on q, k, v (kernel size; 0 = off); None = NEW_MODEL_DEFAULTS
    short_conv: int | None = None
    # softmax attention and Reflex (3.3, 3.6)
    rope_base: float = 10000.0
    sink_tokens: int = 4
    # Performer (3.4)
    performer_features: int = 128
    performer_rope: bool | None = None  # rotary positions on q, k; None = NEW_MODEL_DEFAULTS
    # infinity-former (3.5)
    infinite_segment: int = 128
    infinite_basis: int = 64
    infinite_samples: int = 64
    infinite_tau: float = 0.5
    infinite_ridge: float = 0.5
    # minGRU / minLSTM (3.7)
    rnn_expansion: float = 1.5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Resolve per-architecture defaults (fields left None) for this mixer; to_dict writes the result."""
        for name, table in NEW_MODEL_DEFAULTS.items():
            if getattr(self, name) is None:
                value = (
                    table.get(self.mixer, LEGACY_DEFAULTS[name])
                    if isinstance(self.mixer, str)
                    else LEGACY_DEFAULTS[name]
                )
                setattr(self, name, value)

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """d 128, 2 layers: for tests."""
        return cls(**{"d_model": 128, "n_layers": 2, "n_heads": 4, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> ModelConfig:
        """d 256, 6 layers, about 5M parameters: the default."""
        return cls(**{"d_model": 256, "n_layers": 6, "n_heads": 4, **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> ModelConfig:
        """d 512, 8 layers."""
        return cls(**{"d_model": 512, "n_layers": 8, "n_heads": 4, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name (tiny, small, base) with field overrides."""
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return getattr(cls, name)(**overrides)

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden size: about 8/3 d, rounded to a multiple of 32."""
        return max(32, 32 * round(8 * self.d_model / 3 / 32))

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (a saved config.json); unknown fields or bad values raise InputError.

        Missing fields take the dataclass defaults, except those in LEGACY_DEFAULTS, which take the
        value that reproduces checkpoints written before the field existed.
        """
        if not isinstance(data, dict):
            raise InputError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"model config has unknown fields: {', '.join(unknown)}")
        for name in LEGACY_DEFAULTS:
            if name in data and data[name] is None:
                raise InputError(f"model config field {name!r} has a bad value None")
        config = cls(**{**LEGACY_DEFAULTS, **data})
        config.validate()
        return config

    def validate(self) -> ModelConfig:
        """Check types and ranges (before any allocation); raise InputError naming the field."""
        for f in fields(self):
            value = getattr(self, f.name)
            expected = _FIELD_TYPES.get(f.name)
            if expected is not None and not _is_instance(value, expected):
                raise InputError(f"model config field {f.name!r} has a bad value {value!r}")
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if not 1 <= value <= limit:
                raise InputError(f"model config field {name!r} = {value} is outside [1, {limit}]")
        if self.d_model % self.n_heads:
            raise InputError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // 2) % self.n_heads or self.d_model % 2:
            raise InputError(f"d_model/2 = {self.d_model / 2} is not divisible by n_heads {self.n_heads}")
        if self.chunk_size % 16:
            raise InputError(f"chunk_size {self.chunk_size} must be a multiple of 16")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout {self.dropout} is outside [0, 1)")
        if self.context is not None and not 1 <= self.context <= 1 << 24:
            raise InputError(f"context {self.context} must be a positive number of tokens")
        if self.gla_form not in ("chunk", "recurrent"):
            raise InputError(f"gla_form {self.gla_form!r}: choose chunk or recurrent")
        if self.gla_init not in GLA_INITS:
            raise InputError(f"gla_init {self.gla_init!r}: choose {' or '.join(GLA_INITS)}")
        if not -20.0 <= float(self.gla_gate_bias) <= 20.0:
            raise InputError(f"model config field 'gla_gate_bias' = {self.gla_gate_bias} is outside [-20, 20]")
        from glactl.models.registry import MIXERS  # local import: registry imports this module

        if self.mixer not in MIXERS:
            raise InputError(f"unknown model {self.mixer!r}; choose one of: {', '.join(MIXERS)}")
        bounded = {
            "gla_gate_rank": 4096,
            "performer_features": 8192,
            "infinite_segment": 1 << 16,
            "infinite_basis": 4096,
            "infinite_samples": 4096,
            "sink_tokens": 1 << 16,
        }
        for name, limit in bounded.items():
            if not 0 <= getattr(self, name) <= limit:
                raise InputError(f"model config field {name!r} is outside [0, {limit}]")
        positive = ("gla_gate_normalizer", "rope_base", "infinite_tau", "infinite_ridge", "rnn_expansion", "norm_eps")
        for name in positive:
            value = float(getattr(self, name))
            if not 0.0 < value < 1e9:
                raise InputError(f"model config field {name!r} = {value} must be positive and finite")
        if self.rnn_expansion > 16:
            raise InputError("rnn_expansion must be at most 16")
        if not (self.short_conv == 0 or 2 <= self.short_conv <= SHORT_CONV_MAX):
            raise InputError(f"short_conv {self.short_conv} must be 0 (off) or a kernel size in [2, {SHORT_CONV_MAX}]")
        for name, mixers in OPTION_MIXERS.items():
            if getattr(self, name) and self.mixer not in mixers:
                raise InputError(f"{name} is not supported by the {self.mixer} model (only by: {', '.join(mixers)})")
        return self


PRESETS = ("tiny", "small", "base")
GLA_INITS = ("glactl", "fla")

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "mixer": (str,),
    "d_model": (int,),
    "n_layers": (int,),
    "n_heads": (int,),
    "vocab_size": (int,),
    "tie_embeddings": (bool,),
    "chunk_size": (int,),
    "dropout": (int, float),
    "context": (int, type(None)),
    "norm_eps": (int, float),
    "gla_gate_rank": (int,),
    "gla_gate_normalizer": (int, float),
    "gla_form": (str,),
    "gla_qk_norm": (bool,),
    "gla_gate_bias": (int, float),
    "gla_init": (str,),
    "short_conv": (int,),
    "performer_rope": (bool,),
    "rope_base": (int, float),
    "sink_tokens": (int,),
    "performer_features": (int,),
    "infinite_segment": (int,),
    "infinite_basis": (int,),
    "infinite_samples": (int,),
    "infinite_tau": (int, float),
    "infinite_ridge": (int, float),
    "rnn_expansion": (int, float),
    "extra": (dict,),
}


def _is_instance(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance that does not let a bool pass as an int or float."""
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)

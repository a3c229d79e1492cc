"""glactl: train, sample and evaluate small byte-level language models (GLA and friends)."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "__version__"]


def __getattr__(name: str) -> Any:
    """`glactl.load` is imported on first use, so `import glactl` stays fast (no torch)."""
    if name == "load":
        from glactl.api.loading import load

        return load
    raise AttributeError(f"module 'glactl' has no attribute {name!r}")
